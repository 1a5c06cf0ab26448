"""Global search: every particle scored against projections of a map on an orientation grid
(and a few translations), exhaustively, in batches. Local search: each particle scored against
its own neighbourhood of poses (a lattice of small rotations about its current pose).

Scores are normalised cross-correlations computed in Fourier space over a band of
frequencies (``0 < |k| <= cutoff``): for image ``X_i`` with CTF ``C_i``, projection ``P_m`` and
translation ``t``,

    score(i, m, t) = Re sum_k w_k conj(X_ik) C_ik S_tk P_mk / (||X_i|| ||C_i P_m||)

with ``S_t`` the phase ramp of ``t`` and ``w_k`` the Friedel weights of the rfft half-plane.
The numerator of all ``(i, t)`` against all ``m`` is one real matrix product, the CTF-weighted
norms ``||C_i P_m||^2 = sum_k C_ik^2 |P_mk|^2`` another: per-particle CTFs cost nothing extra.

The posterior over the grid under white Gaussian noise with the scale fitted is
``p(m, t) ~ exp(K ncc^2 / 2)`` (K: the number of real coefficients in the band); its maximum
is each particle's confidence (RELION's ``rlnMaxValueProbDistribution``): close to 1 when one
pose explains the image far better than any other, ``1 / (grid size)`` when none does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch

from ..ctf import CTFParams, ctf_rfft, subset
from ..fourier import phase_ramps, rfft2_centered, rfft_freqs_2d, shift_images
from ..imaging.projector import PreparedVolume, slice_values


@dataclass(frozen=True)
class SearchResult:
    rotations: torch.Tensor  # (N, 3, 3) best grid rotation
    shifts_px: torch.Tensor  # (N, 2) displacement (x, y) of the content (origin = -shift)
    scores: torch.Tensor  # (N,) best NCC
    confidence: torch.Tensor  # (N,) posterior mass of the best pose (see the module docstring)


def band(box: int, cutoff: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of the rfft grid with ``0 < |k| <= cutoff`` (cycles/px) and the Friedel weights."""
    ky, kx = rfft_freqs_2d(box, device=device)
    k2 = kx**2 + ky**2
    mask = (k2 > 0) & (k2 <= cutoff**2)
    weights = torch.where(kx[mask] == 0, 1.0, 2.0)
    return mask, weights


def shift_grid(max_px: float, step_px: float = 1.0) -> torch.Tensor:
    """Translations (x, y) on a square grid of ``step_px`` within the disc of ``max_px``."""
    r = math.floor(max_px / step_px)
    c = torch.arange(-r, r + 1, dtype=torch.float32) * step_px
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    return pts[pts.norm(dim=1) <= max_px + 1e-6]


def reference_spectra(prepared: PreparedVolume, rotations: torch.Tensor, mask: torch.Tensor,
                      batch: int = 2048) -> torch.Tensor:
    """Band coefficients ``(M, K)`` of the projections along ``rotations``."""
    out = [slice_values(prepared, rotations[k:k + batch].to(prepared.pairs.device), mask)
           for k in range(0, rotations.shape[0], batch)]
    return torch.cat(out)


@dataclass(frozen=True)
class BandReferences:
    """Reference band spectra laid out for :func:`score_poses`: ``[Re P, -Im P]`` and
    ``|P|^2``, made once for all the batches of images scored against them."""

    stacked: torch.Tensor  # (M, 2K) or (B, M, 2K)
    power: torch.Tensor  # (M, K) or (B, M, K)

    @classmethod
    def of(cls, refs: torch.Tensor) -> BandReferences:
        return cls(torch.cat([refs.real, -refs.imag], dim=-1), refs.abs() ** 2)


