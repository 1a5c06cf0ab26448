"""An initial map from the particles alone: stochastic expectation-maximisation.

The particles are shrunk to a small box (Nyquist just beyond ``final_resolution``) and the
map is started from the particles of a random subset inserted along random orientations (a
blob with random features: a perfectly round start gives every pose the same probability and
never breaks the symmetry). Then, for ``iterations`` rounds:

    E  a random batch of particles is scored against projections of the current map
       (low-passed at the current resolution, masked by a soft sphere) on an orientation
       grid and a few translations: the normalised cross-correlation of the global search;
       the posterior of each pose is ``exp(K ncc^2 / 2)`` normalised (white Gaussian noise
       with the scale fitted, K real coefficients in the band; see
       :mod:`cryorient.imaging.search`);
    M  each particle is inserted into the Fourier sums along its ``top_poses`` most probable
       poses, weighted by their probabilities; the running sums are first multiplied by
       ``memory`` (older batches fade); the map is the Wiener-filtered inversion of the sums.

The resolution is raised linearly from ``start_resolution`` to ``final_resolution`` over the
first 70% of the iterations. This is RELION's expectation-maximisation with stochastic
batches (its 2.x initial model), not stochastic gradient descent: the map is re-estimated
from the sums, never moved along a gradient.

``seeds`` independent runs are made; the one whose map explains a common set of particles
best (highest mean best correlation) is kept, and their pairwise agreement (FSC after
alignment, hand allowed) says whether the initial map can be trusted: maps from different
random starts that disagree mean the data did not decide the structure.

The map's frame and hand are arbitrary (no reference fixes them).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import AbInitioConfig
from ..ctf import subset
from ..fourier import fourier_resize, fourier_resize_volume
from ..imaging.accumulator import FourierAccumulator
from ..imaging.projector import prepare_volume
from ..imaging.search import BandReferences, band, reference_spectra, score_poses, shift_grid
from ..particles import ParticleStack
from ..so3 import grid as so3_grid
from ..so3 import sample_rotations
from ..volumes import aligned_fsc, lowpass_to_resolution, resolution_at, soft_sphere_mask

log = logging.getLogger(__name__)
AGREEMENT_RESOLUTION = 25.0  # Å: initial maps from different seeds must agree (FSC >= 0.5) to here
WIENER = 0.05  # few particles per voxel early on: a stronger filter than the reconstruction's


@dataclass(frozen=True)
class SeedRun:
    seed: int
    map: torch.Tensor  # (S, S, S) at the working size
    mean_score: float  # mean best NCC of the common particles against this map
    per_iteration: list = field(default_factory=list)  # (iteration, resolution Å, mean best NCC)


@dataclass(frozen=True)
class AbInitioResult:
    map: torch.Tensor  # (D, D, D) on the particles' grid, low-passed at the final resolution
    pixel_size: float
    working_size: int
    final_resolution: float
    seeds: list[SeedRun]
    chosen: int  # index into seeds
    agreement_angstrom: list  # (seed a, seed b, FSC 0.5 resolution of the aligned pair, Å)
    seconds: float

    @property
    def worst_agreement_angstrom(self) -> float | None:
        """The least similar pair of starts' maps (FSC 0.5, Å); None with a single start."""
        return max((r for _, _, r in self.agreement_angstrom), default=None)

    @property
    def agree(self) -> bool:
        """Every pair of seeds' maps agrees at FSC 0.5 to ``AGREEMENT_RESOLUTION`` or finer."""
        worst = self.worst_agreement_angstrom
        return worst is None or worst <= AGREEMENT_RESOLUTION

    def warnings(self) -> list[str]:
        if not self.agree:
            return [f"the initial maps from {len(self.seeds)} random starts disagree (the worst pair agrees only "
                    f"to {self.worst_agreement_angstrom:.0f} Å at FSC 0.5, where {AGREEMENT_RESOLUTION:.0f} Å is "
                    "needed): the particles did not decide the structure; do not trust the initial map or what is "
                    "refined from it"]
        return []


@dataclass(frozen=True)
class _Search:
    """What every expectation step scores against: the soft-sphere mask of the map, the
    orientation grid and the translations, at the working size."""

    mask: torch.Tensor
    grid: torch.Tensor
    shifts: torch.Tensor

    @classmethod
    def make(cls, size: int, cfg: AbInitioConfig, device) -> _Search:
        return cls(soft_sphere_mask(size, radius_px=cfg.mask_fraction * size / 2, edge_px=2).to(device),
                   so3_grid(cfg.grid_step_deg).to(device), shift_grid(cfg.max_shift_fraction * size).to(device))

    def spectra(self, vol: torch.Tensor, px_s: float, resolution: float):
        """Band coefficients of the masked map's projections on the grid, the band and its weights."""
        cutoff = min(0.5, px_s / resolution)
        prepared = prepare_volume(lowpass_to_resolution(vol, px_s, resolution) * self.mask)
        m, w = band(vol.shape[-1], cutoff, vol.device)
        return reference_spectra(prepared, self.grid, m), m, w


def working_size(box: int, pixel_size: float, resolution: float, minimum: int = 24) -> int:
    """An even box whose Nyquist (2 x its pixel size) is finer than ``resolution`` by 25%."""
    s = 2 * math.ceil(1.25 * box * pixel_size / resolution)
    return int(min(box, max(minimum, s)))


