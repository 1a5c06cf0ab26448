"""Which pairs of particles get a distance: all pairs for small N, or a fixed budget per
particle (shared anchors + random partners + optional nearest neighbours) so that memory and
time grow linearly with N. Anchors are what recovery's initialisation multilaterates from."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CryorientError

# The default budget of pair distances, in total: all pairs while they fit (N <= 3162), then
# PAIR_BUDGET / N per particle (N = 5000: 1000 each; 20k: 250; 100k: the floor of 64). Measured
# (bench/recover.py, perturbed:0.4 distances, N = 2000): 128 pairs per particle 4.49 deg, 1000
# pairs 1.63 deg; 5M pairs recover in ~30 s on two cores.
PAIR_BUDGET = 5_000_000
MIN_PAIRS_PER_PARTICLE = 64


@dataclass(frozen=True)
class PairSet:
    """Index pairs ``(i, j)`` (``i != j``) with target distances ``d`` in radians."""

    i: torch.Tensor  # (P,) int64
    j: torch.Tensor  # (P,) int64
    d: torch.Tensor  # (P,) float32
    n: int  # number of particles
    anchors: torch.Tensor  # (A,) int64: particles paired with every other particle

    def __len__(self) -> int:
        return int(self.i.shape[0])

    def with_distances(self, d: torch.Tensor) -> PairSet:
        return PairSet(self.i, self.j, d, self.n, self.anchors)


def check_distances(d: torch.Tensor, what: str = "distances") -> None:
    """Targets must be finite and in [0, pi]."""
    if not torch.isfinite(d).all():
        bad = int((~torch.isfinite(d)).sum())
        raise CryorientError(f"{bad} {what} are NaN or infinite; every pair needs a finite distance")
    if bool((d < 0).any()):
        raise CryorientError(f"{int((d < 0).sum())} {what} are negative; distances must be in [0, pi]")
    if bool((d > torch.pi + 1e-4).any()):
        raise CryorientError(f"{int((d > torch.pi + 1e-4).sum())} {what} exceed pi; distances are "
                             "geodesic angles in [0, pi] radians")


def choose_pairs(n: int, generator: torch.Generator, pairs_per_particle: int | None = None,
                 n_anchors: int = 48, neighbours: torch.Tensor | None = None) -> PairSet:
    """Pairs without distances (``d`` zeros) for ``n`` particles.

    ``pairs_per_particle=None`` means all pairs while they number at most ``PAIR_BUDGET``, else
    ``PAIR_BUDGET // n`` per particle (at least ``MIN_PAIRS_PER_PARTICLE``).
    A budget K gives each particle ``min(n_anchors, K // 2)`` anchor pairs, its neighbours
    (``neighbours (n, k)`` indices, if given) and random partners up to K.
    """
    if n < 3:
        raise CryorientError(f"orientation recovery needs at least 3 particles, got {n}")
    if pairs_per_particle is not None and pairs_per_particle < 1:
        raise CryorientError(f"pairs per particle must be >= 1, got {pairs_per_particle}")
    if pairs_per_particle is None and n * (n - 1) // 2 <= PAIR_BUDGET:
        i, j = torch.triu_indices(n, n, offset=1)
        anchors = torch.randperm(n, generator=generator)[: min(n_anchors, n)]
        return PairSet(i, j, torch.zeros(i.shape[0]), n, anchors)
    k = pairs_per_particle or max(MIN_PAIRS_PER_PARTICLE, PAIR_BUDGET // n)
    n_a = max(1, min(n_anchors, k // 2, n - 1))
    anchors = torch.randperm(n, generator=generator)[:n_a]
    ai = torch.arange(n).repeat_interleave(n_a)
    aj = anchors.repeat(n)
    parts_i, parts_j = [ai], [aj]
    if neighbours is not None:
        kn = min(neighbours.shape[1], max(0, k - n_a))
        parts_i.append(torch.arange(n).repeat_interleave(kn))
        parts_j.append(neighbours[:, :kn].reshape(-1))
    else:
        kn = 0
    n_rand = max(0, k - n_a - kn)
    if n_rand:
        parts_i.append(torch.arange(n).repeat_interleave(n_rand))
        parts_j.append(torch.randint(0, n, (n * n_rand,), generator=generator))
    i, j = torch.cat(parts_i), torch.cat(parts_j)
    keep = i != j
    i, j = i[keep], j[keep]
    # one copy per unordered pair
    lo, hi = torch.minimum(i, j), torch.maximum(i, j)
    key = torch.unique(lo * n + hi)
    return PairSet(key // n, key % n, torch.zeros(key.shape[0]), n, anchors)
