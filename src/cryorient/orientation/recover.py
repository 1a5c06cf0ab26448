"""Orientation recovery: unit quaternions whose geodesic distances match target distances.

Minimises the seed's ``L_OR = mean over pairs (d_hat_ij - d(q_i, q_j))^2``. A plain fit from
random quaternions can stall in a wrong basin even with exact distances (bench/recover.py
measures it), so the fit starts from a multilateration instead:

1. anchors: a few dozen particles paired with every particle. A cluster of anchors lying
   within pi/2 of one of them is placed exactly by a spectral embedding of ``cos(d/2)`` (no
   sign ambiguity inside such a cluster); the others, closest first, one after another by a
   grid search over SO(3) against the anchors already placed, then refined;
2. every particle: grid search against all anchors (one matrix product per chunk), then a
   local refinement with the anchors fixed;
3. all particles: Adam on all pairs, quaternions renormalised every step, learning rate
   halved on plateaus, stop when it no longer improves.

Restarts use other anchors and grids; the lowest loss wins. The result is defined up to
O(4) acting on the quaternions (see :mod:`cryorient.orientation.ambiguity`).

With a point group G the targets are distances modulo the group, ``min_S d(R_i, S R_j)``, and
so is every distance here: each pair is measured to the mate of ``q_j`` nearest ``q_i``
(``s q_j`` for the group's quaternions ``s``), chosen anew at every step. The spectral seed
needs ``<q_a, q_b> = cos(d_ab / 2)``, which mates break; the start is then a joint fit of six
anchors from many random starts at once, whose best fits are each extended to all anchors,
the one that fits them all best kept (docs/model.md has the measurements). The result is
defined up to ``R_i -> N S_i R_i C`` (N in the group's normaliser, S_i in the group, C any
rotation): the transposed branch of C1 is no longer a symmetry of the distances.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import roma
import torch

from ..config import RecoveryConfig
from ..errors import CryorientError
from ..so3 import canonical_quat, geodesic_distance, normalize_quat, sample_uniform_quats
from ..symmetry import PointGroup, distance_modulo, group_left_matrices, mate_towards
from .pairs import PairSet

log = logging.getLogger(__name__)
GROUP_SEED = 6  # anchors placed jointly first under a point group (an exactly determined fit)
GROUP_SEED_STARTS = 2048  # random starts of that joint fit
GROUP_SEED_KEEP = 8  # its best fits, each extended to all anchors


@dataclass(frozen=True)
class RecoveryResult:
    quaternions: torch.Tensor  # (N, 4) canonical unit quaternions
    loss: float  # final L_OR (mean squared distance error over all pairs, rad^2)
    history: np.ndarray  # L_OR per refinement step of the winning restart
    restart_losses: list[float]
    init_loss: float  # L_OR after multilateration, before the global refinement


def residual_loss(res: torch.Tensor, opts: RecoveryConfig) -> torch.Tensor:
    if opts.loss == "huber":
        return torch.nn.functional.huber_loss(res, torch.zeros_like(res), delta=opts.huber_delta,
                                              reduction="mean")
    return (res * res).mean()


def pair_loss(q: torch.Tensor, pairs: PairSet, left: torch.Tensor | None = None) -> float:
    """The seed's L_OR: mean squared error of the distances over all pairs."""
    with torch.no_grad():
        total = 0.0
        for lo in range(0, len(pairs), 2_000_000):
            sl = slice(lo, lo + 2_000_000)
            d = distance_modulo(q[pairs.i[sl]], q[pairs.j[sl]], left)
            total += float(((pairs.d[sl] - d) ** 2).sum())
    return total / max(len(pairs), 1)


def anchor_targets(pairs: PairSet) -> torch.Tensor:
    """``(N, A)`` target distances to the anchors (NaN where the pair set has none)."""
    n, a = pairs.n, pairs.anchors.shape[0]
    col = torch.full((n,), -1, dtype=torch.int64)
    col[pairs.anchors] = torch.arange(a)
    t = torch.full((n, a), float("nan"))
    for src, dst in ((pairs.i, pairs.j), (pairs.j, pairs.i)):
        sel = col[dst] >= 0
        t[src[sel], col[dst[sel]]] = pairs.d[sel]
    t[pairs.anchors, torch.arange(a)] = 0.0
    return t


