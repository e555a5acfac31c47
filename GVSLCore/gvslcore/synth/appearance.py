"""CT appearance painted on a tissue map: contrast phase, texture, mixing artefacts, blur and noise.

One anatomy gives many images (SynthSeg's idea, here with CT's physical units kept as a prior):
each sample draws a contrast phase (arterial CTA, late/venous, non-contrast), a mean HU per tissue
around its physical value, smooth per-tissue texture, in some samples the swirl of opacified and
unopacified blood in the right heart and caval veins, a point spread and noise. With probability
``p_shuffle`` the tissue means are jittered far from their physical values, so that a network
cannot rely on exact HU alone and must read shapes and context.

Everything runs in torch on (D, H, W) tensors; randomness comes from a ``numpy`` generator so that
a sample is a pure function of its seed (bit-for-bit resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .tissues import NUM_TISSUES, Tissue

T = Tissue

# (mean HU, between-sample sd, texture sd) of the tissues whose HU does not depend on contrast.
_FIXED = {
    T.AIR: (-1000.0, 5.0, 3.0), T.SKIN: (40.0, 12.0, 8.0), T.FAT: (-100.0, 12.0, 8.0), T.MUSCLE: (50.0, 10.0, 8.0),
    T.CORTEX: (900.0, 250.0, 80.0), T.MARROW: (230.0, 70.0, 40.0), T.CARTILAGE: (140.0, 60.0, 25.0),
    T.LUNG: (-860.0, 40.0, 20.0), T.AIRWAY: (-995.0, 8.0, 5.0), T.SOFT: (42.0, 12.0, 8.0),
    T.MEDIASTINAL_FAT: (-92.0, 15.0, 10.0), T.STOMACH: (20.0, 20.0, 10.0), T.GAS: (-990.0, 10.0, 5.0),
    T.CSF: (15.0, 8.0, 5.0), T.TABLE: (120.0, 150.0, 10.0), T.DENSE: (1400.0, 500.0, 100.0),
    T.ABDOMEN: (-40.0, 30.0, 35.0), T.GLAND: (35.0, 12.0, 12.0),
}
_LEFT = (T.LV, T.LA, T.AO, T.ARTERY, T.PULMONARY_VEIN)
_RIGHT = (T.RV, T.RA, T.PA, T.PULMONARY_BRANCH)
_MUSCULAR = (T.MYO, T.HEART_WALL, T.PAPILLARY)
_MIXING = {T.RA: 1.0, T.IVC: 1.0, T.SVC: 0.6, T.RV: 0.5}  # strength of the inflow swirl


@dataclass(frozen=True)
class AppearanceConfig:
    """Probabilities and ranges of the appearance randomization."""

    p_noncontrast: float = 0.1
    p_venous: float = 0.12
    p_shuffle: float = 0.15
    shuffle_sd: float = 180.0
    p_mixing: float = 0.55
    blur_mm: tuple[float, float] = (0.4, 1.4)
    p_thick_slices: float = 0.3
    thick_mm: tuple[float, float] = (1.0, 3.0)
    noise_hu: tuple[float, float] = (3.0, 35.0)
    p_fov_cut: float = 0.15


def phase_means(rng: np.random.Generator, cfg: AppearanceConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Per-tissue mean HU and texture sd (NUM_TISSUES,) of one sample, and the phase's name."""
    mean = np.zeros(NUM_TISSUES)
    texture = np.full(NUM_TISSUES, 10.0)
    for t, (m, sd, tex) in _FIXED.items():
        mean[t], texture[t] = rng.normal(m, sd), tex
    u = rng.random()
    if u < cfg.p_noncontrast:
        phase = "non-contrast"
        left = right = rng.uniform(30.0, 60.0)
        myo, liver, spleen, kidney, ivc, svc = rng.uniform(30, 55), rng.uniform(45, 70), rng.uniform(40, 55), 30.0, left, left
    elif u < cfg.p_noncontrast + cfg.p_venous:
        phase = "venous"
        left = rng.uniform(120.0, 240.0)
        right = left * rng.uniform(0.9, 1.1)
        myo, liver, spleen, kidney = rng.uniform(90, 140), rng.uniform(90, 150), rng.uniform(100, 150), rng.uniform(150, 250)
        ivc, svc = right * rng.uniform(0.8, 1.0), right
    else:
        phase = "arterial"
        left = rng.uniform(180.0, 650.0)
        ratio = rng.uniform(0.45, 1.25) if rng.random() < 0.85 else rng.uniform(1.0, 1.6)  # early: right brighter
        right = max(90.0, left * ratio)
        myo, liver, spleen, kidney = rng.uniform(80, 170), rng.uniform(55, 120), rng.uniform(90, 180), rng.uniform(150, 300)
        ivc, svc = rng.uniform(50.0, 200.0), right * rng.uniform(1.0, 4.0)
    for t in _LEFT:
        mean[t] = left + rng.normal(0.0, 15.0)
    for t in _RIGHT:
        mean[t] = right + rng.normal(0.0, 15.0)
    for t in _MUSCULAR:
        mean[t] = myo + rng.normal(0.0, 8.0)
    mean[T.LUNG_VESSEL] = 0.5 * (left + right) * rng.uniform(0.6, 1.0)
    mean[T.LIVER], mean[T.SPLEEN], mean[T.KIDNEY], mean[T.IVC], mean[T.SVC] = liver, spleen, kidney, ivc, min(svc, 3000.0)
    # The coronary sinus returns the myocardium's blood: in an arterial CTA it has had one pass
    # through the coronary circulation (opacified, below the aorta); later it is mixed venous blood.
    mean[T.CORONARY_SINUS] = left * rng.uniform(0.45, 0.85) if phase == "arterial" else right
    texture[[int(t) for t in (*_LEFT, *_RIGHT, T.CORONARY_SINUS)]] = rng.uniform(8.0, 25.0)
    texture[T.LIVER] = texture[T.SPLEEN] = rng.uniform(6.0, 18.0)
    if rng.random() < cfg.p_shuffle:
        jitter = rng.normal(0.0, cfg.shuffle_sd, size=NUM_TISSUES)
        jitter[[T.AIR, T.AIRWAY, T.GAS]] = 0.0  # air stays air: the body outline is never in doubt
        mean = mean + jitter
    return mean, texture, phase


