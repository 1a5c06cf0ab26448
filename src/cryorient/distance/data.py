"""Training data: projections of a reference made the way the particles were made.

:class:`ImagingModel` captures what matters of a stack, measured from its images and CTF
parameters only (never from its recorded poses): box, pixel size, the CTF parameters, the
SNR (background variance against the whole box, less the share of the signal the CTF puts in
the background, measured on the reference's projections) and the spread of the particles'
offsets (the blur of the stack's average image relative to the reference's average projection).
:class:`ReferenceSampler` renders batches of fresh projections of the reference at the
network's input size (a Fourier-cropped copy of the volume: the same images as rendering at
full size and cropping, at a fraction of the cost), with orientation pairs balanced over
the distance range, and re-draws an augmented copy of the reference every few batches so
that a reference that differs from the particles (a moved domain, a lower resolution,
missing or extra density) still works. Its state (generator, the current augmented volume)
is saved with training checkpoints, so a resumed run is the uninterrupted run, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch
import torch.nn.functional as F

from .. import so3
from ..config import AugmentationConfig, ModelConfig
from ..ctf import CTFParams, ctf_rfft
from ..fourier import fourier_resize, fourier_resize_volume, lowpass_volume, rfft2_centered, rfft_freqs_2d
from ..imaging.noise import estimate_snr, image_variances, sample_noise
from ..imaging.projector import prepare_volume
from ..imaging.render import render, sample_shifts
from ..particles import ParticleStack
from .preprocess import prepare_inputs, resampled_box

SHIFT_RANGE_PER_SIGMA = 2.25  # training shift range / measured per-axis spread of the offsets


@dataclass(frozen=True)
class ImagingModel:
    box: int
    pixel_size: float
    snr: float
    max_shift_px: float
    ctf: CTFParams | None  # a pool of CTF parameters drawn with replacement

    def summary(self) -> dict:
        """Everything about the imaging that shapes training (the model cache key uses it)."""
        out = {"box": self.box, "pixel_size": round(self.pixel_size, 4), "snr": self.snr,
               "max_shift_px": round(self.max_shift_px, 2), "ctf": self.ctf is not None}
        if self.ctf is not None:
            c = self.ctf
            out["ctf_params"] = {
                "voltage_kv": sorted({round(float(v), 2) for v in c.voltage_kv}),
                "cs_mm": sorted({round(float(v), 3) for v in c.cs_mm}),
                "amplitude_contrast": sorted({round(float(v), 3) for v in c.amplitude_contrast}),
                "defocus_min_angstrom": round(float(torch.minimum(c.defocus_u_angstrom,
                                                                  c.defocus_v_angstrom).min()), -1),
                "defocus_max_angstrom": round(float(torch.maximum(c.defocus_u_angstrom,
                                                                  c.defocus_v_angstrom).max()), -1)}
        return out


def estimate_shift_spread(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float,
                          clean: torch.Tensor, resolution: float) -> float:
    """Per-axis standard deviation (px) of the particles' offsets, from their images alone.

    The average of many particles is the average projection of the object blurred by the
    distribution of the offsets; the average projection comes from ``clean``, the reference
    projected at uniform orientations with the same CTFs (band-limited at ``resolution`` Å).
    Both averages are phase-flipped; the Gaussian blur that best maps the reference's onto the
    stack's, below the reference's resolution, gives the spread."""
    box = images.shape[-1]

    def average(x: torch.Tensor) -> torch.Tensor:
        f = rfft2_centered(x.float())
        if ctf is not None:
            f = f * ctf_rfft(ctf, box, pixel_size, phase_flip=True, device=f.device)
        return f.mean(0)

    a, r = average(images), average(clean)
    ky, kx = rfft_freqs_2d(box, device=a.device)
    k2 = kx**2 + ky**2
    sel = (k2 < min(0.15, 0.8 * pixel_size / resolution) ** 2) & (k2 > 0)
    best = (math.inf, 0.0)
    for s in torch.arange(0.0, box / 6, 0.1).tolist():
        b = r[sel] * torch.exp(-2 * math.pi**2 * s**2 * k2[sel])
        scale = (a[sel].conj() * b).real.sum() / (b.abs() ** 2).sum().clamp_min(1e-30)
        err = float(((a[sel] - scale * b).abs() ** 2).sum())
        if err < best[0]:
            best = (err, s)
    return best[1]


def imaging_from_stack(stack: ParticleStack, reference: torch.Tensor, resolution: float, sample: int = 2000,
                       generator: torch.Generator | None = None) -> ImagingModel:
    """The stack's imaging parameters measured from a sample of its images (and its CTF
    parameters); ``reference`` (on the stack's grid, band-limited at ``resolution`` Å),
    projected at random orientations with the sample's CTFs, serves the SNR (the share of the
    signal in the background ring, :func:`~cryorient.imaging.noise.estimate_snr`) and the
    offset spread (:func:`estimate_shift_spread`). Reads no pose column."""
    g = generator or torch.Generator().manual_seed(0)
    idx = torch.randperm(stack.n, generator=g)[: min(sample, stack.n)].sort().values.numpy()
    images = stack.images.read(idx)
    ctf = stack.ctf()
    sub_ctf = ctf.subset(idx) if ctf is not None else None
    clean = render(prepare_volume(reference), so3.sample_rotations(len(idx), g), None, sub_ctf,
                   stack.pixel_size).to(images.device)
    snr, _ = estimate_snr(images, clean=clean)
    sigma = estimate_shift_spread(images, sub_ctf, stack.pixel_size, clean, resolution)
    max_shift = max(1.0, SHIFT_RANGE_PER_SIGMA * sigma)
    return ImagingModel(stack.box, stack.pixel_size, snr, max_shift, ctf)


def augment_volume(volume: torch.Tensor, pixel_size: float, aug: AugmentationConfig,
                   generator: torch.Generator) -> torch.Tensor:
    """A randomly perturbed copy of ``volume`` (smooth deformation, low-pass, blobs); random
    numbers are drawn on the CPU (the same on every device), the volume stays where it is."""
    box = volume.shape[-1]
    dev = volume.device
    vol = volume
    if aug.deform_angstrom > 0:
        field = torch.randn(3, box // 8, box // 8, box // 8, generator=generator).to(dev)
        field = F.interpolate(field[None], size=(box, box, box), mode="trilinear", align_corners=True)[0]
        field = field / field.std().clamp_min(1e-6) * (aug.deform_angstrom / pixel_size)
        c = torch.linspace(-1, 1, box, device=dev)
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        grid = torch.stack([xx, yy, zz], dim=-1) + field.permute(1, 2, 3, 0) * (2 / (box - 1))
        vol = F.grid_sample(vol[None, None], grid[None], mode="bilinear", align_corners=True)[0, 0]
    lo, hi = aug.lowpass_range_angstrom
    u = float(torch.rand(1, generator=generator))
    res = lo + (hi - lo) * u
    if res > 2 * pixel_size:
        vol = lowpass_volume(vol, pixel_size / res)
    if aug.blobs:
        mass = vol.clamp_min(0).cpu()
        idx = torch.multinomial(mass.flatten() / mass.sum(), aug.blobs, generator=generator)
        centres = torch.stack([idx // (box * box), (idx // box) % box, idx % box], dim=1).float().to(dev)
        c = torch.arange(box, dtype=torch.float32, device=dev)
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        sigma = aug.blob_radius_angstrom / pixel_size
        level = float(vol.max()) * 0.5
        for p in centres:
            blob = torch.exp(-((zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2) / (2 * sigma**2))
            if float(torch.rand(1, generator=generator)) < 0.5:
                vol = vol + level * blob  # extra density the reference lacks
            else:
                vol = vol * (1 - blob)  # density the reference has and the particles lack
    return vol


def balanced_orientations(m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` rotations: the first half uniform, the second half each at a distance drawn
    uniformly in [0, pi] from its partner in the first half (so pair distances cover the
    range evenly; uniform pairs alone are mostly near 2 rad). Returns rotations and the
    designed pair distances."""
    half = m // 2
    first = so3.sample_rotations(m - half, generator)
    d = torch.rand(half, generator=generator) * math.pi
    axis = torch.randn(half, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True)
    second = first[:half] @ roma.rotvec_to_rotmat(axis * d[:, None])
    return torch.cat([first, second]), d