def score_poses(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float,
                refs: torch.Tensor | BandReferences, shifts: torch.Tensor, mask: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """NCC ``(B, T, M)`` of images ``(B, S, S)`` against reference band spectra at translations
    ``(T, 2)`` (the content displaced by ``t``): the same references for every image ``(M, K)``,
    or references of their own ``(B, M, K)`` (a local search)."""
    if not isinstance(refs, BandReferences):
        refs = BandReferences.of(refs)
    box = images.shape[-1]
    x = rfft2_centered(images.float())[:, mask]  # (B, K)
    c = (ctf_rfft(ctf, box, pixel_size, device=x.device)[:, mask] if ctf is not None
         else torch.ones(x.shape, device=x.device))
    x_norm = (weights * x.abs() ** 2).sum(-1).sqrt()  # (B,)
    ramps = phase_ramps(shifts, box, mask)  # (T, K)
    # A_bt = w conj(X_b) C_b S_t ; numerator = Re(A P^T)
    a = (weights * x.conj() * c)[:, None, :] * ramps[None]  # (B, T, K)
    wcc = weights * c * c  # (B, K)
    # Re(A P^T) as one real product: [Re A, Im A] . [Re P, -Im P]
    a2 = torch.cat([a.real, a.imag], dim=-1)  # (B, T, 2K)
    p2 = refs.stacked
    if p2.dim() == 2:
        num = (a2.reshape(-1, a2.shape[-1]) @ p2.T).view(images.shape[0], -1, p2.shape[0])
        den2 = wcc @ refs.power.T  # (B, M)
    else:
        num = a2 @ p2.transpose(1, 2)  # (B, T, M)
        den2 = (wcc[:, None, :] * refs.power).sum(-1)  # (B, M)
    den = (den2.sqrt() * x_norm[:, None]).clamp_min(1e-20)
    return num.div_(den[:, None, :])


def _best(scores: torch.Tensor, k_real: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of scores ``(B, T, M)``: the best translation and pose indices, the best score and its
    posterior mass (see the module docstring). Overwrites ``scores``."""
    flat = scores.view(scores.shape[0], -1)
    top, idx = flat.max(dim=1)
    m = scores.shape[-1]
    # the largest softmax entry of z = K ncc+^2 / 2 is 1 / sum exp(z - z_max); z_max is at the
    # top. In place (the scores of a global search are hundreds of MB), and clamped at -80 (a
    # term of e^-80 changes no sum of 1e9 of them in float32): below about -87 exp leaves its
    # vector path and runs ~15x slower (measured 60 against 900 M/s on one core)
    z_top = 0.5 * k_real * top.clamp_min(0) ** 2
    z = flat.clamp_min_(0).square_().mul_(0.5 * k_real).sub_(z_top[:, None]).clamp_min_(-80.0)
    conf = z.exp_().sum(1).reciprocal_()
    return idx // m, idx % m, top, conf


def global_search(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float, prepared: PreparedVolume,
                  grid: torch.Tensor, cutoff: float, max_shift_px: float, shift_step_px: float = 1.0,
                  origins_px: torch.Tensor | None = None, chunk: int = 128, deltas: torch.Tensor | None = None,
                  keep: int = 8) -> SearchResult:
    """The best grid pose of each image ``(N, S, S)`` against the map (``prepared`` at the same
    size and pixel size), with translations up to ``max_shift_px`` (see the module docstring)
    about the current ``origins_px`` (RELION origins in pixels; default none). The returned
    shifts are the total displacement of the content (the new origin is minus it).

    With ``deltas`` (a lattice of small rotations, :func:`local_grid`) the grid is a coarse
    one: each image's ``keep`` best grid rotations (each at its best translation) are searched
    again on their neighbourhoods ``R @ deltas``, and the best of those candidates wins (as
    RELION's adaptive oversampling, with a fixed number of coarse poses instead of a share of
    the posterior); the confidence is then the posterior over those candidates."""
    device = prepared.pairs.device
    box = images.shape[-1]
    mask, weights = band(box, cutoff, device)
    grid = grid.to(device)
    refs = BandReferences.of(reference_spectra(prepared, grid, mask))
    shifts = shift_grid(max_shift_px, shift_step_px).to(device)
    k_real = float(weights.sum())
    n = images.shape[0]
    out = SearchResult(torch.empty(n, 3, 3), torch.empty(n, 2), torch.empty(n), torch.empty(n))
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        batch = images[sl].to(device)
        if origins_px is not None:  # centre each particle where its current origin puts it
            batch = shift_images(batch, origins_px[sl].to(device))
        s = score_poses(batch, subset(ctf, sl), pixel_size, refs, shifts, mask, weights)
        if deltas is None:
            cand = grid.expand(batch.shape[0], -1, 3, 3)
        else:
            picks = s.amax(dim=1).topk(min(keep, grid.shape[0]), dim=1).indices  # (B, keep)
            cand = (grid[picks][:, :, None] @ deltas.to(device)[None, None]).flatten(1, 2)  # (B, keep J, 3, 3)
            fine = reference_spectra(prepared, cand.reshape(-1, 3, 3), mask).view(*cand.shape[:2], -1)
            s = score_poses(batch, subset(ctf, sl), pixel_size, fine, shifts, mask, weights)
        t, m, top, c = _best(s, k_real)
        out.rotations[sl] = cand[torch.arange(cand.shape[0], device=device), m].cpu()
        out.shifts_px[sl] = shifts[t].cpu() - (0 if origins_px is None else origins_px[sl].cpu())
        out.scores[sl] = top.cpu()
        out.confidence[sl] = c.cpu()
    return out


def local_grid(radius_deg: float, step_deg: float) -> torch.Tensor:
    """Small rotations ``exp(v)`` for the rotation vectors ``v`` of a cubic lattice of
    ``step_deg`` within the ball of ``radius_deg`` (the identity included)."""
    r = math.floor(radius_deg / step_deg + 1e-9)
    c = torch.arange(-r, r + 1, dtype=torch.float32) * math.radians(step_deg)
    v = torch.cartesian_prod(c, c, c)
    v = v[v.norm(dim=1) <= math.radians(radius_deg) + 1e-6]
    return roma.rotvec_to_rotmat(v)


def local_search(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float, prepared: PreparedVolume,
                 rotations: torch.Tensor, deltas: torch.Tensor, cutoff: float, max_shift_px: float,
                 shift_step_px: float = 1.0, origins_px: torch.Tensor | None = None,
                 chunk: int = 16) -> SearchResult:
    """The best pose of each image among its own candidates ``rotations[i] @ deltas[j]`` (a
    neighbourhood of its current pose, :func:`local_grid`) and the translations up to
    ``max_shift_px`` about ``origins_px``; scored as :func:`global_search` scores."""
    device = prepared.pairs.device
    box = images.shape[-1]
    mask, weights = band(box, cutoff, device)
    shifts = shift_grid(max_shift_px, shift_step_px).to(device)
    k_real = float(weights.sum())
    n, j = images.shape[0], deltas.shape[0]
    out = SearchResult(torch.empty(n, 3, 3), torch.empty(n, 2), torch.empty(n), torch.empty(n))
    deltas = deltas.to(device)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        cand = rotations[sl].to(device)[:, None] @ deltas[None]  # (B, J, 3, 3)
        refs = reference_spectra(prepared, cand.reshape(-1, 3, 3), mask).view(cand.shape[0], j, -1)
        batch = images[sl].to(device)
        if origins_px is not None:
            batch = shift_images(batch, origins_px[sl].to(device))
        t, m, top, c = _best(score_poses(batch, subset(ctf, sl), pixel_size, refs, shifts, mask, weights), k_real)
        out.rotations[sl] = cand[torch.arange(cand.shape[0], device=device), m].cpu()
        out.shifts_px[sl] = shifts[t].cpu() - (0 if origins_px is None else origins_px[sl].cpu())
        out.scores[sl] = top.cpu()
        out.confidence[sl] = c.cpu()
    return out