def _multilaterate(targets: torch.Tensor, anchor_q: torch.Tensor, grid: torch.Tensor,
                   left: torch.Tensor | None = None, chunk: int = 2048) -> torch.Tensor:
    """For each row of ``targets (n, A)`` (NaN = unknown), the grid quaternion minimising
    ``sum_a (t_a - d(g, anchor_a))^2``."""
    if left is None:
        dga = geodesic_distance(grid[:, None], anchor_q[None])  # (M, A)
    else:  # |<g, s q_a>| largest over the mates
        mates = torch.einsum("gij,aj->agi", left.to(anchor_q.dtype), anchor_q)  # (A, G, 4)
        dots = (grid @ mates.reshape(-1, 4).T).abs().reshape(grid.shape[0], *mates.shape[:2]).amax(-1)
        dga = 2 * torch.arccos(dots.clamp(max=1.0))
    out = torch.empty(targets.shape[0], 4)
    for lo in range(0, targets.shape[0], chunk):
        t = targets[lo:lo + chunk]
        m = torch.isfinite(t).float()
        t = torch.nan_to_num(t)
        cost = (m * t * t).sum(1, keepdim=True) - 2 * (m * t) @ dga.T + m @ (dga * dga).T
        out[lo:lo + chunk] = grid[cost.argmin(dim=1)]
    return out


# below this loss (pair distances fitted to 1e-4 rad RMS, 0.006°) there is nothing left worth
# fitting, so a step must gain FITTED_RATE (1%) rather than ``tol`` to go on: exact distances
# still converge to ~1e-14 in a few fast steps (tests/test_symmetry.py), while a stack whose
# distances were all consistent had crept from 3e-9 to 1.6e-9 over 1,343 steps of 0.05%
FITTED = 1e-8
FITTED_RATE = 1e-2


def _gauss_newton(q0: torch.Tensor, pi: torch.Tensor, pj: torch.Tensor, target: torch.Tensor,
                  iterations: int, relax: float = 0.5, fixed: torch.Tensor | None = None,
                  huber_delta: float | None = None, tol: float = 1e-4,
                  progress: Callable[[int], None] | None = None, left: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, list[float]]:
    """Damped block-Jacobi Gauss-Newton on pair distances (see :func:`refine_gauss_newton`).

    ``fixed`` marks quaternions that do not move; ``relax`` scales every step (0.5 when both
    ends of a pair move, 1 when one end is fixed). With a group (``left``), each pair is
    measured to the mate of ``q_j`` nearest ``q_i``: a right perturbation of ``q_j`` moves
    its mates alike, so the step is the same."""
    n = q0.shape[0]
    q = normalize_quat(q0.float())
    target = target.float()
    history: list[float] = []
    eye = torch.eye(3)
    for _ in range(iterations):
        rel = roma.quat_product(roma.quat_conjugation(q[pi]), mate_towards(q[pi], q[pj], left))
        rel = torch.where(rel[:, 3:] < 0, -rel, rel)
        s = rel[:, :3].norm(dim=1)
        e = 2 * torch.atan2(s, rel[:, 3]) - target
        if huber_delta is None:
            w = torch.ones_like(e)
            loss = float((e * e).mean())
        else:
            w = (huber_delta / e.abs().clamp_min(1e-12)).clamp(max=1.0)
            loss = float(torch.nn.functional.huber_loss(e, torch.zeros_like(e), delta=huber_delta))
        history.append(loss)
        if progress is not None:
            progress(1)
        rate = tol if loss > FITTED else FITTED_RATE
        if len(history) > 1 and history[-2] - loss <= rate * history[-2]:
            break
        # the axis of R_i^T R_j (undefined, and left out, for coincident orientations)
        a = torch.where((s > 1e-9)[:, None], rel[:, :3] / s.clamp_min(1e-12)[:, None], 0.0)
        h = (w[:, None, None] * a[:, :, None] * a[:, None, :]).reshape(-1, 9)
        g = (w * e)[:, None] * a
        hess = torch.zeros(n, 9).index_add_(0, pi, h).index_add_(0, pj, h).view(n, 3, 3)
        grad = torch.zeros(n, 3).index_add_(0, pi, g).index_add_(0, pj, -g)
        damping = 1e-3 * hess.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
        step = torch.linalg.solve(hess + damping[:, None, None] * eye, grad[..., None])[..., 0]
        if fixed is not None:
            step[fixed] = 0.0
        q = normalize_quat(roma.quat_product(q, roma.rotvec_to_unitquat(relax * step)))
    return q, history


