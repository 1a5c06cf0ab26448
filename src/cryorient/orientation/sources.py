"""Distance sources, one interface: ``distances(i, j) -> radians`` for index pairs.

- ``true``: the geodesic distance between the ground-truth orientations (a baseline that
  reads the truth; the upper bound of what recovery can do);
- ``perturbed:S``: true + Gaussian noise of standard deviation S radians, drawn once per
  pair and, as in the seed, not clipped (clipping to [0, pi] would bias small and large
  distances). The seed re-drew the noise at every optimisation step, which averages it
  away; a fixed draw is the harder case;
- ``euclidean``: the seed's baseline, the Euclidean distance between (downsampled,
  standardised) images. It has no radian scale, so it is mapped monotonically onto radians
  by quantile matching: the k-th smallest image distance becomes the k-th quantile of the
  geodesic distance between uniformly random rotations, whose CDF is ``(d - sin d) / pi``;
- ``model[:PATH]``: the learned Siamese distance (:mod:`cryorient.distance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from ..config import parse_distance_source
from ..errors import CryorientError
from ..evaluation import Truth
from ..fourier import fourier_resize
from ..particles import ParticleStack
from ..so3 import rotmat_to_quat
from ..symmetry import PointGroup, distance_modulo, group_left_matrices


class DistanceSource(Protocol):
    name: str
    checked: bool  # distances must lie in [0, pi] (False only for the synthetic perturbation)

    def distances(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TrueDistances:
    quaternions: torch.Tensor  # (N, 4)
    group: PointGroup | None = None  # distances modulo the group
    name: str = "true"
    checked: bool = True

    def distances(self, i, j):
        return distance_modulo(self.quaternions[i], self.quaternions[j], group_left_matrices(self.group))


@dataclass(frozen=True)
class PerturbedDistances:
    quaternions: torch.Tensor
    sigma: float
    generator: torch.Generator
    group: PointGroup | None = None
    name: str = "perturbed"
    checked: bool = False

    def distances(self, i, j):
        d = distance_modulo(self.quaternions[i], self.quaternions[j], group_left_matrices(self.group))
        return d + self.sigma * torch.randn(d.shape, generator=self.generator, dtype=d.dtype)


def uniform_distance_quantile(u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF of the angle between two uniformly random rotations, ``(d - sin d)/pi``."""
    grid = torch.linspace(0, math.pi, 4097, dtype=torch.float64)
    cdf = (grid - torch.sin(grid)) / math.pi
    idx = torch.searchsorted(cdf, u.double().clamp(0, 1)).clamp(1, grid.numel() - 1)
    c0, c1 = cdf[idx - 1], cdf[idx]
    t = (u.double() - c0) / (c1 - c0).clamp_min(1e-15)
    return (grid[idx - 1] + t * (grid[idx] - grid[idx - 1])).float()


@dataclass(frozen=True)
class EuclideanDistances:
    features: torch.Tensor  # (N, F) standardised, downsampled images
    name: str = "euclidean"
    checked: bool = True

    def raw(self, i, j):
        return (self.features[i] - self.features[j]).norm(dim=-1)

    def distances(self, i, j):
        raw = torch.cat([self.raw(i[k:k + 65536], j[k:k + 65536]) for k in range(0, len(i), 65536)])
        ranks = torch.empty_like(raw)
        ranks[torch.argsort(raw)] = torch.arange(raw.numel(), dtype=raw.dtype)
        return uniform_distance_quantile((ranks + 0.5) / raw.numel())


def euclidean_features(stack: ParticleStack, size: int = 32, batch_size: int = 512) -> torch.Tensor:
    """Images downsampled (Fourier crop) to ``size`` px and standardised, flattened."""
    size = min(size, stack.box - stack.box % 2)
    feats = []
    for _, imgs in stack.images.batches(batch_size):
        small = fourier_resize(imgs, size) if size < stack.box else imgs
        small = (small - small.mean(dim=(-2, -1), keepdim=True)) / small.std(dim=(-2, -1), keepdim=True
                                                                            ).clamp_min(1e-12)
        feats.append(small.flatten(1))
    return torch.cat(feats)


def make_source(spec: str, stack: ParticleStack, generator: torch.Generator, truth: Truth | None = None,
                group: PointGroup | None = None) -> DistanceSource:
    """The distance source named by ``spec`` for ``stack`` (``model`` is built by
    :func:`cryorient.distance.predict.model_source`). ``true`` and ``perturbed`` are benchmark
    baselines: they read the truth, which the caller passes explicitly; with a point ``group``
    their distances are modulo the group."""
    kind, arg = parse_distance_source(spec)
    if kind in ("true", "perturbed"):
        if truth is None:
            raise CryorientError(f"{kind} distances need the true orientations, but the STAR file "
                                 "has no rlnAngleRot/Tilt/Psi columns")
        q = rotmat_to_quat(truth.rotations)
        return (TrueDistances(q, group) if kind == "true"
                else PerturbedDistances(q, float(arg), generator, group))
    if kind == "euclidean":
        return EuclideanDistances(euclidean_features(stack))
    raise CryorientError("model distances are computed by cryorient.distance (see 'cryorient distances')")
