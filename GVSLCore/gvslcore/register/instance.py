"""Instance optimization: refine the working-grid mapping ``p -> Aff(p + v(p))`` of one pair by Adam
on local NCC + smoothness (:mod:`.objective`), coarse to fine over an image pyramid, the moving
image sampled by :mod:`.trilinear`.

Tensors are (1, C, D, H, W) with channels and axes (z, y, x); fields are in voxels unless named _n
(normalized [-1, 1] coordinates, align_corners=True).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import RegisterConfig
from .objective import FixedStatistics, local_ncc, local_ncc_to, smoothness_mm
from .trilinear import TrilinearSampler

__all__ = ["Adam", "StepCallback", "instance_optimize", "local_ncc"]

StepCallback = Callable[[int, int, dict[str, float]], None]


def _gaussian_blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0.1:
            continue
        radius = max(1, math.ceil(2.5 * sigma))
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


def _level_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    out = []
    for level in range(levels):
        f = 2 ** (levels - 1 - level)
        out.append(tuple(max(8, round((s - 1) / f) + 1) if f > 1 else int(s) for s in shape))
    return out


def _normalized_grid(shape: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
    """(1, 3, D, H, W) coordinates in [-1, 1] (align_corners=True), channels (z, y, x)."""
    axes = [torch.linspace(-1.0, 1.0, s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def _half(shape: Sequence[int], device) -> torch.Tensor:
    return torch.tensor([(s - 1) / 2.0 for s in shape], device=device, dtype=torch.float32)


@dataclass
class _Progress:
    """Step count over all levels, the last losses, and the every-10-steps report."""

    total: int
    on_step: StepCallback | None
    step: int = 0
    reported: dict[str, float] = field(default_factory=dict)
    last: tuple[torch.Tensor, torch.Tensor] | None = None

    def advance(self, level: int, ncc: torch.Tensor, smooth: torch.Tensor) -> None:
        self.step += 1
        self.last = (ncc, smooth)
        if self.on_step is not None and (self.step % 10 == 0 or self.step == self.total):
            self.reported = {"ncc": float(ncc.detach()), "smooth": float(smooth.detach())}
            self.on_step(self.step, self.total, {**self.reported, "level": level})

    def final_losses(self) -> dict[str, float]:
        if self.last is None:
            return self.reported
        ncc, smooth = self.last
        return {"ncc": float(ncc.detach()), "smooth": float(smooth.detach())}


def _level_images(
    fixed_w: torch.Tensor, moving_w: torch.Tensor, lshape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images blurred (half a voxel of the level per axis) and resized to ``lshape``."""
    factors = [(s - 1) / max(ls - 1, 1) for s, ls in zip(fixed_w.shape[2:], lshape)]
    sigmas = [0.5 * f if f > 1 else 0.0 for f in factors]
    return _resize(_gaussian_blur(fixed_w, sigmas), lshape), _resize(_gaussian_blur(moving_w, sigmas), lshape)


class Adam:
    """torch.optim.Adam's update (its default betas and eps, no weight decay, no amsgrad), the same
    arithmetic in the same order, for the few tensors of one registration.

    Why not torch.optim.Adam: its first use in a process imports torch._dynamo (about 1 s on a CPU,
    a tenth of a whole `gvsl register`). Testing/core/test_register.py checks that the steps are
    torch.optim.Adam's.

    Args:
        groups: ``[{"params": [tensor, ...], "lr": float}, ...]`` as for torch.optim.
    """

    def __init__(self, groups: Sequence[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = [(list(g["params"]), float(g["lr"])) for g in groups]
        self.betas = betas
        self.eps = eps
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - torch.optim's signature
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for params, lr in self.groups:
            for p in params:
                if p.grad is None:
                    continue
                if id(p) not in self.state:
                    self.state[id(p)] = (torch.zeros_like(p), torch.zeros_like(p), [0])
                exp_avg, exp_avg_sq, step = self.state[id(p)]
                step[0] += 1
                grad = p.grad
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction2_sqrt = math.sqrt(1 - beta2 ** step[0])
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
                p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** step[0]))