def _refine_against(q: torch.Tensor, anchor_q: torch.Tensor, targets: torch.Tensor,
                    iterations: int = 12, left: torch.Tensor | None = None) -> torch.Tensor:
    """Refine each row of ``q`` against fixed anchors (rows are independent problems)."""
    n, a = targets.shape
    known = torch.isfinite(targets)
    rows, cols = torch.nonzero(known, as_tuple=True)
    allq = torch.cat([q, anchor_q])
    fixed = torch.zeros(n + a, dtype=torch.bool)
    fixed[n:] = True
    out, _ = _gauss_newton(allq, rows, cols + n, targets[known], iterations, relax=1.0, fixed=fixed, left=left)
    return out[:n]


def _spectral_cluster(dist: torch.Tensor) -> torch.Tensor:
    """Exact quaternions (up to O(4)) for points within pi/2 of one another's centre.

    If every rotation of a set lies within ``pi/2`` of a common centre, their quaternions can
    be chosen in one hemisphere, so ``<q_a, q_b> = cos(d_ab / 2) > 0`` for every pair: the
    matrix ``cos(d / 2)`` is then their Gram matrix (rank 4) and its top four eigenvectors
    give the quaternions. No local minima, no signs to guess."""
    gram = torch.cos(dist.double() / 2)
    vals, vecs = torch.linalg.eigh(gram)
    x = vecs[:, -4:] * vals[-4:].clamp_min(0).sqrt()
    q = normalize_quat(x).float()
    # gauge: the first point at the identity (q -> q_0^-1 q), hemisphere w >= 0
    return canonical_quat(roma.quat_product(roma.quat_conjugation(q[:1]), q))


def _seeds_modulo_group(targets: torch.Tensor, starts: torch.Tensor, left: torch.Tensor,
                        keep: int, iterations: int = 60) -> list[torch.Tensor]:
    """Candidate quaternions for a few anchors from their complete mutual distances modulo the
    group: ``R`` joint Gauss-Newton fits at once, from ``starts (R, k - 1, 4)`` (the first
    anchor held at the identity); the ``keep`` lowest losses, best first. With ``k = 6`` the
    fit is exactly determined, so several configurations fit and only the other anchors can
    tell which is right."""
    r, k = starts.shape[0], targets.shape[0]
    q0 = torch.cat([torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(r, 1, 4), starts], 1).reshape(-1, 4)
    i, j = torch.triu_indices(k, k, offset=1)
    offs = (torch.arange(r) * k)[:, None]
    pi, pj = (i[None] + offs).reshape(-1), (j[None] + offs).reshape(-1)
    fixed = torch.zeros(r * k, dtype=torch.bool)
    fixed[::k] = True
    q, _ = _gauss_newton(q0, pi, pj, targets[i, j].repeat(r), iterations, fixed=fixed, left=left,
                         tol=-math.inf)
    err = ((distance_modulo(q[pi], q[pj], left) - targets[i, j].repeat(r)) ** 2).view(r, -1).mean(1)
    return [q.view(r, k, 4)[o] for o in err.argsort()[:keep]]