def smooth_noise(shape: tuple[int, int, int], rng: np.random.Generator, cells: int = 6) -> torch.Tensor:
    """A smooth random field of unit sd on ``shape``: trilinear upsampling of a ``cells``^3 lattice."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32))
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0]
    return field / field.std().clamp_min(1e-6)


def gaussian_blur(volume: torch.Tensor, sigma_vox: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of a (D, H, W) tensor, ``sigma_vox`` per axis (z, y, x), edges replicated."""
    x = volume[None, None]
    for axis, sigma in enumerate(sigma_vox):
        if sigma < 0.2:
            continue
        radius = max(1, int(np.ceil(3.0 * sigma)))
        k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1, 1).transpose(2, 2 + axis)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k)
    return x[0, 0]


def paint(tissue: torch.Tensor, spacing_mm: float, rng: np.random.Generator,
          cfg: AppearanceConfig = AppearanceConfig()) -> tuple[torch.Tensor, str]:
    """HU (float32, (D, H, W)) of a tissue map (long, (D, H, W)) on an isotropic grid of ``spacing_mm``.

    Returns the image before the point spread and noise of the scanner (see :func:`scanner`) and
    the contrast phase drawn.
    """
    mean, texture, phase = phase_means(rng, cfg)
    shape = tuple(tissue.shape)
    mean_t = torch.from_numpy(mean.astype(np.float32))
    tex_t = torch.from_numpy(texture.astype(np.float32))
    hu = mean_t[tissue]
    # Texture at two scales (organ-sized and a few mm), each tissue with its own strength.
    # Grain of a few mm: white noise on a lattice of ~3 mm, interpolated.
    lattice = tuple(max(2, int(round(n * spacing_mm / 3.0))) for n in shape)
    fine = torch.from_numpy(rng.standard_normal((1, 1, *lattice)).astype(np.float32))
    fine = F.interpolate(fine, size=shape, mode="trilinear", align_corners=True)[0, 0]
    fine = fine / fine.std().clamp_min(1e-6)
    hu = hu + tex_t[tissue] * (0.6 * smooth_noise(shape, rng, 5) + 0.8 * fine)
    lung = tissue == int(T.LUNG)
    if lung.any():  # dependent density: the posterior lung (larger y index) is denser in a supine patient
        gradient = torch.linspace(0.0, 1.0, shape[1]).view(1, -1, 1) * float(rng.uniform(0.0, 110.0))
        hu = torch.where(lung, hu + gradient, hu)
    if phase != "non-contrast" and rng.random() < cfg.p_mixing:
        swirl = torch.sigmoid(3.0 * smooth_noise(shape, rng, 10) + float(rng.uniform(-1.5, 1.5)))
        strength = np.zeros(NUM_TISSUES, dtype=np.float32)
        level = float(rng.uniform(0.3, 0.9))
        for t, s in _MIXING.items():
            strength[t] = s * level
        alpha = torch.from_numpy(strength)[tissue] * swirl
        unopacified = float(rng.uniform(30.0, 70.0))
        hu = hu * (1.0 - alpha) + unopacified * alpha
    return hu, phase


def scanner(hu: torch.Tensor, spacing_mm: float, rng: np.random.Generator,
            cfg: AppearanceConfig = AppearanceConfig()) -> torch.Tensor:
    """The scanner's point spread on a (D, H, W) HU tensor (in-plane blur, thicker slices along z)."""
    inplane = rng.uniform(*cfg.blur_mm) / spacing_mm
    along_z = rng.uniform(*cfg.thick_mm) / spacing_mm if rng.random() < cfg.p_thick_slices else inplane
    return gaussian_blur(hu, (along_z, inplane, inplane))


def add_noise(hu: torch.Tensor, rng: np.random.Generator, cfg: AppearanceConfig = AppearanceConfig()) -> torch.Tensor:
    """Quantum noise of the working grid: Gaussian, sd drawn in ``cfg.noise_hu``, sometimes slightly grainy."""
    sd = float(rng.uniform(*cfg.noise_hu))
    noise = torch.from_numpy(rng.standard_normal(tuple(hu.shape)).astype(np.float32))
    if rng.random() < 0.5:
        noise = gaussian_blur(noise, (0.6, 0.6, 0.6))
        noise = noise / noise.std().clamp_min(1e-6)
    return hu + sd * noise
