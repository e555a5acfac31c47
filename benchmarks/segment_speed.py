"""Wall time and peak RAM of `gvsl segment` on the real chest CTA, default and --fast, side by side
with the same network, preprocessing and output mapping run through MONAI's
``sliding_window_inference`` (Gaussian blending, same overlap and window batch).

Each run is its own process; peak RAM is that process's maximum resident set size (``wait4``).
The model is the shipped default heart model (gvsl-heart-ct) unless ``--model`` names another, or
``--random`` asks for a SegNet with random weights (``--width``, ``--spacing``, ``--window``): the
speed of a network does not depend on its weights. Both sides use the same precision (bf16
autocast on CUDA and on CPUs with native bf16, float32 elsewhere) and the same post-processing.

    python benchmarks/segment_speed.py                 # CPU
    python benchmarks/segment_speed.py --device cuda   # on a GPU machine
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

REPO = Path(__file__).resolve().parents[1]
CTA = Path(os.environ.get("GVSL_SHARED_DATA", REPO.parent / "shared" / "data")) / "chest_cta" / "ct.nii.gz"


def make_model(path: Path, width: int, spacing: float, window: int) -> Path:
    import torch

    from gvslcore.bundle import default_metadata, save_model
    from gvslcore.labels import HEART_LABELS
    from gvslcore.nets import SegNet

    torch.manual_seed(0)
    net = SegNet(HEART_LABELS.num_classes, width)
    meta = default_metadata("segmentation", width)
    meta["architecture"]["num_classes"] = HEART_LABELS.num_classes
    meta["preprocessing"]["spacing"] = [spacing] * 3
    meta["labels"] = HEART_LABELS.to_list()
    meta["inference"] = {"window": [window] * 3}
    meta["provenance"] = {"note": "random weights, for timing only"}
    return save_model(path, net.state_dict(), meta)


def run_monai(ct: str, out: str, model: str, fast: bool, device: str, batch: int | None) -> None:
    """The MONAI twin of `gvsl segment` (same steps, MONAI's sliding window in the middle)."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from gvslcore.engine import resolve_device
    from gvslcore.io import read_image, write_image
    from gvslcore.segment import (
        InferenceSettings,
        WindowPredictor,
        keep_largest_components,
        labels_to_grid,
        load_segmenter,
        prepare_input,
    )

    settings = InferenceSettings.fast(device=device) if fast else InferenceSettings(device=device)
    dev = resolve_device(device)
    seg = load_segmenter(model, dev)
    image = read_image(ct)
    array, resampled = prepare_input(image, seg, ct)
    x = torch.from_numpy(array)[None, None].to(dev)
    autocast = WindowPredictor(seg.network, dev, 1, amp=settings.amp)._autocast  # the same precision as ours

    def predictor(w: torch.Tensor) -> torch.Tensor:
        with autocast():
            return seg.network(w).float().softmax(1)

    with torch.inference_mode():
        probs = sliding_window_inference(x, list(seg.window), batch or (4 if dev.type == "cuda" else 2), predictor,
                                         overlap=settings.overlap, mode="gaussian", sigma_scale=settings.sigma_scale)
    labels = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
    values = [v for v in seg.table.values if v < seg.num_classes]
    if seg.metadata.get("inference", {}).get("largest_component"):
        labels = keep_largest_components(labels, values)
    work = sitk.GetImageFromArray(labels)
    work.CopyInformation(resampled)
    same = resampled.GetSize() == image.GetSize() and np.allclose(resampled.GetSpacing(), image.GetSpacing())
    out_img = work if same else labels_to_grid(work, image, values, smooth=settings.smooth_resample)
    out_img.CopyInformation(image)
    write_image(out_img, out)


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def agreement(a: str, b: str) -> float:
    import numpy as np
    import SimpleITK as sitk

    x = sitk.GetArrayFromImage(sitk.ReadImage(a))
    y = sitk.GetArrayFromImage(sitk.ReadImage(b))
    return float(np.mean(x == y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct", default=str(CTA), help="volume to segment (default: the shared chest CTA)")
    p.add_argument("--model", default="gvsl-heart-ct", help="a segmentation model or id (default: the shipped gvsl-heart-ct)")
    p.add_argument("--random", action="store_true", help="time a SegNet with random weights instead (--width --spacing --window)")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--spacing", type=float, default=1.5)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1, help="runs per setting (the fastest is reported)")
    p.add_argument("--json", type=Path)
    p.add_argument("--_monai", nargs=3, metavar=("CT", "OUT", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--_fast", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._monai:
        run_monai(*args._monai, fast=args._fast, device=args.device, batch=args.batch)
        return 0
    if not Path(args.ct).exists():
        print(f"skipped: {args.ct} not found (the ../shared/data folder is absent)")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="gvsl_segspeed_"))
    from gvslcore.zoo import locate_model

    model = str(make_model(tmp / "model.safetensors", args.width, args.spacing, args.window)) if args.random \
        else str(locate_model(args.model))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    py = sys.executable
    batch = ["--batch", str(args.batch)] if args.batch else []
    rows = []
    for fast in (False, True):
        flag = ["--fast"] if fast else []
        ours_out, monai_out = str(tmp / f"ours{int(fast)}.nii.gz"), str(tmp / f"monai{int(fast)}.nii.gz")
        ours_cmd = [py, "-m", "gvslcore", "segment", args.ct, ours_out, "--model", model, "--device", args.device,
                    "--progress", "none", *flag, *batch]
        monai_cmd = [py, __file__, "--_monai", args.ct, monai_out, model, "--device", args.device, *batch,
                     *(["--_fast"] if fast else [])]
        for name, cmd, out in (("gvsl segment", ours_cmd, ours_out), ("MONAI sliding_window_inference", monai_cmd, monai_out)):
            best = min((timed(cmd, env) for _ in range(args.repeats)), key=lambda r: r[0])
            rows.append({"setting": "fast" if fast else "default", "implementation": name,
                         "wall_s": round(best[0], 2), "peak_rss_mib": round(best[1], 1), "output": out})
        rows[-1]["agreement_with_ours"] = round(agreement(ours_out, monai_out), 5)

    import torch

    from gvslcore.bundle import read_metadata

    meta = read_metadata(model)
    print(f"\n`gvsl segment` on {args.ct} ({args.device}; torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; model width {meta['architecture']['width']}, "
          f"spacing {meta['preprocessing']['spacing']} mm, window {meta.get('inference', {}).get('window')})")
    print(f"{'setting':8s} {'implementation':32s} {'wall s':>8s} {'peak RAM MiB':>13s} {'same labels':>12s}")
    for r in rows:
        agree = f"{100 * r['agreement_with_ours']:.2f} %" if "agreement_with_ours" in r else ""
        print(f"{r['setting']:8s} {r['implementation']:32s} {r['wall_s']:8.1f} {r['peak_rss_mib']:13.0f} {agree:>12s}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