class ReferenceSampler:
    """Batches of preprocessed training images of a reference with their true rotations.

    Images are rendered at the network's input sampling (``resampled_box`` px at the input
    pixel size) from a Fourier-cropped copy of the (augmented) reference, with CTFs drawn
    from the stack's, shifts in the measured range, and white noise at the stack's SNR
    referred to the full box (cropping a white-noise image to ``s`` of ``D`` px divides its
    variance by ``(D / s)^2``; the signal's scale between the two renderings is calibrated
    once). ``batch(m, snr_factor)`` multiplies the SNR (a curriculum starts above 1)."""

    def __init__(self, volume: torch.Tensor, imaging: ImagingModel, model: ModelConfig,
                 aug: AugmentationConfig, generator: torch.Generator, device=None):
        self.volume = volume.to(device)
        self.imaging = imaging
        self.model = model
        self.aug = aug
        self.generator = generator
        self.device = device
        self.calls = 0
        self.small = resampled_box(imaging.box, imaging.pixel_size, model.input_pixel_size)
        self.small_px = imaging.pixel_size * imaging.box / self.small
        self.augmented = self.volume
        self.prepared = self._prepare(self.volume)
        self.noise_variance = self._noise_variance()

    def _prepare(self, volume: torch.Tensor):
        return prepare_volume(fourier_resize_volume(volume, self.small))

    def _noise_variance(self) -> float:
        """Noise variance at the input sampling for the stack's SNR (see the class docstring)."""
        g = torch.Generator().manual_seed(12345)
        rot = so3.sample_rotations(256, g)
        ctf = self._ctf(256, g)
        full = render(prepare_volume(self.volume), rot, None, ctf, self.imaging.pixel_size)
        small = render(self.prepared, rot, None, ctf, self.small_px)
        if not math.isfinite(self.imaging.snr):
            return 0.0
        full_noise = float(image_variances(full).mean()) / max(self.imaging.snr, 1e-6)
        scale2 = float(image_variances(small).mean()) / float(image_variances(
            fourier_resize(full, self.small)).mean())
        return full_noise * scale2 * (self.small / self.imaging.box) ** 2

    def _ctf(self, m: int, g: torch.Generator) -> CTFParams | None:
        pool = self.imaging.ctf
        if pool is None:
            return None
        return pool.subset(torch.randint(0, len(pool), (m,), generator=g))

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "calls": self.calls,
                "augmented": self.augmented.detach().cpu().clone()}

    def load_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.calls = int(state["calls"])
        self.augmented = state["augmented"].to(self.device)
        self.prepared = self._prepare(self.augmented)

    def batch(self, m: int, snr_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(inputs (m, S, S), rotations (m, 3, 3), designed distances (m // 2,))``."""
        g = self.generator
        if self.aug.enabled and self.calls % self.aug.refresh == 0:
            self.augmented = augment_volume(self.volume, self.imaging.pixel_size, self.aug, g)
            self.prepared = self._prepare(self.augmented)
        self.calls += 1
        rot, d = balanced_orientations(m, g)
        shifts = sample_shifts(m, self.imaging.max_shift_px, g) * (self.small / self.imaging.box)
        ctf = self._ctf(m, g)
        images = render(self.prepared, rot.to(self.device), shifts, ctf, self.small_px)
        if self.noise_variance > 0:
            variance = self.noise_variance / snr_factor
            images = images + sample_noise(images.shape, variance, g, device=images.device)
        m_cfg = self.model
        inputs = prepare_inputs(images, self.small_px, ctf, m_cfg.input_size, m_cfg.input_pixel_size,
                                m_cfg.phase_flip)
        return inputs, rot, d

