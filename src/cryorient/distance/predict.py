"""Using a trained distance model on a stack: embeddings (N encoder passes, in batches),
distances for any pairs from them, and nearest neighbours in the embedding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..imaging.batches import stack_batches
from ..particles import ParticleStack
from ..symmetry import PointGroup, point_group, symmetric_distance
from .model import SiameseDistance
from .preprocess import check_compatible, prepare_inputs
from .train import load_model
from .turns import consensus, most_probable_first, read_turned


@torch.no_grad()
def _over_stack(model: SiameseDistance, stack: ParticleStack, fn: Callable[[torch.Tensor], torch.Tensor],
                batch_size: int, progress: Callable[[int], None] | None) -> torch.Tensor:
    """``fn`` of every particle's network input (memory linear in N, images read in batches),
    computed on the model's device, returned on the CPU."""
    cfg = model.config
    check_compatible(stack.box, stack.pixel_size, cfg.input_size, cfg.input_pixel_size)
    device = next(model.parameters()).device
    out = []
    model.eval()
    for b in stack_batches(stack, batch_size, device=device):
        x = prepare_inputs(b.images, stack.pixel_size, b.ctf, cfg.input_size, cfg.input_pixel_size,
                           cfg.phase_flip)
        out.append(fn(x).cpu())
        if progress is not None:
            progress(len(b.indices))
    return torch.cat(out)


def embed_stack(model: SiameseDistance, stack: ParticleStack, batch_size: int = 512,
                progress: Callable[[int], None] | None = None, turns: int = 4,
                group: PointGroup | None = None) -> torch.Tensor:
    """Embeddings ``(N, E)`` of every particle: with the rotation head the :func:`consensus`
    pose of its ``turns`` quarter-turned readings (modulo ``group``), flattened; with the cosine
    head the embedding of the image as it is."""
    if model.config.head != "rotation":
        return _over_stack(model, stack, model.embed, batch_size, progress)
    return _over_stack(model, stack, lambda x: consensus(*read_turned(model, x, turns), group).reshape(-1, 9),
                       batch_size, progress)


def hypotheses_stack(model: SiameseDistance, stack: ParticleStack, batch_size: int = 512,
                     turns: int = 4, group: PointGroup | None = None) -> torch.Tensor:
    """Every particle's candidate poses ``(N, 1 + turns * K, 3, 3)`` (rotation head): first the
    :func:`consensus` of its ``turns`` quarter-turned readings (modulo ``group``), then all their
    K hypotheses each, the most probable first. The network's errors on the turned copies are
    partly independent: on 3kpr A+B (no CTF, K = 4, 32 px) the best of the 16 by the score against
    the reference is at 8.8° where the best of the 4 is at 12.4° (docs/model.md)."""
    def candidates(x: torch.Tensor) -> torch.Tensor:
        r, p = read_turned(model, x, turns)
        return torch.cat([consensus(r, p, group)[:, None], most_probable_first(r, p)], 1)
    return _over_stack(model, stack, candidates, batch_size, None)


@dataclass(frozen=True)
class ModelDistances:
    """The model's distances; with a point group (not C1) and the rotation head, between the
    nearest symmetry mates of the two pose estimates (the cosine head, trained on distances
    modulo the group, gives them directly)."""

    model: SiameseDistance
    embeddings: torch.Tensor
    group: PointGroup | None = None
    name: str = "model"
    checked: bool = True

    @torch.no_grad()
    def distances(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        a, b = self.embeddings[i], self.embeddings[j]
        if _mates_apply(self.model, self.group):
            return symmetric_distance(a.view(-1, 3, 3), b.view(-1, 3, 3), self.group)
        return self.model.distance(a, b).clamp(0.0, torch.pi)


def _mates_apply(model: SiameseDistance, group: PointGroup | None) -> bool:
    return group is not None and group.order > 1 and model.config.head == "rotation"


@torch.no_grad()
def nearest_neighbours(model: SiameseDistance, embeddings: torch.Tensor, k: int, chunk: int = 2048,
                       group: PointGroup | None = None) -> torch.Tensor:
    """``(N, k)`` indices of each particle's closest others by predicted distance.

    Both heads' distances decrease with the dot product of (normalised) embeddings (for the
    rotation head ``cos d = (e_i . e_j - 1) / 2``; with a point group, the largest over the
    mates ``S R_j``), so one matrix product per chunk suffices."""
    e = embeddings if model.config.head == "rotation" else torch.nn.functional.normalize(embeddings, dim=1)
    n = e.shape[0]
    k = min(k, n - 1)
    mates = None
    if _mates_apply(model, group):
        mates = (group.ops(e.dtype) @ e.view(n, 1, 3, 3)).reshape(n * group.order, 9)  # (N G, 9)
    out = torch.empty(n, k, dtype=torch.int64)
    for lo in range(0, n, chunk):
        if mates is None:
            sim = e[lo:lo + chunk] @ e.T
        else:
            sim = (e[lo:lo + chunk] @ mates.T).view(-1, n, group.order).amax(-1)
        sim[torch.arange(sim.shape[0]), torch.arange(lo, lo + sim.shape[0])] = -torch.inf
        out[lo:lo + chunk] = sim.topk(k, dim=1).indices
    return out


def model_source(stack: ParticleStack, path: str | Path, neighbours: int = 0, batch_size: int = 512,
                 progress: Callable[[int], None] | None = None, device=None, symmetry: str = "C1"
                 ) -> tuple[ModelDistances, torch.Tensor | None]:
    """The distance source of the model at ``path`` for ``stack`` (distances modulo the point
    group ``symmetry``) and, if asked, each particle's nearest neighbours in the embedding."""
    model = load_model(path).to(device)
    group = point_group(symmetry)
    emb = embed_stack(model, stack, batch_size, progress, group=group)
    nn = nearest_neighbours(model, emb, neighbours, group=group) if neighbours > 0 else None
    return ModelDistances(model, emb, group), nn