def _extend(placed: dict[int, torch.Tensor], targets: torch.Tensor, grid: torch.Tensor,
            left: torch.Tensor | None) -> torch.Tensor:
    """Every anchor not yet ``placed``, closest first, by a grid search against all placed ones
    (at least five, so the solution is unique) and a refinement, with a joint refinement every
    8 anchors; all ``(A, 4)``."""
    a = targets.shape[0]
    t = torch.nan_to_num(targets, nan=math.pi)
    placed_idx = list(placed)
    remaining = [i for i in range(a) if i not in placed]
    count = len(placed_idx)
    while remaining:
        idx = torch.tensor(placed_idx)
        k = min(remaining, key=lambda r: float(t[r, idx].mean()))
        remaining.remove(k)
        qs = torch.stack([placed[i] for i in placed_idx])
        row = targets[k:k + 1, idx]
        g = _multilaterate(row, qs, grid, left)
        placed[k] = _refine_against(g, qs, row, left=left)[0]
        placed_idx.append(k)
        count += 1
        if count % 8 == 0 or not remaining:
            idx = torch.tensor(placed_idx)
            refined = _joint_refine(torch.stack([placed[i] for i in placed_idx]),
                                    targets[idx][:, idx], left=left)
            placed = dict(zip(placed_idx, refined))
    return torch.stack([placed[i] for i in range(a)])


