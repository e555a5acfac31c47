"""The GVSL pre-training model: shared U-Net, Z-Matching head (affine + deformable), restoration head.

Given a fixed image A (possibly appearance-transformed) and a moving image B, the model predicts
how B maps onto A:

- affine head (global similarity): concat(global_B, global_A) -> DoubleConv(8w) -> global average
  pool, plus (ours) the spatial moments of the level-2 encoder maps of A and B -> four linear layers
  giving 3 rotations, 3 scales, 3 translations and 6 shears, each
  bounded with tanh (rotation +-20 deg, scale 0.75-1.25, shear +-10 deg, translation +-20 % of the
  extent), composed *differentiably* into a (B, 3, 4) matrix -- the authors rebuilt it with
  ``torch.FloatTensor([...])``, which cut the gradient and broke batches > 1;
- deformable head (local similarity): local_B pulled through the affine, concat local_A ->
  DoubleConv(w/2) -> Conv3d(3) = residual displacement v (voxels);
- fusion (paper Eq. 12): ``phi(p) = Aff(p + v(p))`` as one displacement field, which warps B
  onto A with a single interpolation.

The restoration head maps local_A back to the untransformed A (Models Genesis "fundament").
Parameter names follow the authors' release.

Why the moments: average pooling of the bottleneck (2^3 voxels for a 32^3 patch, 8^3 for 128^3)
keeps what is in the volume but not *where*, and a pose is a where. Trained alone on pairs related
by known affines, the pooled head alone learned little (held-out corner error 31 -> 28 mm in 1,600
steps; benchmarks/affine_recovery.py) and at higher learning rates its features collapsed to a
constant. The mass-weighted centroid and second moments of each feature channel are the
classical moments alignment with learned "masses": a translation shifts the centroids, a rotation
or scale turns or stretches the second moments. They enter the same four linear layers through
``f_moments`` (a new layer; the authors' file has none, and their affine layers never trained).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..spatial import affine_to_displacement, fuse_affine_and_displacement, warp
from .unet import DoubleConv, Features, UNet3D

MAX_ROTATION = math.pi / 9  # 20 degrees
MAX_SCALE = 0.25
MAX_SHEAR = math.pi / 18  # 10 degrees
MAX_TRANSLATION = 0.2  # fraction of the extent along each axis


def _rotation(angle: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, 3, 3) rotation about ``axis`` (0 = x, 1 = y, 2 = z), built with stack so gradients flow."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def affine_matrix_from_parameters(
    rotation: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor, shear: torch.Tensor
) -> torch.Tensor:
    """Compose bounded parameters into (B, 3, 4) [A | t] in (z, y, x) order.

    Args:
        rotation: (B, 3) radians about x, y, z.
        scale: (B, 3) factors along x, y, z.
        translation: (B, 3) along x, y, z, in the units of the grid (voxels of the working grid).
        shear: (B, 6) radians: xy, xz, yx, yz, zx, zy.

    ``A = Shear @ Scale @ Rz @ Ry @ Rx`` in (x, y, z), then both axes reversed to our (z, y, x).
    """
    rot = _rotation(rotation[:, 2], 2) @ _rotation(rotation[:, 1], 1) @ _rotation(rotation[:, 0], 0)
    scl = torch.diag_embed(scale)
    t = torch.tan(shear)
    one = torch.ones_like(t[:, 0])
    shr = torch.stack(
        [
            torch.stack([one, t[:, 0], t[:, 1]], dim=-1),
            torch.stack([t[:, 2], one, t[:, 3]], dim=-1),
            torch.stack([t[:, 4], t[:, 5], one], dim=-1),
        ],
        dim=-2,
    )
    linear_xyz = shr @ scl @ rot
    linear_zyx = linear_xyz.flip(-1).flip(-2)
    return torch.cat([linear_zyx, translation.flip(-1).unsqueeze(-1)], dim=-1)


def feature_moments(features: torch.Tensor) -> torch.Tensor:
    """Spatial moments of each channel of a feature map, as a pose descriptor.

    Args:
        features: (B, C, D, H, W).

    Returns:
        (B, 10 C): per channel, with softplus(features) as the mass over coordinates in [-1, 1] along
        each axis: the centroid (z, y, x), the six central second moments (zz, yy, xx, zy, zx, yx) and
        the log mean mass.
    """
    with torch.autocast(features.device.type, enabled=False):  # sums over every voxel: keep float32
        return _moments(nn.functional.softplus(features.float()))


_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


@functools.lru_cache(maxsize=8)
def _moment_basis(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(9, N) coordinates z, y, x in [-1, 1] and their six products, built once per grid (every step
    of a training run sees the same patch shape). Built outside inference mode, so that a basis first
    made during inference can still be saved for backward by a later training step."""
    with torch.inference_mode(False), torch.no_grad():
        axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)
        return torch.cat([grid, torch.stack([grid[i] * grid[j] for i, j in _PAIRS])])


