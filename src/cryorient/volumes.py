"""Operations on volumes shared by every stage: Fourier shell correlation and resolution
(torch-fourier-shell-correlation), masks, low-pass at a resolution, rotation (and mirror) of a
volume, and the alignment of one map onto another (rotation, hand and translation searched)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch_fourier_shell_correlation import fourier_shell_correlation

from .conventions import hand_matrix
from .fourier import fourier_resize_volume, lowpass_volume, radial_frequency_3d, raised_cosine


def soft_sphere_mask(box: int, radius_px: float | None = None, edge_px: float = 4.0,
                     dtype=torch.float32) -> torch.Tensor:
    """A spherical mask centred at ``D // 2``: 1 inside ``radius``, cosine edge to 0."""
    r_max = radius_px if radius_px is not None else box / 2 - edge_px
    c = torch.arange(box, dtype=dtype) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return raised_cosine(r, r_max + edge_px, edge_px)


def fsc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """FSC per shell ``k = 0 .. D//2`` (shell k is at ``k / D`` cycles/px)."""
    if a.shape != b.shape:
        raise ValueError(f"FSC needs volumes of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if mask is not None:
        a, b = a * mask, b * mask
    return fourier_shell_correlation(a.float(), b.float()).numpy().astype(np.float64)


def randomise_phases(volume: torch.Tensor, beyond_shell: int, generator: torch.Generator) -> torch.Tensor:
    """``volume`` with the phases of its Fourier components beyond shell ``beyond_shell``
    (radius in grid units) replaced by random ones (Friedel-consistent: a real volume)."""
    box = volume.shape[-1]
    ft = torch.fft.rfftn(volume.double())
    phase = torch.rand(ft.shape, generator=generator, dtype=torch.float64) * 2 * math.pi
    k = radial_frequency_3d(box, dtype=torch.float64) * box
    new = torch.where(k > beyond_shell, ft.abs() * torch.exp(1j * phase), ft)
    return torch.fft.irfftn(new, s=volume.shape).to(volume.dtype)


def corrected_fsc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                  generator: torch.Generator | None = None) -> np.ndarray:
    """The masked FSC corrected for what the mask itself correlates (as RELION's post-processing):
    beyond the shell where the unmasked FSC falls below 0.8, the masked FSC of phase-randomised
    copies measures the mask's contribution, removed by ``(F - F_rand) / (1 - F_rand)``. Two maps
    dominated by the same low-resolution shape (noise aligned to one reference) otherwise agree
    at higher shells through the mask alone."""
    unmasked = fsc(a, b)
    below = np.nonzero(unmasked[1:] < 0.8)[0]
    start = int(below[0]) + 1 if below.size else len(unmasked)
    masked = fsc(a, b, mask)
    if start >= len(unmasked) - 1:
        return masked
    g = generator or torch.Generator().manual_seed(0)
    rand = fsc(randomise_phases(a, start, g), randomise_phases(b, start, g), mask)
    out = masked.copy()
    beyond = np.arange(len(out)) > start
    out[beyond] = (masked[beyond] - rand[beyond]) / np.clip(1 - rand[beyond], 1e-6, None)
    return out


