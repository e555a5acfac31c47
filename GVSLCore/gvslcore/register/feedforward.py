"""The network's field at the working grid: load a GVSL pre-trained model (Z-Matching head) and
predict the affine and the residual displacement of one pair in one forward pass."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..nets.unet import Features


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
    model = model.to(device).eval()
    if device.type == "cpu":
        # oneDNN's channels-last kernels: the two backbone passes on the abdominal pair's 4 mm grid
        # 0.38 -> 0.28 s (two cores), its trilinear upsampling 26 -> 5 ms a layer; the same values to
        # float rounding. On CUDA this layout is not measured here, so it stays as it is.
        model = model.to(memory_format=torch.channels_last_3d)
    return model, meta


@torch.inference_mode()
def predict(model: torch.nn.Module, fixed_w: torch.Tensor, moving_w: torch.Tensor,
            half: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed-forward Z-Matching on the working grid, with an inverse-consistent affine.

    Args:
        fixed_w, moving_w: (1, 1, D, H, W) in [0, 1].

    Returns:
        affine (3, 4) in working voxels, (z, y, x), about the grid centre; residual (1, 3, D, H, W) voxels.

    The affine is :func:`inverse_consistent_affine` of the head run both ways, and the deformable head
    then works against that affine. Why: the shipped model's affine head has a bias of its own. On a
    pair of identical images (the chest CTA and the abdominal CT at 4 mm) it predicts a 10 % shrink
    along z and a 3-voxel shift; that bias cancels between the two directions. Measured on the
    known-transform pairs of benchmarks/register_real.py, as local NCC loss (identity / the head's
    own prediction / this one): chest CTA 0.662 / 0.659 / 0.535, abdomen 0.514 / 0.578 / 0.459.

    With ``half``, in bf16 where the hardware has it (CUDA with bf16, or a CPU with AVX512-BF16/AMX): on the chest
    CTA's 4 mm grid (two cores) 1.7 -> 0.85 s, the field within 0.04 voxels of float32's; it is only
    the start that instance optimization refines in float32.
    """
    shape = fixed_w.shape[2:]
    with _half_precision(fixed_w.device, half):
        # One batch of two: on a CPU in float32 PyTorch takes oneDNN's convolution for a batch above
        # one but its slow reference kernel for most layers of a single volume (both backbone passes
        # on the abdominal pair's grid: 0.80 -> 0.38 s, two cores); in bf16 the two are equal.
        both = model.unet.features(torch.cat([fixed_w, moving_w]))
        f_fixed, f_moving = (Features(*(t[i:i + 1] for t in both)) for i in (0, 1))
        forward = model.affine_of(f_fixed, f_moving, shape)[0]
        backward = model.affine_of(f_moving, f_fixed, shape)[0]
    affine = inverse_consistent_affine(forward[0].float(), backward[0].float())  # float64, outside autocast
    with _half_precision(fixed_w.device, half):
        affine, residual, _, _ = model.match(f_fixed, f_moving, shape, affine=affine[None])
    return affine[0].float().clone(), residual.float().clone(memory_format=torch.contiguous_format)


def _homogeneous(affine: torch.Tensor) -> torch.Tensor:
    """(3, 4) -> (4, 4) float64."""
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64, device=affine.device)
    return torch.cat([affine.double(), bottom], dim=0)


def inverse_consistent_affine(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """The affine of fixed -> moving from the head run both ways: ``sqrt(F B^-1)``.

    ``forward`` (fixed -> moving) and ``backward`` (moving -> fixed) are (3, 4) in the grid's centred
    voxels. If the head gives ``T o E`` one way and ``T^-1 o E`` the other (``E`` its own error,
    the same both ways), ``F B^-1 = T^2``, so the principal square root is ``T``; identical images
    give the identity exactly. The root is the Denman-Beavers iteration (near the identity it
    converges in a few steps); a result that is not finite falls back to ``forward``."""
    m = _homogeneous(forward) @ torch.linalg.inv(_homogeneous(backward))
    y, z = m, torch.eye(4, dtype=torch.float64, device=m.device)
    for _ in range(30):
        y, z = (y + torch.linalg.inv(z)) / 2, (z + torch.linalg.inv(y)) / 2
    if not bool(torch.isfinite(y).all()):
        return forward.float()
    return y[:3].to(forward.dtype)


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