def _place_anchors(targets: torch.Tensor, grid: torch.Tensor, radius: float = 1.45,
                   left: torch.Tensor | None = None) -> torch.Tensor:
    """Anchors among themselves (``targets (A, A)``, complete).

    Seed: the anchor with most others within ``radius`` and those others, placed exactly by
    :func:`_spectral_cluster`; then :func:`_extend`. With a group: the first ``GROUP_SEED``
    anchors (spread at random) by :func:`_seeds_modulo_group` from grid points, each of its
    ``GROUP_SEED_KEEP`` candidates extended, the lowest loss over all anchors kept."""
    a = targets.shape[0]
    t = torch.nan_to_num(targets, nan=math.pi)
    if left is not None:
        k = min(GROUP_SEED, a)
        n_starts = max(1, min(GROUP_SEED_STARTS, grid.shape[0] // (k - 1)))
        starts = grid[: n_starts * (k - 1)].reshape(n_starts, k - 1, 4)
        known = torch.isfinite(targets) & torch.triu(torch.ones_like(targets, dtype=torch.bool), 1)
        rows, cols = torch.nonzero(known, as_tuple=True)
        best = None
        for cand in _seeds_modulo_group(t[:k, :k], starts, left, GROUP_SEED_KEEP):
            q = _extend(dict(enumerate(cand)), targets, grid, left)
            loss = float(((distance_modulo(q[rows], q[cols], left) - targets[known]) ** 2).mean())
            if best is None or loss < best[0]:
                best = (loss, q)
        return best[1]
    near = t < radius
    centre = int(near.sum(1).argmax())
    seed = torch.nonzero(near[centre]).flatten()
    seed = torch.cat([torch.tensor([centre]), seed[seed != centre]])
    if seed.numel() < 5:  # too few neighbours: take the five closest (cos(d/2) still > 0)
        seed = torch.argsort(t[centre])[:5]
    return _extend({i: q for i, q in zip(seed.tolist(), _spectral_cluster(t[seed][:, seed]))}, targets, grid,
                   None)


def _joint_refine(q: torch.Tensor, targets: torch.Tensor, iterations: int = 20,
                  left: torch.Tensor | None = None) -> torch.Tensor:
    """Refine a small set against all its mutual targets, the first one held fixed."""
    known = torch.isfinite(targets) & torch.triu(torch.ones_like(targets, dtype=torch.bool), 1)
    rows, cols = torch.nonzero(known, as_tuple=True)
    fixed = torch.zeros(q.shape[0], dtype=torch.bool)
    fixed[0] = True
    out, _ = _gauss_newton(q, rows, cols, targets[known], iterations, fixed=fixed, left=left)
    return out


def initialise(pairs: PairSet, grid: torch.Tensor, anchors_order: torch.Tensor,
               left: torch.Tensor | None = None) -> torch.Tensor:
    """Multilateration: anchors placed first, then every particle against them."""
    targets = anchor_targets(pairs)[:, anchors_order]
    anchor_idx = pairs.anchors[anchors_order]
    anchor_q = _place_anchors(targets[anchor_idx], grid, left=left)
    q = _multilaterate(targets, anchor_q, grid, left)
    q = _refine_against(q, anchor_q, targets, left=left)
    q[anchor_idx] = anchor_q
    return q


def _selected(pairs: PairSet, opts: RecoveryConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if opts.cutoff is None:
        return pairs.i, pairs.j, pairs.d
    sel = pairs.d <= opts.cutoff
    return pairs.i[sel], pairs.j[sel], pairs.d[sel]


def refine_gauss_newton(q0: torch.Tensor, pairs: PairSet, opts: RecoveryConfig,
                        progress: Callable[[int], None] | None = None, left: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, list[float]]:
    """Damped block-Jacobi Gauss-Newton on all pairs (IRLS for the Huber loss).

    With ``M = R_i^T R_j = exp(theta a)``, right perturbations ``R_i exp(x_i)``, ``R_j exp(x_j)``
    change the distance by ``-a.x_i + a.x_j``: every particle solves its own 3x3 normal
    equations with its partners held fixed, and all particles move at once, each by half
    (both ends of a pair correct the same residual). Converges in tens of iterations where
    Adam needs hundreds (bench/recover.py).
    """
    pi, pj, pd = _selected(pairs, opts)
    delta = opts.huber_delta if opts.loss == "huber" else None
    return _gauss_newton(q0, pi, pj, pd, opts.max_steps, huber_delta=delta, progress=progress, left=left)


def refine_adam(q0: torch.Tensor, pairs: PairSet, opts: RecoveryConfig, generator: torch.Generator,
                progress: Callable[[int], None] | None = None, left: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[float]]:
    """Adam on all pairs with renormalised quaternions and plateau learning-rate halving."""
    pi, pj, pd = _selected(pairs, opts)
    p = q0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=opts.lr)
    lr, best, since, history = opts.lr, math.inf, 0, []
    n_sel = int(pi.shape[0])
    for _ in range(opts.max_steps):
        if n_sel > opts.batch_pairs:
            b = torch.randint(0, n_sel, (opts.batch_pairs,), generator=generator)
            bi, bj, bd = pi[b], pj[b], pd[b]
        else:
            bi, bj, bd = pi, pj, pd
        opt.zero_grad()
        loss = residual_loss(bd - distance_modulo(p[bi], p[bj], left), opts)
        loss.backward()
        opt.step()
        with torch.no_grad():
            p.copy_(normalize_quat(p))
        value = loss.item()
        history.append(value)
        if progress is not None:
            progress(1)
        if value < best * (1 - 1e-3):
            best, since = value, 0
        else:
            since += 1
        if since >= opts.patience:
            lr *= 0.5
            since = 0
            if lr < opts.min_lr:
                break
            for group in opt.param_groups:
                group["lr"] = lr
    return p.detach(), history


def recover(pairs: PairSet, opts: RecoveryConfig, generator: torch.Generator,
            progress: Callable[[int], None] | None = None, group: PointGroup | None = None) -> RecoveryResult:
    """Quaternions for ``pairs.n`` particles from the target distances of ``pairs`` (distances
    modulo ``group`` when it is given and not C1)."""
    if not torch.isfinite(pairs.d).all():
        raise CryorientError("target distances contain NaN or infinite values")
    if pairs.anchors.numel() < 4:
        raise CryorientError("recovery needs at least 4 anchor particles")
    left = group_left_matrices(group)
    best: tuple | None = None
    losses = []
    for r in range(opts.restarts):
        grid = sample_uniform_quats(opts.grid_size, generator)
        order = torch.randperm(pairs.anchors.shape[0], generator=generator)
        q0 = initialise(pairs, grid, order, left)
        init_loss = pair_loss(q0, pairs, left)
        if opts.optimizer == "adam":
            q, history = refine_adam(q0, pairs, opts, generator, progress, left)
        else:
            q, history = refine_gauss_newton(q0, pairs, opts, progress, left)
        loss = pair_loss(q, pairs, left)
        losses.append(loss)
        log.info("restart %d/%d: L_OR %.3g after multilateration, %.3g after %d steps",
                 r + 1, opts.restarts, init_loss, loss, len(history))
        if best is None or loss < best[0]:
            best = (loss, q, history, init_loss)
    loss, q, history, init_loss = best
    return RecoveryResult(canonical_quat(q), loss, np.asarray(history), losses, init_loss)