def ab_initio(stack: ParticleStack, cfg: AbInitioConfig, seed: int = 0, device=None,
              progress: Callable[[str], None] | None = None) -> AbInitioResult:
    """The initial map of ``stack`` (blind; the truth is never read) from ``cfg.seeds`` random starts."""
    t0 = time.perf_counter()
    box, px = stack.box, stack.pixel_size
    s = working_size(box, px, cfg.final_resolution)
    px_s = px * box / s
    images = torch.cat([fourier_resize(b, s) for _, b in stack.images.batches(2048)])
    images = (images / images.std()).to(device)
    ctf = stack.ctf()
    common = torch.randperm(stack.n, generator=torch.Generator().manual_seed(seed))[:min(stack.n, 500)]
    search = _Search.make(s, cfg, device)
    runs = []
    for k in range(cfg.seeds):
        g = torch.Generator().manual_seed(seed + 1000 * k)
        vol, history = _one_run(images, ctf, px_s, cfg, search, g, device, progress, k)
        score = _mean_best_score(images[common.to(images.device)], subset(ctf, common.numpy()), px_s, vol, cfg,
                                 search)
        runs.append(SeedRun(seed + 1000 * k, vol.cpu(), score, history))
        log.info("ab initio seed %d: mean best correlation %.4f", k, score)
    agreement = []
    for a, b in itertools.combinations(range(len(runs)), 2):
        curve, _ = aligned_fsc(runs[a].map, runs[b].map, px_s, resolution=AGREEMENT_RESOLUTION)
        agreement.append((a, b, round(resolution_at(curve, s, px_s, 0.5).angstrom, 2)))
    chosen = int(np.argmax([r.mean_score for r in runs]))
    full = fourier_resize_volume(runs[chosen].map, box) if s != box else runs[chosen].map
    full = lowpass_to_resolution(full, px, cfg.final_resolution)
    return AbInitioResult(full, px, s, cfg.final_resolution, runs, chosen, agreement,
                          time.perf_counter() - t0)


def _one_run(images: torch.Tensor, ctf, px_s: float, cfg: AbInitioConfig, search: _Search, g: torch.Generator,
             device, progress, k: int) -> tuple[torch.Tensor, list]:
    n, s = images.shape[0], images.shape[-1]
    grid, shifts = search.grid, search.shifts
    # the start: a random subset along random orientations
    first = torch.randperm(n, generator=g)[:min(n, cfg.batch_start)]
    acc = FourierAccumulator.empty(s, device=device)
    acc.insert(images[first.to(images.device)], sample_rotations(len(first), g).to(device), None,
               subset(ctf, first.numpy()), px_s)
    vol = acc.finalize(WIENER)
    history = []
    ramp = max(1, round(0.7 * cfg.iterations))
    for it in range(cfg.iterations):
        res = cfg.start_resolution + (cfg.final_resolution - cfg.start_resolution) * min(1.0, it / ramp)
        refs, m, w = search.spectra(vol, px_s, res)
        size = cfg.batch_start if it < cfg.iterations // 2 else cfg.batch_end
        idx = torch.randperm(n, generator=g)[:min(n, size)]
        batch, batch_ctf = images[idx.to(images.device)], subset(ctf, idx.numpy())
        scores = score_poses(batch, batch_ctf, px_s, refs, shifts, m, w).reshape(len(idx), -1)
        # the most probable poses (the posterior is monotone in the score), their probabilities
        # renormalised among them; poses below 1% of an image's best are dropped
        top, best = scores.topk(min(cfg.top_poses, scores.shape[1]), dim=1)
        weight = torch.softmax(0.5 * float(w.sum()) * top.clamp_min(0) ** 2, dim=1)
        keep = weight >= 0.01 * weight[:, :1]
        weight = weight / (weight * keep).sum(dim=1, keepdim=True)
        row, col = keep.nonzero(as_tuple=True)
        flat = best[row, col]
        t, r = flat // grid.shape[0], flat % grid.shape[0]
        row_np = row.cpu().numpy()
        step = FourierAccumulator.empty(s, device=device)
        step.insert(batch[row], grid[r], -shifts[t], subset(batch_ctf, row_np), px_s, weights=weight[row, col])
        acc.data.mul_(cfg.memory)
        acc = acc + step
        vol = acc.finalize(WIENER)
        mean_best = float(scores.max(dim=1).values.mean())
        history.append((it, round(res, 2), round(mean_best, 5)))
        if progress is not None and (it % 10 == 9 or it == cfg.iterations - 1):
            progress(f"ab initio seed {k}: iteration {it + 1}/{cfg.iterations} at {res:.1f} Å, "
                     f"mean best correlation {mean_best:.4f}")
    return vol, history


def _mean_best_score(images: torch.Tensor, ctf, px_s: float, vol: torch.Tensor, cfg: AbInitioConfig,
                     search: _Search) -> float:
    refs, m, w = search.spectra(vol.to(search.grid.device), px_s, cfg.final_resolution)
    refs = BandReferences.of(refs)
    best = []
    for lo in range(0, images.shape[0], 128):
        sl = slice(lo, lo + 128)
        sc = score_poses(images[sl], subset(ctf, sl), px_s, refs, search.shifts, m, w)
        best.append(sc.reshape(sc.shape[0], -1).max(dim=1).values)
    return float(torch.cat(best).mean())
