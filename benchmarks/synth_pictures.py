"""Synthetic chests beside the real chest CTA, at the same scale: docs/synth/*.png.

For each of a few synthetic cases (``gvslcore.synth``) and the shared chest CTA
(``shared/data/chest_cta``): an axial slice through the mitral valve, a coronal and a sagittal slice
through the heart's centre, HU window -200..700, heart labels outlined (the real CTA: its
whole-heart reference mask, which includes the pulmonary trunk). The synthetic cases are painted as
arterial CTAs (``gvslcore.synth.appearance``, fixed seeds). Every panel covers the same physical
field of view, so heart and chest proportions compare directly.

    python benchmarks/synth_pictures.py [--out docs/synth] [--seeds 3 11 27 40] [--spacing 1.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "GVSLCore"))

FOV_MM = {"axial": (360.0, 300.0), "coronal": (360.0, 300.0), "sagittal": (300.0, 300.0)}
LABEL_COLOURS = ["#ff2020", "#20d020", "#3070ff", "#ff9900", "#ffff00", "#ff40ff", "#00ffff"]  # labels 1..7


def _slice(volume: np.ndarray, origin, spacing: float, centre, view: str, order: int = 1) -> np.ndarray:
    """A view's slice through ``centre`` (x, y, z mm) of a (z, y, x) identity-direction volume,
    resampled on a 1 mm grid covering FOV_MM: rows top -> bottom, columns patient right -> left
    (axial, coronal) or anterior -> posterior (sagittal)."""
    from scipy import ndimage

    w, h = FOV_MM[view]
    u = np.arange(-w / 2, w / 2, 1.0)
    v = np.arange(h / 2, -h / 2, -1.0)
    uu, vv = np.meshgrid(u, v)
    cx, cy, cz = centre
    if view == "axial":  # columns: +x (patient left shown on the right: radiological), rows: +y down
        x, y, z = cx + uu, cy - vv, np.full_like(uu, cz)
    elif view == "coronal":  # columns: +x, rows: -z
        x, y, z = cx + uu, np.full_like(uu, cy), cz + vv
    else:  # sagittal, columns: +y (anterior on the left), rows: -z
        x, y, z = np.full_like(uu, cx), cy + uu, cz + vv
    idx = [(z - origin[2]) / spacing, (y - origin[1]) / spacing, (x - origin[0]) / spacing]
    return ndimage.map_coordinates(volume, idx, order=order, mode="constant", cval=volume.min() if order else 0)


def synthetic_case(seed: int, spacing: float):
    """(HU (z, y, x), labels, origin, spacing, centre of the views (x, y, z mm), mitral valve height)."""
    import SimpleITK as sitk
    import torch

    from gvslcore.synth.appearance import AppearanceConfig, add_noise, paint, scanner
    from gvslcore.synth.chest import heart_to_world, render_case, sample_chest
    from gvslcore.synth.heart import landmarks
    from gvslcore.synth.tissues import tissues_to_labels

    image = render_case(seed, spacing)
    tissue = sitk.GetArrayFromImage(image)
    cfg = AppearanceConfig(p_noncontrast=0.0, p_venous=0.0, p_shuffle=0.0, p_fov_cut=0.0, p_thick_slices=0.0,
                           noise_hu=(8.0, 12.0))
    rng = np.random.default_rng([seed, 1])
    hu, _ = paint(torch.from_numpy(tissue.astype(np.int64)), spacing, rng, cfg)
    hu = add_noise(scanner(hu, spacing, rng, cfg), rng, cfg).numpy()
    params = sample_chest(seed)
    mv = heart_to_world(params, landmarks(params.heart)["mv"])
    return hu, tissues_to_labels(tissue), np.asarray(image.GetOrigin()), spacing, np.array([0.0, 0.0, 0.0]), float(mv[2])


def real_case():
    """The shared chest CTA: (HU, heart mask, origin, spacing, heart centre, axial height)."""
    import SimpleITK as sitk

    shared = Path(os.environ.get("GVSL_SHARED_DATA", REPO.parent / "shared" / "data")) / "chest_cta"
    ct = sitk.ReadImage(str(shared / "ct.nii.gz"))
    mask = sitk.ReadImage(str(shared / "heart.nii.gz"))
    assert ct.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    m = (sitk.GetArrayFromImage(mask) > 0).astype(np.uint8)
    zyx = np.argwhere(m).mean(0)
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1])))
    # The mitral valve of this heart lies about 10 mm below the whole-heart mask's centroid (by eye).
    return hu, m, np.asarray(ct.GetOrigin()), ct.GetSpacing()[0], centre, float(centre[2] - 10.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "docs" / "synth"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 11, 27, 40])
    ap.add_argument("--spacing", type=float, default=1.5)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [("real chest CTA (TotalSegmentator heart mask)", real_case())]
    for seed in args.seeds:
        t0 = time.monotonic()
        cases.append((f"synthetic seed {seed}", synthetic_case(seed, args.spacing)))
        print(f"seed {seed}: rendered and painted in {time.monotonic() - t0:.1f} s", flush=True)
    for view in ("axial", "coronal", "sagittal"):
        w, h = FOV_MM[view]
        fig, axes = plt.subplots(1, len(cases), figsize=(3.6 * len(cases) * w / 360.0 + 0.4, 3.3), squeeze=False)
        for ax, (title, (hu, labels, origin, spacing, centre, mv_z)) in zip(axes[0], cases):
            at = np.array(centre, dtype=float)
            if view == "axial":
                at[2] = mv_z
            img = _slice(hu, origin, spacing, at, view)
            lab = _slice(labels.astype(np.float32), origin, spacing, at, view, order=0).astype(int)
            ax.imshow(img, cmap="gray", vmin=-200, vmax=700, extent=(0, w, 0, h))
            for value in range(1, 8):
                if (lab == value).any():
                    colour = "#ff3030" if labels.max() == 1 else LABEL_COLOURS[value - 1]
                    ax.contour(np.flipud(lab == value), levels=[0.5], colors=[colour], linewidths=0.6, extent=(0, w, 0, h))
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{view} (window -200..700 HU, {w:.0f} x {h:.0f} mm; labels: LV red, RV green, LA blue, RA orange, "
                     "myocardium yellow, aorta purple, pulmonary artery cyan)", fontsize=7)
        fig.tight_layout()
        path = out / f"{view}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(path)


if __name__ == "__main__":
    main()