def _moments(mass: torch.Tensor) -> torch.Tensor:
    b, c = mass.shape[:2]
    m = mass.flatten(2)  # (B, C, N)
    total = m.sum(-1, keepdim=True) + 1e-6
    raw = (m @ _moment_basis(tuple(mass.shape[2:]), mass.device).T) / total  # (B, C, 9)
    centroid = raw[..., :3]
    second = raw[..., 3:] - torch.stack([centroid[..., i] * centroid[..., j] for i, j in _PAIRS], dim=-1)
    log_mass = torch.log(total / m.shape[-1])
    return torch.cat([centroid, second, log_mass], dim=-1).reshape(b, 10 * c)


@dataclass
class ZMatchOutput:
    """What one forward pass gives (all on the fixed grid, shapes for input (B, 1, D, H, W)).

    Attributes:
        restored: (B, 1, D, H, W) restoration of the fixed image.
        warped: (B, 1, D, H, W) moving image pulled onto the fixed one by ``displacement``.
        affine: (B, 3, 4) global part, (z, y, x) voxel units about the grid centre.
        residual: (B, 3, D, H, W) deformable part v (voxels) before fusion.
        displacement: (B, 3, D, H, W) fused pull field (voxels): warped(p) = moving(p + u(p)).
        parameters: raw bounded parameters (rotation, scale, translation, shear).
    """

    restored: torch.Tensor
    warped: torch.Tensor
    affine: torch.Tensor
    residual: torch.Tensor
    displacement: torch.Tensor
    parameters: dict[str, torch.Tensor]


