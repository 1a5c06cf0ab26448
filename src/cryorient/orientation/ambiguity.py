"""Resolving what the distances cannot see, from the images alone.

Distances are unchanged by ``R_i -> A R_i B`` and ``R_i -> A R_i^T B`` (O(4) on quaternions);
the images only by ``A`` (a global rotation) and the hand. So the recovered set ``{R_i}`` is
``{G T_i C}`` with ``T_i`` the truth or its transpose and ``C`` unknown. We look for the branch
(transposed or not) and the right factor ``E`` that make the images self-consistent, scored
by **common lines**: the central sections of images i and j share the line along
``u = n_i x n_j`` (``n = R e_z``), found in image i at in-plane angle ``atan2(R_i^T u)``.

Lines are compared as Fourier *magnitudes* (shift-invariant, so unknown particle shifts do
not matter), CTF-corrected (Wiener) when the STAR carries CTF parameters, whitened by the
mean radial power and normalised. The score of a candidate is the sin-weighted mean
correlation over a few thousand image pairs. The search is coarse-to-fine: a table of
line-line correlations (4 deg) is looked up for a grid of ~10^4 candidates ``E`` in each
branch (views times in-plane turns, each view's turns read along the table's diagonals), then
the best few are refined by a pattern search on directly interpolated lines down to 0.02
deg. Candidates ``E`` and ``E Rz(pi)`` are the two hands and score alike; the reported margin
compares the winner with the best candidate that is neither (more than 15 deg from both).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import roma
import torch
import torch.nn.functional as F

from ..config import AmbiguityConfig
from ..ctf import CTFParams, ctf_rfft, subset
from ..fourier import fourier_resize
from ..imaging.align import half_maps, rotation_step
from ..imaging.batches import tensor_batches
from ..imaging.render import render
from ..imaging.translation import translation
from ..so3 import euler_to_rotmat, fibonacci_directions, pattern_search, rotmat_distance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AmbiguityResult:
    rotations: torch.Tensor  # (N, 3, 3) corrected: R_i E or R_i^T E
    transposed: bool
    right_factor: torch.Tensor  # E (3, 3)
    score: float  # refined common-lines score of the winner
    runner_up: float  # refined score of the best candidate that is neither winner nor twin
    margin: float  # (score - runner_up) / score
    coarse_z: float  # winner's coarse score in standard deviations above the candidates' mean
    polish_deg: float = 0.0  # correction of E by the reprojection polish

    def metrics(self) -> dict:
        return {"transposed": self.transposed, "score": self.score, "runner_up": self.runner_up,
                "margin": self.margin, "coarse_z": self.coarse_z, "polish_deg": self.polish_deg,
                "right_factor": self.right_factor.tolist()}


def polar_lines(images: torch.Tensor, n_angles: int, radii: torch.Tensor,
                ctf: CTFParams | None = None, pixel_size: float = 1.0) -> torch.Tensor:
    """Fourier magnitudes of images ``(B, D, D)`` on a polar grid: ``(B, n_angles, R)`` with
    angles ``k pi / n_angles`` (magnitudes are pi-periodic) and the given radii (px).
    With CTF parameters the magnitudes are Wiener-corrected: ``|F| |CTF| / (CTF^2 + 0.1)``."""
    box = images.shape[-1]
    centred = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(images.float(), dim=(-2, -1))),
                                 dim=(-2, -1))
    mag = centred.abs()
    if ctf is not None:
        c = ctf_rfft(ctf, box, pixel_size, full_centred=True)
        mag = mag * c.abs() / (c * c + 0.1)
    ang = torch.arange(n_angles, dtype=torch.float32) * math.pi / n_angles
    x = radii[None, :] * torch.cos(ang)[:, None]
    y = radii[None, :] * torch.sin(ang)[:, None]
    centre = box // 2
    grid = torch.stack([(x + centre) / (box - 1) * 2 - 1, (y + centre) / (box - 1) * 2 - 1], dim=-1)
    return F.grid_sample(mag[:, None], grid[None].expand(images.shape[0], -1, -1, -1),
                         mode="bilinear", align_corners=True)[:, 0]


def normalise_lines(lines: torch.Tensor) -> torch.Tensor:
    """Standardise every radius over all images and angles (zero mean, unit variance), so
    that the sum over radii of ``x_i(r) x_j(r)`` is a correlation with per-radius weights."""
    mean = lines.mean(dim=(0, 1), keepdim=True)
    std = lines.std(dim=(0, 1), keepdim=True).clamp_min(1e-12)
    x = (lines - mean) / std
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(x.shape[-1])


def relative_rotations(base: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor) -> torch.Tensor:
    """``R_i^T R_j`` of the pairs as ``(9, P)`` (row-major entries), what
    :func:`common_line_angles` needs for every right factor ``E`` of ``base @ E``."""
    return (base[pi].transpose(-1, -2) @ base[pj]).reshape(-1, 9).T.contiguous()


# The common line of a pair in terms of M = (R_i E)^T (R_j E) = E^T R_i^T R_j E: the pairs
# (a, b) of E's columns whose bilinear forms a.(R_i^T R_j) b give the entries M_ab it needs.
_LINE_ENTRIES = ((0, 2), (1, 2), (2, 0), (2, 1))


def common_line_angles(rel: torch.Tensor, cands: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """In-plane angles (mod pi) of the common line in images i and j, and ``|n_i x n_j|``, for
    orientations ``R @ E`` with ``E`` each of ``cands (C, 3, 3)`` and ``rel`` the pairs'
    :func:`relative_rotations`: each ``(C, P)``.

    With ``M = (R_i E)^T (R_j E)`` the common line ``n_i x n_j`` is ``(-M12, M02)`` in image i
    and ``(M21, -M20)`` in image j, and its length is ``|(M02, M12)|``: four entries of M,
    each a bilinear form ``e_a . (R_i^T R_j) e_b = <R_i^T R_j, e_a e_b^T>``, so one matrix
    product gives them for all candidates and pairs."""
    cols = cands.to(rel.dtype).transpose(-1, -2)  # rows: E's columns
    forms = torch.stack([(cols[:, a, :, None] * cols[:, b, None, :]).reshape(-1, 9)
                         for a, b in _LINE_ENTRIES], 1)  # (C, 4, 9)
    m02, m12, m20, m21 = (forms @ rel).unbind(1)
    ai = torch.remainder(torch.atan2(m02, -m12), math.pi)
    aj = torch.remainder(torch.atan2(-m20, m21), math.pi)
    return ai, aj, torch.hypot(m02, m12)


class LineTable:
    """Normalised lines ``(B, A, R)`` (:func:`normalise_lines`) arranged for interpolation: each
    row holds an image's line at one angle and the next angle's, so one lookup gives both ends."""

    def __init__(self, lines: torch.Tensor):
        self.n_angles, self.radii = lines.shape[1], lines.shape[2]
        self.rows = torch.cat([lines, lines.roll(-1, dims=1)], dim=-1).reshape(-1, 2 * self.radii)

    def at(self, img: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Lines of images ``img (P,)`` at continuous angles ``(..., P)`` (linear interpolation,
        period pi): ``(..., P, R)``."""
        pos = angle * (self.n_angles / math.pi)
        k0 = pos.floor()
        t = (pos - k0)[..., None]
        rows = img * self.n_angles + k0.long() % self.n_angles
        a, b = self.rows.index_select(0, rows.reshape(-1)).reshape(*rows.shape, -1).split(self.radii, dim=-1)
        return a + (b - a) * t


