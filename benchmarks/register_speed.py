"""Speed of `gvsl register` at its defaults against ANTs SyN, in the same run, with gvsl's time per stage.

Pairs (benchmarks/register_real.py builds them from real CTs the GVSL model never saw): ``chest_cta``
(the shared chest CTA at 1.5 mm pulled through a known rigid + B-spline transform) and ``abdomen``
(the shared abdominal CT at 4 mm, likewise). Each gvsl run is the real command in its own process
(`gvsl register FIXED MOVING --out DIR --moving-labels L`), so its wall time includes reading,
every output written and the process start, and its peak RAM is that process's. ANTs SyN (antspyx,
``type_of_transform="SyN"``) runs in this process. Error = mean |u - u_true| (mm) inside the labels,
Dice of the labels carried through, folding = % voxels with Jacobian determinant <= 0.

    python benchmarks/register_speed.py [--pairs chest_cta abdomen] [--no-ants] [-- extra gvsl register options]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))

import register_real  # noqa: E402 - the sibling module

# The child reports its own peak: wait4's ru_maxrss of a forked child starts from the parent's pages
# (this process holds every pair and ANTs' buffers), which once showed 2.3 GB for a 540 MB run.
# It ends as the `gvsl` console script does (cli.exit_now), so the wall time is the user's.
_CHILD = """
import sys
from gvslcore.cli import exit_now, main
code = main(sys.argv[2:])
with open("/proc/self/status") as f:
    kb = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
with open(sys.argv[1], "w") as out:
    out.write(str(kb))
exit_now(code)
"""


def run_gvsl(pair: dict, folder: Path, extra: list[str]) -> dict:
    """`gvsl register` as a child process: wall seconds, peak RSS (MiB, the child's own VmHWM on
    Linux), metrics.json, the field."""
    paths = {k: folder / f"{k}.nii.gz" for k in ("fixed", "moving", "moving_labels")}
    for key, path in paths.items():
        sitk.WriteImage(pair[key], str(path))
    out = folder / "result"
    peak_file = folder / "peak_kb"
    cmd = [sys.executable, "-c", _CHILD, str(peak_file), "register", str(paths["fixed"]), str(paths["moving"]),
           "--out", str(out), "--moving-labels", str(paths["moving_labels"]), "--progress", "none", *extra]
    t = time.monotonic()
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"gvsl register failed ({proc.returncode}):\n{proc.stderr}")
    metrics = json.loads((out / "metrics.json").read_text())
    field = sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    peak_kb = int(peak_file.read_text() or 0) if peak_file.exists() else 0
    return {"seconds": round(seconds, 1), "peak_mib": round(peak_kb / 1024.0) or None, "metrics": metrics,
            "field": field}


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=["chest_cta", "abdomen"])
    p.add_argument("--no-ants", action="store_true", help="skip ANTs SyN")
    p.add_argument("extra", nargs="*", help="options passed to gvsl register (after --)")
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    print(f"device: {'CUDA ' + torch.cuda.get_device_name() if gpu else 'CPU only (no GPU here): the CPU path'}, "
          f"{os.cpu_count()} cores; gvsl register {' '.join(args.extra) or '(defaults)'}", flush=True)
    pairs = register_real.build_pairs(args.pairs)
    rows, stages = [], {}
    for name, pair in pairs.items():
        rows.append({"pair": name, "method": "before", **register_real.before(pair), "seconds": 0.0, "peak_mib": None})
        with tempfile.TemporaryDirectory() as tmp:
            run = run_gvsl(pair, Path(tmp), args.extra)
        rows.append({"pair": name, "method": "gvsl register", **register_real.evaluate(run["field"], pair),
                     "seconds": run["seconds"], "peak_mib": run["peak_mib"]})
        m = run["metrics"]
        stages[name] = {**m["seconds"], **{f"io {k}": v for k, v in
                                           m["instance_optimization"].get("seconds_per_level", {}).items()}}
        print(json.dumps(rows[-1]), flush=True)
        timed = None if args.no_ants else register_real.ants_syn_timed(pair)
        if timed is not None:
            field, seconds = timed
            rows.append({"pair": name, "method": "ANTs SyN", **register_real.evaluate(field, pair),
                         "seconds": round(seconds, 1), "peak_mib": None})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'pair':10} {'method':14} {'error mm':>9} {'Dice':>7} {'fold %':>7} {'s':>7} {'peak MiB':>9}")
    for r in rows:
        err = f"{r['error_mm']:.2f}" if "error_mm" in r else "-"
        peak = str(r["peak_mib"]) if r["peak_mib"] else "-"
        print(f"{r['pair']:10} {r['method']:14} {err:>9} {r['dice']:7.3f} {r['folding_percent']:7.3f} "
              f"{r['seconds']:7.1f} {peak:>9}")
    for name, secs in stages.items():
        print(f"\ngvsl register on {name}, seconds per stage:")
        for stage, s in secs.items():
            print(f"  {stage:28} {s:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