def shell_frequencies(box: int, pixel_size: float) -> np.ndarray:
    """Spatial frequency (1/Å) of each FSC shell."""
    return np.arange(box // 2 + 1) / (box * pixel_size)


@dataclass(frozen=True)
class Resolution:
    """Where an FSC curve first falls below a threshold."""

    threshold: float
    angstrom: float  # interpolated; at Nyquist when the curve never crosses
    frequency: float  # 1/Å
    reached_nyquist: bool


def resolution_at(curve: np.ndarray, box: int, pixel_size: float, threshold: float) -> Resolution:
    """Resolution (Å) at the first crossing of ``threshold``, linearly interpolated between
    shells. Shell 0 (the mean) is skipped. When the curve never crosses, the resolution is
    Nyquist (``2 x pixel size``) and ``reached_nyquist`` is set."""
    freqs = shell_frequencies(box, pixel_size)
    for k in range(1, len(curve)):
        if curve[k] < threshold:
            if k == 1:
                f = freqs[1]
            else:
                t = (curve[k - 1] - threshold) / (curve[k - 1] - curve[k])
                f = freqs[k - 1] + t * (freqs[k] - freqs[k - 1])
            return Resolution(threshold, float(1.0 / f), float(f), False)
    return Resolution(threshold, 2.0 * pixel_size, float(freqs[-1]), True)


def lowpass_to_resolution(volume: torch.Tensor, pixel_size: float, resolution_angstrom: float
                          ) -> torch.Tensor:
    """Low-pass a volume at ``resolution`` Å (cosine edge) — e.g. at its FSC estimate."""
    cutoff = min(pixel_size / resolution_angstrom, 0.5)
    return lowpass_volume(volume, cutoff) if not math.isinf(resolution_angstrom) else volume


def rotate_volume(volume: torch.Tensor, rotation: torch.Tensor, mirror: bool = False,
                  shift_px: torch.Tensor | None = None) -> torch.Tensor:
    """``V'(x) = V(rotation^T (x - shift))`` (trilinear), about the centre ``D // 2``; with
    ``mirror`` the volume is first mirrored, ``V_m(u) = V(J u)``. Orientations ``R`` of ``V``
    become ``rotation @ R`` (``rotation @ J R J`` with the mirror) for ``V'``. ``rotation``
    ``(B, 3, 3)`` gives the ``B`` rotated volumes ``(B, D, D, D)`` in one resampling."""
    box = volume.shape[-1]
    dev, dt = volume.device, volume.dtype
    c = torch.arange(box, dtype=dt, device=dev) - box // 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    pts = torch.stack([xx, yy, zz], dim=-1).view(-1, 3)
    g = rotation.to(dev, dt).reshape(-1, 3, 3)
    if mirror:
        g = g @ hand_matrix(dt, dev)  # V(J G^T x) with J = J^T
    # grid_sample's coordinates (align_corners: [-1, 1] over the box) of the sources
    # G^T (x - shift) + D // 2 (rows: x^T G), as one affine map of x: x^T A + o
    scale = 2 / (box - 1)
    o = torch.full((g.shape[0], 1, 3), (box // 2) * scale - 1, dtype=dt, device=dev)
    if shift_px is not None:
        o = o - scale * (shift_px.to(dev, dt) @ g)[:, None]
    grid = torch.baddbmm(o, pts.expand(g.shape[0], -1, 3), g * scale)
    # one grid_sample over a batch of B views of the volume (not copied): it runs in parallel over
    # the batch, 1.9x faster on two cores than one batch of B D x D x D points (measured, D = 16)
    n = g.shape[0]
    out = torch.nn.functional.grid_sample(volume[None, None].expand(n, 1, box, box, box),
                                          grid.view(n, box, box, box, 3), mode="bilinear",
                                          padding_mode="zeros", align_corners=True)[:, 0]
    return out.view(rotation.shape[:-2] + (box,) * 3)


# Below this margin between the two hands' scores a hand is reported as decided by a thin
# margin (a warning in the pipeline and the refinement).
THIN_HAND_MARGIN = 0.02


@dataclass(frozen=True)
class MapAlignment:
    """``moving`` rotated by ``rotation`` (mirrored first when ``mirror``) and shifted by
    ``shift_px`` (x, y, z) best matches ``fixed``: see :func:`rotate_volume`."""

    rotation: torch.Tensor  # (3, 3)
    mirror: bool
    shift_px: torch.Tensor  # (3,) x, y, z
    score: float  # masked correlation of the aligned low-passed maps
    other_hand_score: float  # the best score of the other hand
    hand_margin: float  # (score - other_hand_score) / |score|


def _shift_search(moving_ft: torch.Tensor, fixed_ft: torch.Tensor, box: int, limit_px: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """For volumes given as rfftn ``(C, D, D, D//2+1)`` and ``(D, D, D//2+1)``: the best circular
    shift of each moving volume (within ``limit_px``; to a fraction of a pixel by a parabola
    through the peak and its two neighbours along each axis) and its correlation there (the
    parabolas' peak: a score that does not jump with whole pixels, or a rotation search would
    turn the map to make up for the fraction)."""
    raw = torch.fft.irfftn(moving_ft.conj() * fixed_ft, s=(box,) * 3, dim=(-3, -2, -1))
    c = torch.fft.fftfreq(box, d=1.0 / box, device=raw.device)
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    window = (xx**2 + yy**2 + zz**2) <= limit_px**2
    cc = torch.where(window, raw, torch.full_like(raw, -torch.inf))
    best, flat = cc.reshape(cc.shape[0], -1).max(dim=1)
    peak = [flat // (box * box), (flat // box) % box, flat % box]  # z, y, x
    k = torch.arange(raw.shape[0], device=raw.device)
    frac = []
    for axis in range(3):
        lo, hi = list(peak), list(peak)
        lo[axis], hi[axis] = (peak[axis] - 1) % box, (peak[axis] + 1) % box
        a, b0, b = raw[k, lo[0], lo[1], lo[2]], raw[k, peak[0], peak[1], peak[2]], raw[k, hi[0], hi[1], hi[2]]
        curvature = a - 2 * b0 + b
        step = torch.where(curvature < 0, 0.5 * (a - b) / curvature.clamp(max=-1e-12), torch.zeros_like(a))
        step = step.clamp(-0.5, 0.5)
        best = best - 0.25 * (a - b) * step  # the parabola's value at its peak
        frac.append(step)
    z, y, x = (c[p] + f for p, f in zip(peak, frac))
    return best, torch.stack([x, y, z], dim=1)


# The coarse search of align_maps runs on a box of at most this size: a step of its grid (4608
# rotations, nearest neighbours a median 8 degrees apart) moves the rim of a particle that fills
# a 24 px box by ~1.4 px, so a finer box cannot tell its candidates apart much better, and the
# polish that decides runs on a finer box (below). Uncapped, a split at 8 Å on a 32 px box
# (refine.split_mixture) spent 20 of its 23 s resampling 9,216 rotated 32^3 maps.
ALIGN_COARSE_MAX_SIZE = 24
# The polish runs on a box this many times the one whose Nyquist is the alignment's resolution
# (the maps are low-passed to that resolution), at least ALIGN_POLISH_MIN_SIZE and at most the
# full box; the polished rotation's score and shift are then measured on the full box. Measured
# (box 64, 2.5 Å/px, 20 Å, the 3kpr_single map turned, shifted and mirrored; the six turns of a
# step scored in one batch): 3.1 s instead of 11.6 per alignment, the same hands, shifts and
# residuals. On fewer than 32 px it is not safe: 1ake at 25 Å polished on 20 px instead of 32
# came out up to 3° off (0.2-0.6° on 32 px).
ALIGN_POLISH_OVERSAMPLING = 2
ALIGN_POLISH_MIN_SIZE = 32


def align_maps(moving: torch.Tensor, fixed: torch.Tensor, pixel_size: float, resolution: float = 20.0,
               n_rotations: int = 4608, max_shift_px: float | None = None,
               generator: torch.Generator | None = None, allow_mirror: bool = True) -> MapAlignment:
    """The rotation, hand and translation that best put ``moving`` onto ``fixed``.

    Both maps are low-passed at ``resolution`` Å and resampled to a box where that is Nyquist
    (at most the original box, and at most :data:`ALIGN_COARSE_MAX_SIZE`); a grid of
    ``n_rotations`` rotations (uniform on SO(3)) is scored for each hand, the translation found
    by FFT cross-correlation for each rotation; the best are refined by a pattern search (steps
    of 4 down to 0.25 degrees) on a box :data:`ALIGN_POLISH_OVERSAMPLING` times finer than the
    resolution needs (see :data:`ALIGN_POLISH_MIN_SIZE`), and the result is scored and its shift
    found on the full box. Scores are correlations normalised by the norms (masked by a soft
    sphere)."""
    from .so3 import pattern_search, quat_to_rotmat, rotmat_distance, sample_uniform_quats

    box = fixed.shape[-1]
    g = generator or torch.Generator().manual_seed(0)
    band = 2 * round(box * pixel_size / resolution)  # the box whose Nyquist is the resolution
    small = int(min(box, ALIGN_COARSE_MAX_SIZE, max(16, band)))
    small -= small % 2
    fine = int(min(box, max(ALIGN_POLISH_MIN_SIZE, ALIGN_POLISH_OVERSAMPLING * band)))
    fine -= fine % 2
    limit = max_shift_px if max_shift_px is not None else box / 8

    def prepare(v: torch.Tensor, size: int) -> torch.Tensor:
        v = lowpass_volume(v.float(), min(0.5, pixel_size / resolution))
        v = fourier_resize_volume(v, size)
        mask = soft_sphere_mask(size, dtype=v.dtype).to(v.device)
        v = (v - v.mean()) * mask
        return v / v.norm().clamp_min(1e-12)

    fixed_s, moving_s = prepare(fixed, small), prepare(moving, small)
    fixed_ft = torch.fft.rfftn(fixed_s)
    grid = quat_to_rotmat(sample_uniform_quats(n_rotations, g, dtype=torch.float64)).float()
    # local polish of the best few coarse candidates of each hand on the fine box
    maps = {size: (prepare(moving, size), torch.fft.rfftn(prepare(fixed, size))) for size in {fine, box}}

    def score_of(r: torch.Tensor, mirror: bool, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(B,)`` and shifts ``(B, 3)`` (full-box px) of rotations ``r (B, 3, 3)``."""
        moving_f, fixed_fft = maps[size]
        v = rotate_volume(moving_f, r, mirror)
        s, sh = _shift_search(torch.fft.rfftn(v, dim=(-3, -2, -1)), fixed_fft, size, limit * size / box)
        return s, sh * (box / size)

    def polish(rot: torch.Tensor, mirror: bool) -> tuple[float, torch.Tensor, torch.Tensor]:
        """A pattern search (steps of 4 down to 0.25 degrees) on the fine box; then the score
        and the shift of the result on the full box."""
        rot, _ = pattern_search(lambda r: score_of(r, mirror, fine)[0], rot, 4.0, 0.125, left=True)
        s, sh = score_of(rot[None], mirror, box)
        return float(s[0]), rot, sh[0]

    best_by_hand: dict[bool, tuple[float, torch.Tensor, torch.Tensor]] = {}
    for mirror in ((False, True) if allow_mirror else (False,)):
        scores = []
        for lo in range(0, grid.shape[0], 64):
            rots = grid[lo:lo + 64]
            vols = rotate_volume(moving_s, rots, mirror)
            score, _ = _shift_search(torch.fft.rfftn(vols, dim=(-3, -2, -1)), fixed_ft, small, limit * small / box)
            scores.append(score)
        order = torch.argsort(torch.cat(scores), descending=True)
        picked: list[int] = []
        for k in order.tolist():  # the best few, at least 20 degrees apart
            if all(float(rotmat_distance(grid[k], grid[j])) > math.radians(20) for j in picked):
                picked.append(k)
            if len(picked) == 3:
                break
        best_by_hand[mirror] = max((polish(grid[k], mirror) for k in picked), key=lambda t: t[0])
    mirror = max(best_by_hand, key=lambda m: best_by_hand[m][0])
    best, rot, shift = best_by_hand[mirror]
    other = best_by_hand[not mirror][0] if allow_mirror else math.nan
    margin = (best - other) / abs(best) if allow_mirror else math.nan
    return MapAlignment(rot, mirror, shift, best, other, margin)


def align_onto(moving: torch.Tensor, fixed: torch.Tensor, pixel_size: float, resolution: float = 20.0
               ) -> tuple[torch.Tensor, MapAlignment]:
    """``moving`` put into ``fixed``'s frame and hand by :func:`align_maps` (rotation, hand and
    translation searched at ``resolution``), and the alignment."""
    al = align_maps(moving, fixed, pixel_size, resolution)
    return rotate_volume(moving, al.rotation, al.mirror, al.shift_px), al


def aligned_fsc(moving: torch.Tensor, fixed: torch.Tensor, pixel_size: float, resolution: float = 20.0
                ) -> tuple[np.ndarray, MapAlignment]:
    """FSC (soft-sphere mask) of ``moving`` put onto ``fixed`` (:func:`align_onto`), and the
    alignment: how alike two maps are whose frames and hands are unrelated (an ab initio map
    and the truth, two random starts)."""
    moved, al = align_onto(moving, fixed, pixel_size, resolution)
    return fsc(moved, fixed, soft_sphere_mask(fixed.shape[-1])), al