def score_direct(lines: LineTable, rel: torch.Tensor, cands: torch.Tensor, pi: torch.Tensor,
                 pj: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Common-lines scores ``(C,)`` of orientations ``R @ E``, ``E`` each of ``cands (C, 3, 3)``
    and ``rel`` the pairs' :func:`relative_rotations`: the ``|n_i x n_j|``-weighted mean over
    pairs of the radius-weighted line correlation."""
    ai, aj, s = common_line_angles(rel, cands)
    corr = (lines.at(pi, ai) * lines.at(pj, aj)) @ weights
    corr = corr / weights.sum().clamp_min(1e-12)
    return (s * corr).sum(-1) / s.sum(-1).clamp_min(1e-12)


def radius_weights(lines: LineTable, rel: torch.Tensor, e: torch.Tensor, pi: torch.Tensor,
                   pj: torch.Tensor) -> torch.Tensor:
    """Weights per radius from the common lines of the candidate ``E`` (see :func:`score_direct`):
    with ``rho(r)`` the mean product of the standardised lines at radius r (a correlation
    coefficient), weight ``rho / (1 - rho)`` (signal over noise; zero where no signal is
    measured)."""
    ai, aj, s = common_line_angles(rel, e[None])
    prod = lines.at(pi, ai[0]) * lines.at(pj, aj[0])  # (P, R)
    s = s[0]
    rho = ((s[:, None] * prod).sum(0) / s.sum().clamp_min(1e-12)).clamp(0.0, 0.95)
    return rho / (1 - rho)


def coarse_candidates(n_views: int, n_inplane: int) -> torch.Tensor:
    """Right factors ``E = V Rz(k pi / n_inplane)`` ``(n_views, n_inplane, 3, 3)``: ``n_views``
    rotations ``V`` whose third columns cover the sphere (:func:`so3.fibonacci_directions`), each
    turned in-plane over [0, pi) (``E`` and ``E Rz(pi)``, the two hands, score alike)."""
    rot, tilt = fibonacci_directions(n_views)
    views = euler_to_rotmat(rot, tilt, torch.zeros_like(rot))
    # euler_to_rotmat(rot, tilt, psi) = euler_to_rotmat(rot, tilt, 0) Rz(-psi)
    psi = -torch.arange(n_inplane, dtype=torch.float64) * (180.0 / n_inplane)
    inplane = euler_to_rotmat(torch.zeros_like(psi), torch.zeros_like(psi), psi)
    return (views[:, None] @ inplane[None]).float()


def table_diagonals(table: torch.Tensor) -> torch.Tensor:
    """The pairs' line correlations ``table (P, Lc, Lc)`` at ``Lc`` angles over [0, pi) by
    diagonal: ``(P Lc, 2 Lc)``, row ``p Lc + d`` holding ``table[p, a, a + d]`` for ``a`` over
    two periods (so that any ``Lc`` consecutive entries are contiguous)."""
    p, lc, _ = table.shape
    k = torch.arange(lc)
    return table[:, k[None, :], (k[None, :] + k[:, None]) % lc].repeat(1, 1, 2).reshape(p * lc, 2 * lc)


def _coarse_scores(diagonals: torch.Tensor, rel: torch.Tensor, cands: torch.Tensor, view_chunk: int = 64
                   ) -> torch.Tensor:
    """Scores ``(V, Lc)`` of :func:`coarse_candidates` ``cands (V, Lc, 3, 3)`` from the pairs'
    line correlations (:func:`table_diagonals`) and ``rel``, their
    :func:`relative_rotations`: each pair's nearest table entry (the coarse stage finds the
    basin).

    Turning ``E`` by ``Rz(psi)`` on the right turns the common line by ``psi`` in both images
    and keeps ``|n_i x n_j|``. So the angles ``(a, b)`` are computed once per view (``k = 0``),
    and its ``Lc`` in-plane candidates read a pair's table along the diagonal
    ``(a + k, b + k)``: entries ``a + k`` of the table's row of diagonals ``d = b - a``. The
    rows weighted by ``|n_i x n_j|`` are summed by ``a`` (a sparse matrix product), and
    candidate ``k`` sums entry ``a + k`` over ``a``."""
    lc = cands.shape[1]
    p = diagonals.shape[0] // lc
    k = torch.arange(lc)
    per_rad = lc / math.pi  # lines are pi-periodic: the nearest table entry is the angle's index mod lc
    out = []
    for lo in range(0, cands.shape[0], view_chunk):
        ai, aj, s = common_line_angles(rel, cands[lo:lo + view_chunk, 0])  # (v, P)
        a = torch.round(ai * per_rad).long() % lc
        b = torch.round(aj * per_rad).long() % lc
        v = a.shape[0]
        rows = (torch.arange(v)[:, None] * lc + a).reshape(-1)  # (view, a): where each pair's row is summed
        cols = (torch.arange(p) * lc + (b - a) % lc).expand(v, p).reshape(-1)
        order = torch.argsort(rows, stable=True)
        crow = torch.zeros(v * lc + 1, dtype=torch.long)
        crow[1:] = torch.bincount(rows, minlength=v * lc).cumsum(0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": its product is the one used here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            weights = torch.sparse_csr_tensor(crow, cols[order], s.reshape(-1)[order], (v * lc, p * lc),
                                              check_invariants=False)
            by_a = weights @ diagonals
        sums = by_a.view(v, lc, 2 * lc).gather(-1, (k[:, None] + k[None, :]).expand(v, lc, lc)).sum(1)
        out.append(sums / s.sum(1, keepdim=True).clamp_min(1e-12))
    return torch.cat(out)


def _random_pairs(m: int, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(n, m * (m - 1) // 2)
    pi = torch.randint(0, m, (2 * n + 16,), generator=generator)
    pj = torch.randint(0, m, (2 * n + 16,), generator=generator)
    keep = pi != pj
    return pi[keep][:n], pj[keep][:n]


def _distinct(cands: torch.Tensor, order: torch.Tensor, count: int, min_deg: float) -> list[int]:
    """The first ``count`` indices of ``order`` at least ``min_deg`` apart."""
    picked: list[int] = []
    for k in order.tolist():
        if all(float(rotmat_distance(cands[k], cands[p])) > math.radians(min_deg) for p in picked):
            picked.append(k)
            if len(picked) == count:
                break
    return picked


def resolve(rotations: torch.Tensor, images: torch.Tensor, opts: AmbiguityConfig,
            generator: torch.Generator, ctf: CTFParams | None = None, pixel_size: float = 1.0
            ) -> AmbiguityResult:
    """Choose the branch and right factor of ``rotations (N, 3, 3)`` from the images.

    ``images`` are the subset's images (``(M, D, D)``, M <= N) and ``rotations`` must be
    the corresponding recovered orientations *of those images first*: the caller passes the
    subset; the returned :class:`AmbiguityResult` holds ``E`` and the branch, which the caller
    applies to all particles with :func:`apply`.
    """
    m, box = images.shape[0], images.shape[-1]

    def lines_for(fraction: float, n_angles: int) -> torch.Tensor:
        radii = torch.arange(opts.radius_min, max(opts.radius_min + 4, fraction * box))
        return normalise_lines(polar_lines(images, n_angles, radii.float(), ctf, pixel_size))

    lines = LineTable(lines_for(opts.fine_radius_fraction, opts.n_angles))
    coarse = lines_for(opts.coarse_radius_fraction, opts.coarse_angles)
    pi, pj = _random_pairs(m, opts.n_pairs, generator)
    ci, cj = pi[: opts.coarse_pairs], pj[: opts.coarse_pairs]
    r_coarse = coarse.shape[-1]
    table = torch.cat([coarse[ci[k:k + 4096]] @ coarse[cj[k:k + 4096]].transpose(-1, -2)
                       for k in range(0, ci.shape[0], 4096)]) / r_coarse  # (P, Lc, Lc)
    grid = coarse_candidates(max(2, round(opts.n_candidates / opts.coarse_angles)), opts.coarse_angles)
    cands = grid.reshape(-1, 3, 3)
    flat_weights = torch.ones(lines.radii)
    # the pairs' R_i^T R_j in each branch (transposed: the rotations' transposes)
    rel = {t: relative_rotations(rotations.transpose(-1, -2) if t else rotations, pi, pj) for t in (False, True)}
    diagonals = table_diagonals(table)
    z_stats = []
    shortlist = []  # (score on all pairs, transposed, E)
    for transposed in (False, True):
        sc = _coarse_scores(diagonals, rel[transposed][:, :ci.shape[0]], grid).reshape(-1)
        z_stats.append(sc)
        top = _distinct(cands, torch.argsort(sc, descending=True), opts.rescore_top, 10.0)
        rescored = score_direct(lines, rel[transposed], cands[top], pi, pj, flat_weights)
        shortlist += [(float(v), transposed, cands[k]) for v, k in zip(rescored, top)]
    shortlist.sort(key=lambda r: -r[0])
    _, t0, e0 = shortlist[0]
    weights = radius_weights(lines, rel[t0], e0, pi, pj)
    if float(weights.sum()) <= 0:
        weights = flat_weights
    results = []
    for transposed in (False, True):
        mine = [r for r in shortlist if r[1] == transposed][: opts.refine_top]
        for _, _, c in mine:  # E = c exp(w): local maximisation of the direct score down to 0.02 deg
            e, s_ = pattern_search(partial(score_direct, lines, rel[transposed], pi=pi, pj=pj, weights=weights),
                                   c, 3.0, 0.02)
            results.append((s_, transposed, e))
    results.sort(key=lambda r: -r[0])
    best_s, best_t, best_e = results[0]
    twin = best_e @ roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, math.pi]))
    excl = math.radians(opts.twin_exclusion_deg)
    others = [s for s, t, e in results[1:]
              if t != best_t or (float(rotmat_distance(e, best_e)) > excl
                                 and float(rotmat_distance(e, twin)) > excl)]
    runner = max(others) if others else float("nan")
    all_sc = torch.cat(z_stats)
    z = float((all_sc.max() - all_sc.mean()) / all_sc.std().clamp_min(1e-12))
    margin = (best_s - runner) / abs(best_s) if others else float("nan")
    log.info("ambiguity: %s branch, common-lines score %.4f, runner-up %.4f (margin %.1f%%)",
             "transposed" if best_t else "direct", best_s, runner, 100 * margin)
    corrected = apply(rotations, best_t, best_e)
    return AmbiguityResult(corrected, best_t, best_e, best_s, runner, margin, z)


def apply(rotations: torch.Tensor, transposed: bool, right_factor: torch.Tensor) -> torch.Tensor:
    base = rotations.transpose(-1, -2) if transposed else rotations
    return base @ right_factor.to(rotations.dtype)


def refine_right_factor(rotations: torch.Tensor, images: torch.Tensor, generator: torch.Generator,
                        ctf: CTFParams | None = None, pixel_size: float = 1.0, size: int = 32,
                        rounds: int = 4, steps: int = 20, lr_deg: float = 0.5) -> torch.Tensor:
    """Polish the right factor by reprojection: the small rotation ``delta`` for which the
    images best match reprojections of the other half's reconstruction along ``R_i delta``.

    Common lines on noisy images place ``E`` within a few degrees; this uses all of each
    image (not only its lines) and the averaging of a reconstruction. Half sets keep an
    image out of the map it is compared with. Images are downsampled to ``size`` px, shifts
    re-estimated each round by cross-correlation. Returns ``delta`` (3, 3): use
    ``rotations @ delta``."""
    box = images.shape[-1]
    s = min(size, box - box % 2)
    imgs = fourier_resize(images.float(), s)
    px = pixel_size * box / s
    m = imgs.shape[0]
    perm = torch.randperm(m, generator=generator).numpy()
    halves = (perm[: m // 2], perm[m // 2:])
    which = np.zeros(m, dtype=np.int64)
    which[halves[0]] = 1  # each half is compared with the other half's map
    delta = torch.eye(3)
    origins = torch.zeros(m, 2)

    def read(idx: np.ndarray):
        return tensor_batches(imgs, ctf, m, idx)

    for _ in range(rounds):
        rot = rotations @ delta
        maps = half_maps(read, halves, rot, origins, px, s)
        for k, h in enumerate(halves):  # shifts against the other half's map
            ref = render(maps[1 - k], rot[h], None, subset(ctf, h), px)
            origins[h] = -translation(imgs[h], ref, s / 6)
        delta = delta @ rotation_step(imgs, ctf, maps, which, rot, origins, px, steps, lr_deg, shared=True)
    return delta
