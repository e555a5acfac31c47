"""The network's field at the working grid: load a GVSL pre-trained model (Z-Matching head) and
predict the affine and the residual displacement of one pair in one forward pass."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError


def load_registration_model(path: str, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A GVSLNet (Z-Matching head) from a model file, checkpoint or run folder."""
    from ..bundle import resolve_model
    from ..nets import GVSLNet
    from ..zoo import locate_model

    path = locate_model(path)
    state, meta = resolve_model(path, device=str(device))
    arch = meta.get("architecture", {})
    if arch.get("name") != "GVSLNet" or meta.get("task") != "pretrain":
        raise InputError(f"{path} is a {arch.get('name', 'unknown')} model ({meta.get('task')}); registration needs a "
                         "GVSL pre-trained model (gvsl pretrain) or --model none")
    model = GVSLNet(int(arch.get("width", 32)), int(arch.get("in_channels", 1)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit GVSLNet(width={arch.get('width')}): "
                         f"{str(exc).splitlines()[0]}; give a model written by gvsl pretrain") from None
    return model.to(device).eval(), meta


@torch.inference_mode()
def predict(model: torch.nn.Module, fixed_w: torch.Tensor, moving_w: torch.Tensor,
            half: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed-forward Z-Matching on the working grid.

    Args:
        fixed_w, moving_w: (1, 1, D, H, W) in [0, 1].

    Returns:
        affine (3, 4) in working voxels, (z, y, x), about the grid centre; residual (1, 3, D, H, W) voxels.

    With ``half``, in bf16 where the hardware has it (CUDA with bf16, or a CPU with AVX512-BF16/AMX): on the chest
    CTA's 4 mm grid (two cores) 1.7 -> 0.85 s, the field within 0.04 voxels of float32's; it is only
    the start that instance optimization refines in float32.
    """
    shape = fixed_w.shape[2:]
    with _half_precision(fixed_w.device, half):
        affine, residual, _, _ = model.match(model.unet.features(fixed_w), model.unet.features(moving_w), shape)
    return affine[0].float().clone(), residual.float().clone()


def _half_precision(device: torch.device, enabled: bool = True):
    """bf16 autocast where it is native on ``device`` (and ``enabled``), else a no-op context."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and torch.cuda.is_bf16_supported())
    from ..segment import cpu_has_bf16

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and device.type == "cpu" and cpu_has_bf16())


def predict_coarse(model: torch.nn.Module, fixed_w: torch.Tensor, moving_w: torch.Tensor, spacing_mm: float,
                   predict_spacing_mm: float | None, half: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict` on a copy of the working grid coarsened to ``predict_spacing_mm`` (when that is
    coarser), the mapping carried back to the working grid; same outputs as :func:`predict`.

    Both grids span the same extent with ``align_corners=True``, so a coarse voxel coordinate about the
    centre is ``r = (n_work - 1) / (n_coarse - 1)`` working voxels per axis: A -> R A R^-1, t -> R t,
    and the residual is resized with each component scaled by its axis' r.
    """
    shape = tuple(fixed_w.shape[2:])
    if not predict_spacing_mm or predict_spacing_mm <= spacing_mm * 1.01:
        return predict(model, fixed_w, moving_w, half)
    coarse = tuple(max(16, round((n - 1) * spacing_mm / predict_spacing_mm) + 1) for n in shape)
    if coarse == shape:
        return predict(model, fixed_w, moving_w, half)
    affine_c, residual_c = predict(model, F.interpolate(fixed_w, size=coarse, mode="area"),
                                   F.interpolate(moving_w, size=coarse, mode="area"), half)
    r = torch.tensor([(n - 1) / (c - 1) for n, c in zip(shape, coarse)], device=affine_c.device)
    affine = torch.cat([affine_c[:, :3] * r.view(3, 1) / r.view(1, 3), (affine_c[:, 3] * r).view(3, 1)], dim=1)
    residual = F.interpolate(residual_c, size=shape, mode="trilinear", align_corners=True) * r.view(1, 3, 1, 1, 1)
    return affine, residual


def identity_affine(device: torch.device | str) -> torch.Tensor:
    """(3, 4) identity in working voxels: the start without a model, or when its prediction is rejected."""
    return torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1).to(device)