class GVSLNet(nn.Module):
    """Shared backbone with the Z-Matching and restoration heads.

    Args:
        width: first-level channels (paper 32; tests use 4-8).
        in_channels: image channels (1).
    """

    def __init__(self, width: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        self.width = width
        self.unet = UNet3D(in_channels, width)
        bottleneck = 16 * width
        self.f_conv = DoubleConv(2 * bottleneck, 8 * width)
        self.sp_conv = DoubleConv(2 * width, max(1, width // 2))
        half = max(1, width // 2)
        self.res_conv = nn.Sequential(
            nn.Conv3d(width, half, 3, padding=1),
            nn.GroupNorm(max(1, half // 4), half),
            nn.LeakyReLU(0.2),
            nn.Conv3d(half, in_channels, 1),
        )
        self.out_flow = nn.Conv3d(half, 3, 3, padding=1)
        self.fc_rot = nn.Linear(8 * width, 3)
        self.fc_scl = nn.Linear(8 * width, 3)
        self.fc_trans = nn.Linear(8 * width, 3)
        self.fc_shear = nn.Linear(8 * width, 6)
        # pose moments of the level-2 encoder maps (2w channels, 10 moments each) of both images
        self.f_moments = nn.Sequential(nn.Linear(2 * 10 * 2 * width, 8 * width), nn.LeakyReLU(0.2))
        # Start near the identity mapping, but not exactly at it: small weights keep a gradient
        # flowing into f_conv and sp_conv from the first step (zero weights would block it).
        for fc in (self.fc_rot, self.fc_scl, self.fc_trans, self.fc_shear):
            nn.init.normal_(fc.weight, std=1e-3)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.out_flow.weight, std=1e-5)
        nn.init.zeros_(self.out_flow.bias)

    # -- heads ---------------------------------------------------------------------------------
    def affine_parameters(self, global_moving: torch.Tensor, global_fixed: torch.Tensor, pose_moving: torch.Tensor,
                          pose_fixed: torch.Tensor, shape) -> dict[str, torch.Tensor]:
        """Bounded parameters from the bottleneck (B, 16w, ...) and level-2 (B, 2w, ...) maps of both images;
        ``shape`` is the (D, H, W) of the grid the affine acts on (translations are fractions of it)."""
        x = self.f_conv(torch.cat([global_moving, global_fixed], dim=1)).mean(dim=(2, 3, 4))
        pose = torch.cat([feature_moments(pose_moving), feature_moments(pose_fixed)], dim=1)
        x = x + self.f_moments(pose.to(x.dtype))
        raw_t = torch.tanh(self.fc_trans(x)) * MAX_TRANSLATION
        extent_xyz = (shape[2] - 1, shape[1] - 1, shape[0] - 1)
        translation = torch.stack([raw_t[:, k] * float(extent_xyz[k]) for k in range(3)], dim=-1)  # x, y, z voxels
        return {
            "rotation": torch.tanh(self.fc_rot(x)) * MAX_ROTATION,
            "scale": 1.0 + torch.tanh(self.fc_scl(x)) * MAX_SCALE,
            "translation": translation,
            "shear": torch.tanh(self.fc_shear(x)) * MAX_SHEAR,
        }

    def deformable(self, local_moving_affine: torch.Tensor, local_fixed: torch.Tensor) -> torch.Tensor:
        return self.out_flow(self.sp_conv(torch.cat([local_moving_affine, local_fixed], dim=1)))

    def affine_of(self, fixed: Features, moving: Features, shape) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The affine head alone on the backbone's features: (B, 3, 4) (voxels, (z, y, x), about the
        centre of the grid of (D, H, W) ``shape``) and its parameters."""
        params = self.affine_parameters(moving.bottleneck, fixed.bottleneck, moving.pose, fixed.pose, shape)
        return affine_matrix_from_parameters(params["rotation"], params["scale"], params["translation"], params["shear"]), params

    def match(self, fixed: Features, moving: Features, shape, affine: torch.Tensor | None = None):
        """Z-Matching from the backbone's features of both images (``UNet3D.features``): returns
        (affine, residual, fused displacement, parameters). A given ``affine`` (B, 3, 4) replaces the
        affine head's (the deformable head then works against it; parameters None)."""
        local_fixed, local_moving = fixed.local, moving.local
        params = None
        if affine is None:
            affine, params = self.affine_of(fixed, moving, shape)
        affine = affine.to(local_fixed.dtype)
        u_aff = affine_to_displacement(affine.float(), shape).to(local_moving.dtype)
        residual = self.deformable(warp(local_moving, u_aff), local_fixed)
        displacement = fuse_affine_and_displacement(affine.float(), residual.float())
        return affine, residual, displacement, params

    def predict_affine(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The global part alone: (B, 3, 4) affine (voxels, (z, y, x), about the centre) and its parameters."""
        levels = self.unet.encode(torch.cat([fixed, moving], dim=0))  # the encoder is enough
        pose, bottleneck = levels[1], levels[4]
        b = fixed.shape[0]
        params = self.affine_parameters(bottleneck[b:], bottleneck[:b], pose[b:], pose[:b], fixed.shape[2:])
        affine = affine_matrix_from_parameters(params["rotation"], params["scale"], params["translation"], params["shear"])
        return affine, params

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> ZMatchOutput:
        """Args: fixed, moving (B, 1, D, H, W) on the same grid, intensities in [0, 1]."""
        shape = fixed.shape[2:]
        # One backbone pass over both images: halves kernel launches and keeps GroupNorm per sample.
        both = self.unet.features(torch.cat([fixed, moving], dim=0))
        b = fixed.shape[0]
        f_fixed = Features(*(t[:b] for t in both))
        f_moving = Features(*(t[b:] for t in both))
        affine, residual, displacement, params = self.match(f_fixed, f_moving, shape)
        warped = warp(moving.float(), displacement)
        restored = self.res_conv(f_fixed.local)
        return ZMatchOutput(restored, warped, affine, residual, displacement, params)