def _descend(
    optimizer: Adam,
    fixed_stats: FixedStatistics,
    moving: TrilinearSampler,
    grid: torch.Tensor,
    a_param: torch.Tensor,
    t_param: torch.Tensor,
    v_param: torch.Tensor,
    h_l: torch.Tensor,
    spacing_l: torch.Tensor,
    cfg: RegisterConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on local NCC + ``cfg.smooth_weight`` x smoothness; returns (ncc, smooth).

    ``grid`` is the level's voxel grid about its centre, (1, 3, D, H, W) in level voxels (z, y, x).
    """
    # The moving voxel index of q = Aff((g + v) / h) is h (q + 1), with h and 1/h folded into the
    # matrix. A (3, 3) @ (3, N) product on the channel-first field: a 1x1x1 conv3d gives the same but
    # falls to a slow path beyond small grids (on the 91x91x84 grid of the LIDC pair, two cores:
    # 156 ms forward and backward against 8 ms), and an (N, 3) @ (3, 3) product needs a permute.
    weight = h_l.view(3, 1) * a_param / h_l.view(1, 3)
    index = torch.addmm((h_l * (t_param + 1.0)).view(3, 1), weight, (grid + v_param).view(3, -1))
    warped = moving(index.view(grid.shape))
    ncc = local_ncc_to(fixed_stats, warped)
    smooth = smoothness_mm(v_param, spacing_l)
    loss = ncc + cfg.smooth_weight * smooth
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return ncc, smooth


def _optimize_level(
    level: int,
    images: tuple[torch.Tensor, torch.Tensor],
    a_param: torch.Tensor,
    t_param: torch.Tensor,
    v_n: torch.Tensor,
    extent: torch.Tensor,
    cfg: RegisterConfig,
    progress: _Progress,
) -> torch.Tensor:
    """Optimize one pyramid level from the normalized field ``v_n``; returns the new ``v_n``
    (the affine parameters are updated in place)."""
    fixed_l, moving_l = images
    lshape = tuple(fixed_l.shape[2:])
    device = fixed_l.device
    fixed_stats = FixedStatistics.of(fixed_l, cfg.ncc_window)
    moving_sampler = TrilinearSampler(moving_l)
    h_l = _half(lshape, device)
    grid = _normalized_grid(lshape, device) * h_l.view(1, 3, 1, 1, 1)  # level voxels about the centre
    # The field is a parameter in voxels of this level (so that one Adam step is about the
    # same fraction of a voxel at every level).
    v_param = torch.nn.Parameter((_resize(v_n, lshape) * h_l.view(1, 3, 1, 1, 1)).detach())
    spacing_l = extent / h_l  # mm per level voxel, (z, y, x)
    phases = ["affine", "joint"] if (level == 0 and cfg.affine_only_first) else ["joint"]
    for phase in phases:
        params = [{"params": [a_param, t_param], "lr": cfg.lr_affine}]
        if phase == "joint":
            params.append({"params": [v_param], "lr": cfg.lr})
        optimizer = Adam(params)
        for _ in range(cfg.iterations):
            ncc, smooth = _descend(optimizer, fixed_stats, moving_sampler, grid, a_param, t_param, v_param, h_l,
                                   spacing_l, cfg)
            progress.advance(level, ncc, smooth)
    return (v_param / h_l.view(1, 3, 1, 1, 1)).detach()


def instance_optimize(
    fixed_w: torch.Tensor,
    moving_w: torch.Tensor,
    affine: torch.Tensor,
    residual: torch.Tensor,
    spacing_mm: Sequence[float],
    cfg: RegisterConfig,
    on_step: StepCallback | None = None,
    seconds: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Refine ``p -> Aff(p + v(p))`` on this pair by Adam on local NCC + smoothness, coarse to fine.

    Coordinates inside are normalized ([-1, 1] per axis, align_corners=True), so a field carries
    over between pyramid levels by plain trilinear resizing.

    Args:
        fixed_w, moving_w: (1, 1, D, H, W) in [0, 1] on the working grid.
        affine: (3, 4) start, working voxels, (z, y, x), about the grid centre.
        residual: (1, 3, D, H, W) start, working voxels.
        spacing_mm: working spacing (z, y, x).
        cfg: iterations per level, levels, weights, steps.
        on_step: called as (step, total, losses) every 10 steps.
        seconds: filled with the seconds of each level (``level_1`` coarsest) when given.

    Returns:
        (affine (3, 4), residual (1, 3, D, H, W)) in working voxels, and the final losses.
    """
    device = fixed_w.device
    shape = tuple(fixed_w.shape[2:])
    h_w = _half(shape, device)
    extent = h_w * torch.as_tensor(list(spacing_mm), device=device, dtype=torch.float32)  # half extents, mm
    a_param = torch.nn.Parameter((affine[:, :3] * h_w.view(1, 3) / h_w.view(3, 1)).detach().clone())  # H^-1 A H
    t_param = torch.nn.Parameter((affine[:, 3] / h_w).detach().clone())
    v_n = residual.detach() / h_w.view(1, 3, 1, 1, 1)
    progress = _Progress(cfg.total_steps, on_step)
    for level, lshape in enumerate(_level_shapes(shape, cfg.levels)):
        t0 = time.monotonic()
        images = _level_images(fixed_w, moving_w, lshape)
        v_n = _optimize_level(level, images, a_param, t_param, v_n, extent, cfg, progress)
        if seconds is not None:
            seconds[f"level_{level + 1}"] = round(time.monotonic() - t0, 3)
    a_v = a_param.detach() * h_w.view(3, 1) / h_w.view(1, 3)
    t_v = t_param.detach() * h_w
    residual_out = _resize(v_n, shape) * h_w.view(1, 3, 1, 1, 1)
    return torch.cat([a_v, t_v.view(3, 1)], dim=1), residual_out, progress.final_losses()
