"""The heart model on real chest CTs: whole-heart Dice, volumes, layout, pictures.

For every real CT at hand (../shared/data/chest_cta and the registry CTs of benchmarks/real_ct.py,
fetched on first use), segment with MODEL (default: the shipped gvsl-heart-ct), then print the
checks of :func:`gvslcore.heartcheck.check_heart` side by side and write, per case, an overlay PNG
(axial, coronal, sagittal through the heart) and a frontal view of the labels over a MIP:

    python benchmarks/heart_real_ct.py --out /tmp/heart_eval [--model M] [--no-fetch] [--fast] [--no-refine]

None of these scans is used for training; they are validation only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_ct  # noqa: E402 - the sibling module


def frontal_view(ct, labels, out: Path, title: str) -> Path:
    """A 3D-like picture: the labels seen from the front (nearest labelled voxel, shaded by depth) over
    a maximum-intensity projection of the CT, on an LPS-oriented grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import SimpleITK as sitk

    from gvslcore.io import resample_to_lps_grid
    from gvslcore.labels import HEART_LABELS
    from gvslcore.report import label_colors

    spacing = [1.5, 1.5, 1.5]
    img = sitk.GetArrayFromImage(resample_to_lps_grid(ct, spacing, default_value=-1024.0))  # (S, P, L)
    lab = sitk.GetArrayFromImage(resample_to_lps_grid(labels, spacing, label=True))
    mip = np.clip((img.max(axis=1) + 200.0) / 1600.0, 0, 1)[::-1]  # (S, L), superior up
    has = lab > 0
    first = np.where(has.any(axis=1), has.argmax(axis=1), -1)  # most anterior labelled voxel per (S, L)
    zz, xx = np.nonzero(first >= 0)
    value = lab[zz, first[zz, xx], xx]
    colors = np.zeros((*first.shape, 4))
    # The overlay's palette: Slicer's recommended heart colours are seven shades of red, unreadable here.
    table = label_colors(HEART_LABELS, sorted(set(np.unique(lab).tolist()) - {0}), distinct=True)
    depth = first[zz, xx].astype(float)
    shade = 1.0 - 0.6 * (depth - depth.min()) / max(1.0, np.ptp(depth)) if depth.size else depth
    for v, c in table.items():
        m = value == v
        colors[zz[m], xx[m], :3] = np.asarray(c)[None] * shade[m, None]
        colors[zz[m], xx[m], 3] = 1.0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(mip, cmap="gray", extent=(0, mip.shape[1], 0, mip.shape[0]))
    ax.imshow(colors[::-1], extent=(0, mip.shape[1], 0, mip.shape[0]))
    ax.set_title(title + " (front view; patient's right on the left)", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def evaluate_case(case: real_ct.RealCase, model: str, out: Path, fast: bool, refine: bool = True) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from gvslcore.heartcheck import check_heart, check_structures
    from gvslcore.io import read_image
    from gvslcore.labels import HEART_LABELS
    from gvslcore.report import overlay_png
    from gvslcore.segment import InferenceSettings, segment_file

    seg_path = out / f"{case.name}.seg.nrrd"
    settings = InferenceSettings.fast() if fast else InferenceSettings()
    settings.refine_blood_pool = refine
    t0 = time.monotonic()
    info = segment_file(case.ct, seg_path, model, settings)
    seconds = time.monotonic() - t0
    ct = read_image(case.ct)
    labels = read_image(seg_path, label=True)
    reference = None
    if case.heart is not None:
        ref = read_image(case.heart, label=True)
        arr = sitk.GetArrayFromImage(ref)
        mask = np.isin(arr, case.heart_values) if case.heart_values is not None else arr > 0
        reference = sitk.GetImageFromArray(mask.astype(np.uint8))
        reference.CopyInformation(ref)
    report = check_heart(labels, ct, reference, contrast=case.contrast)
    if case.structures:
        arr = sitk.GetArrayFromImage(read_image(case.heart, label=True))
        structures = {}
        for name, value in case.structures.items():
            m = sitk.GetImageFromArray((arr == value).astype(np.uint8))
            m.CopyInformation(ct)
            structures[name] = m
        check_structures(labels, structures, report)
    centre = report.centroids_mm.get(HEART_LABELS.name_of(1))
    overlay_png(ct, labels, out / f"{case.name}_overlay.png", HEART_LABELS, title=f"{case.name}: {Path(model).name}",
                point=centre, window=(-300, 700), distinct_colors=True)
    frontal_view(ct, labels, out / f"{case.name}_front.png", case.name)
    return {"case": case.name, "seconds": round(seconds, 1), "windows": info["windows"], **report.to_dict()}


def print_table(results: list[dict]) -> None:
    names = [r["case"] for r in results]
    print(f"{'':44}" + "".join(f"{n:>12}" for n in names))
    keys = ["whole-heart Dice (chambers + PA)", "whole-heart Dice", "whole-heart Dice (all 7 labels)", "reference ml",
            "union of chambers ml", "labelled voxels in lung or chest wall (%)", "myocardium around LV",
            "labelled voxels between the lungs (%)", "myocardium voxels above 250 HU (%)",
            "superior vena cava labelled aorta (%)", "appendage labelled LA (%)",
            "pulmonary veins reaching the LA label", "ascending aorta covered by the AO label (%)",
            "AO label inside the aorta (precision %)"]
    for k in keys:
        print(f"{k:44}" + "".join(f"{r['values'].get(k, '-')!s:>12}" for r in results))
    for name in results[0]["volumes_ml"]:
        print(f"{name + ' ml':44}" + "".join(f"{r['volumes_ml'][name]!s:>12}" for r in results))
    checks = sorted({k for r in results for k in r["checks"]})
    for k in checks:
        print(f"{k[:44]:44}" + "".join(f"{('pass' if r['checks'][k] else 'FAIL') if k in r['checks'] else '-':>12}" for r in results))
    print(f"{'checks passed':44}" + "".join(f"{str(r['passed']) + '/' + str(r['total']):>12}" for r in results))
    print(f"{'seconds (segment, this machine)':44}" + "".join(f"{r['seconds']!s:>12}" for r in results))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for segmentations, pictures and results.json")
    p.add_argument("--model", default="gvsl-heart-ct", help="model file or id (default: the shipped gvsl-heart-ct)")
    p.add_argument("--no-fetch", action="store_true", help="only the cases already at hand (no registry download)")
    p.add_argument("--fast", action="store_true", help="segment with --fast")
    p.add_argument("--no-refine", action="store_true", help="the network's labels only (gvsl segment --no-refine)")
    p.add_argument("--cases", nargs="*", default=None, help="names of the cases to run (default all)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [c for c in real_ct.cases(download=not args.no_fetch) if args.cases is None or c.name in args.cases]
    if not cases:
        print("no real CT at hand (../shared/data absent and nothing fetched)", file=sys.stderr)
        return 2
    results = [evaluate_case(c, args.model, out, args.fast, not args.no_refine) for c in cases]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
