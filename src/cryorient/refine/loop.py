"""The gold-standard refinement loop: from a reference low-passed to a start resolution to
the particles' own structure, with two independent half sets.

    round r, half h (its particles, its own map V_h, never the other half's):
      map       V_h low-passed at the current resolution, resampled so that Nyquist sits just
                above it (the images too: the work shrinks with the resolution)
      proposals candidates for each particle's pose: its previous pose; the global search on an
                orientation grid (while the resolution is coarser than ``search_until_angstrom``;
                coarse to fine once its step is at most half the coarsest, :func:`search_grids`);
                with ``poses="network"``, a network trained (first round) or fine-tuned (later)
                on projections of that map made like the particles (each of its pose
                hypotheses a candidate), unless its validation says it cannot be trusted. The
                candidate that scores best against the map wins.
      local     rotations by gradient ascent of the NCC, translations by cross-correlation
    both halves: reconstruct each half map at full size; with a point group, a half that
                drifted into the other hand or a frame turned outside the group (a start
                pseudo-symmetric at its resolution) is turned back as a whole
                (:func:`reconcile_halves`), and in the last round of the global search a
                part of a half at the other solution is found by two classes at fixed
                poses and turned back (:func:`split_mixture`); the half maps' FSC at
                0.143 is the next round's resolution. The maps the next round aligns against spread each
                pose evenly over a 3 x 3 x 3 grid of poses about it (a local
                marginalisation, as RELION's expectation step: a map of hard poses holds
                each particle's own noise where it is and the poses stall).
    Stop when the resolution has not improved by 2% for ``stop_rounds`` rounds and the poses
    have settled.

Round 0 starts both halves from the same low-passed reference (as RELION does), or from a map
made from the particles alone and put in the reference's frame and hand (``start``: the
reference then shapes nothing but the frame, and the final map's agreement with it is a test
of whether the particles are what the reference says); from then on nothing of one half
reaches the other, but for the one discrete choice of :func:`reconcile_halves` with a point
group (which of two pseudo-symmetric solutions a whole half is in). The poses stay in the
reference's frame and hand: after an independent start the hand is checked again at the end,
on the final map (far clearer than the initial one), and if the other hand fits the
reference better the loop runs once more from the final map put in the reference's hand
(:func:`refine`). When the half maps do not agree beyond the start resolution after round 0
(or at the end), there is no signal at the reference's resolution: the loop stops and the
result says so instead of reporting a resolution (a noise stack aligned to a reference
reproduces the reference below the start resolution only, but later rounds, aligning against
that image, can push the agreement further round by round: :attr:`RefineResult.signal`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import roma
import torch

from ..config import RefineConfig
from ..conventions import hand_matrix
from ..ctf import CTFParams, subset
from ..fourier import fourier_resize, fourier_resize_volume, lowpass_images
from ..imaging.accumulator import FourierAccumulator, half_accumulators
from ..imaging.align import BandComparison, refine_poses
from ..imaging.batches import stack_batches
from ..imaging.projector import prepare_volume
from ..imaging.render import render
from ..imaging.search import global_search, local_grid
from ..imaging.translation import translation
from ..particles import ParticleStack
from ..so3 import grid as so3_grid
from ..so3 import rotmat_angle, rotmat_distance
from ..symmetry import PointGroup, asymmetric_unit, nearest_mates, symmetric_distance
from ..volumes import (
    THIN_HAND_MARGIN,
    MapAlignment,
    Resolution,
    align_maps,
    align_onto,
    corrected_fsc,
    fsc,
    lowpass_to_resolution,
    resolution_at,
    rotate_volume,
    shell_frequencies,
    soft_sphere_mask,
)

log = logging.getLogger(__name__)
SIGNAL_SHELLS = 3
# The end-of-run test that the half maps determine the same poses (RefineResult.poses_agree):
# this many particles of each half are searched against both half maps, at the final
# resolution or this one if coarser, on a grid no finer than this step, and the median angle
# between the two poses found must stay within this many grid steps.
CROSS_CHECK_PARTICLES = 100
CROSS_CHECK_ANGSTROM = 15.0
CROSS_CHECK_MIN_STEP_DEG = 10.0
CROSS_CHECK_STEPS = 3.0
# ... and while the median agrees, a share of the sample above this whose two poses lie more
# than CROSS_CHECK_STEPS steps apart is a part of the particles the halves place differently
# (RefineResult.poses_split). Measured (SNR 1/16, CTF, box 64): the D2 tetramer (N = 5000)
# and the ~100 kDa 3kpr_single complex (N = 2000, C1) 0%; the C4 ring of one chain (N = 5000)
# 33.5% (a third of one half at the ring's near-mirror pose, the other half clean;
# docs/benchmarks.md)
CROSS_CHECK_SPLIT_SHARE = 0.1
# With a start made from the particles alone, the final map must agree with the reference at
# least this well (lowest FSC up to ``initial_lowpass``, where the reference is trusted) for a
# resolution to be reported. Measured (3kpr_single, box 64 at 2.5 Å/px, SNR 1/16, the
# lowest shell up to 40 Å): the particles' own structure against references with a domain
# moved by 15 or 30 degrees, a chain missing, extra density or low-passed: 0.74-0.999 at
# N = 2000 and 5000; particles of another protein (1a28) against the 3kpr reference: 0.40 and
# 0.48 at N = 2000 but 0.536 at N = 5000 (a cleaner map of a globular protein of similar size
# agrees more at 40 Å), which passed the former 0.5; pure noise 0.18-0.21.
MATCH_FSC = 0.65
# The coarse-to-fine global search (search_grids): each image's this many best poses on a grid
# of twice the step are searched again on a lattice of the step about them
COARSE_KEEP = 8
# A start made from the particles is low-passed to this (or to ``initial_lowpass`` if finer),
# whatever the reference is trusted to: the ab initio map is good to about 18 Å. Started at
# 60 Å, because the reference was a 60 Å map, the loop lost its first rounds and settled at
# 10.8° (3kpr_single, N = 2000, SNR 1/16; bench/refine.py --start particles).
INDEPENDENT_START_LOWPASS = 40.0


@dataclass(frozen=True)
class Proposal:
    rotations: torch.Tensor | None  # (n, K, 3, 3) in the map's frame, K >= 1 hypotheses; None: no usable proposal
    val_median_deg: float  # the proposer's own validation (median pose error)
    weak: bool  # the validation says the proposals cannot be trusted
    consensus_median_deg: float | None = None  # its validation read as the stack is (the turns' consensus)


class PoseProposer(Protocol):
    """Who proposes poses for one half set in one round (``cryorient.distance.proposer``:
    a network trained on projections of the half's map)."""

    name: str

    def propose(self, particles: ParticleStack, volume: torch.Tensor, resolution: float, half: int,
                round_index: int) -> Proposal: ...


@dataclass(frozen=True)
class RoundRecord:
    round: int
    resolution_angstrom: float  # the resolution the maps were low-passed to for this round
    fsc_resolution_angstrom: float  # the half maps' FSC 0.143 after it
    size_px: int
    proposals: str  # the candidates and the share of particles each won, per half joined by /
    search_step_deg: float | None
    angular_change_deg: float  # median change of the poses from the previous round
    seconds: float
    network_val_median_deg: tuple | None = None
    network_consensus_median_deg: tuple | None = None  # per half: the validation read as the stack is


def _per_half(values: list) -> tuple | None:
    """A round's per-half proposer figures for rounds.csv (rounded), None if there are none."""
    if all(v is None for v in values):
        return None
    return tuple(None if v is None else round(float(v), 2) for v in values)


@dataclass(frozen=True)
class RefineResult:
    rotations: torch.Tensor  # (N, 3, 3) in the reference's frame
    origins_angstrom: torch.Tensor  # (N, 2)
    confidence: torch.Tensor  # (N,) posterior mass of the final pose among its neighbours
    half_maps: tuple[torch.Tensor, torch.Tensor]
    map: torch.Tensor  # both halves, low-passed at the final resolution
    fsc_halves: np.ndarray
    resolution: Resolution
    start_resolution: float
    pixel_size: float
    rounds: list[RoundRecord] = field(default_factory=list)
    fsc_reference: np.ndarray | None = None  # FSC(map, reference) (masked), shell by shell
    independent_start: bool = False  # round 0 began from a map of the particles alone, not the reference
    reference_resolution: float | None = None  # the reference is trusted to here (default: the start's)
    # median angle (°) between the poses a sample of particles finds against its own half map and
    # against the other half's, and the grid step of that search (RefineResult.poses_agree)
    cross_half_deg: float = math.nan
    cross_half_step_deg: float = math.nan
    cross_half_far_share: float = math.nan  # the share of that sample more than CROSS_CHECK_STEPS steps apart
    # after an independent start: the final map's hand check against the reference (margin
    # between the two hands' correlations; negative: the other hand still fits better), and
    # whether the loop ran again from the final map in the other hand
    hand_margin: float = math.nan
    hand_restarted: bool = False

    @property
    def reference_agreement(self) -> float:
        """The lowest FSC between the final map and the reference at the shells up to the
        start resolution (where the reference was trusted). From the reference itself it only
        says how far the particles moved the map from it: it does not separate particles of
        another protein from a reference with a moved domain (measured at box 32, 4 Å/px,
        start 25 Å, 400 particles at SNR 1: 0.77 for 1hvr particles and 0.59 for 1a28
        particles from a 1ake reference, against 0.79 for a 30-degree domain move at box 64).
        From an independent start the map owes the reference nothing, and this is the test of
        :attr:`matches_reference`."""
        if self.fsc_reference is None:
            return math.nan
        freqs = shell_frequencies(2 * (len(self.fsc_reference) - 1), self.pixel_size)
        return float(self.fsc_reference[(freqs > 0) & (freqs <= 1.0 / self.trusted_resolution)].min())

    @property
    def trusted_resolution(self) -> float:
        """How far the reference was trusted (Å): ``initial_lowpass``."""
        return self.reference_resolution or self.start_resolution

    @property
    def signal(self) -> bool:
        """The half maps agree clearly beyond the start resolution: their (mask-corrected) FSC
        stays above 0.143 at least ``SIGNAL_SHELLS`` Fourier shells beyond it, in the first
        round and at the end. Pure noise aligned to a reference gives half maps that agree up to
        the start and one or two shells beyond it after the first round (measured: 27.5 Å from a
        40 Å start at box 64 and 2.5 Å/px, where the shells beyond 40 Å are at 32, 26.7 and
        22.9 Å; 24.9 Å at box 32 and 3 Å/px; 21.7 Å from 25 Å at box 32 and 4 Å/px), against
        10-16 Å for particles at SNR 1/16. The first round is the test that noise cannot pass:
        its poses were chosen in the start's band alone, against one map both halves share, so
        what agrees beyond that band is the particles' own. Later rounds align against maps
        that noise aligned to the reference has shaped, and their agreement can climb round by
        round (the same 3 Å/px noise: 17.1 Å after ten rounds). The loop stops after a first
        round that fails the test."""
        box = 2 * (len(self.fsc_halves) - 1)
        first = self.rounds[0].fsc_resolution_angstrom if self.rounds else self.resolution.angstrom
        return all(agrees_beyond(a, self.start_resolution, box, self.pixel_size)
                   for a in (first, self.resolution.angstrom))

    @property
    def matches_reference(self) -> bool:
        """After an independent start: the particles' map agrees with the reference up to the
        resolution it is trusted to (:data:`MATCH_FSC`). From the reference itself: not tested
        (True)."""
        return not self.independent_start or self.reference_agreement >= MATCH_FSC

    @property
    def poses_agree(self) -> bool:
        """The two half maps determine the same poses: a sample of each half's particles,
        searched on one grid against its own half map and against the other half's, lands
        within ``CROSS_CHECK_STEPS`` grid steps (median). Half maps can agree while their
        poses are chosen by noise: both grew from the start they share, each pulling its
        particles to poses of its own (measured: 1ake, ~25 kDa, SNR 1/16, box 32 at 3 Å/px,
        N = 2000: half maps agreeing to 9.1 Å, poses 121° from the truth, and the two half
        maps' poses 133° apart at 15 Å on the 10° grid, against 0° (the same grid pose) for
        3kpr_single, ~100 kDa, at box 64; RELION 3.1 on the 1ake stack: 103°, and its warning
        that the particles cannot be aligned). RELION's own test, the expected angular accuracy
        (the rotation at which the likelihood ratio of two poses reaches 100, from the map and
        the noise), does not see this: on 1ake's agreeing half maps it gave 6-8°."""
        return not self.cross_half_deg > CROSS_CHECK_STEPS * self.cross_half_step_deg  # nan: not tested

    @property
    def poses_split(self) -> bool:
        """The half maps agree on most particles' poses (:attr:`poses_agree`) but put more than
        :data:`CROSS_CHECK_SPLIT_SHARE` of the sample more than ``CROSS_CHECK_STEPS`` grid
        steps apart: part of the particles sit at different poses in the two halves, and a half
        map can be a mixture of two views of them (measured: a C4 ring of one chain, nearly
        achiral at 10 Å, one half holding a third of its particles at the mirror-related pose,
        the median error 3.1° where the clean half reached 2.2°: 33.5%; 300 particles of 1ake at
        SNR 1 after two rounds from 25 Å, median error 13°: 18%). A warning, not a withheld
        resolution: the half maps still agree."""
        return self.poses_agree and self.cross_half_far_share > CROSS_CHECK_SPLIT_SHARE  # nan: not tested

    @property
    def reportable(self) -> bool:
        """A resolution is reported: the half maps agree beyond the start, determine the same
        poses, and (after an independent start) the map is the reference's object."""
        return self.signal and self.poses_agree and self.matches_reference

    def warnings(self) -> list[str]:
        out = []
        if not self.signal:
            out.append(f"the half maps do not agree beyond the starting resolution "
                       f"({self.start_resolution:.0f} Å): the data hold no signal at the reference's "
                       "resolution; no resolution is reported")
        if self.signal and not self.poses_agree:
            out.append(f"the two half maps do not determine the same poses (the same particles searched "
                       f"against each: median {self.cross_half_deg:.0f}° apart, grid step "
                       f"{self.cross_half_step_deg:.1f}°): the poses were chosen by noise and the half maps' "
                       "agreement is not a resolution; no resolution is reported. The particles are too "
                       "small or too noisy to align against this reference at this resolution")
        if self.signal and self.poses_split:
            out.append(f"the two half maps put {100 * self.cross_half_far_share:.0f}% of a sample of particles at "
                       f"poses more than {CROSS_CHECK_STEPS * self.cross_half_step_deg:.0f}° apart (the median "
                       "agrees): the data do not settle those particles' poses, and a half map may mix two "
                       "views of them (too few particles or rounds, or a particle that looks nearly the "
                       "same upside down or mirrored). Compare the two half maps before interpreting fine "
                       "detail")
        if self.hand_margin < THIN_HAND_MARGIN:  # nan: not checked
            out.append(f"the hand was decided by a thin margin ({100 * self.hand_margin:.1f}% between the two "
                       "hands' correlations of the final map with the reference): check the hand "
                       "(a helix's or a known feature's handedness) before interpreting the map")
        if not self.matches_reference:
            agreement = round(self.reference_agreement, 3)  # as the summary shows it
            out.append(f"the map made from the particles does not match the reference (lowest FSC "
                       f"{agreement:.2f} up to {self.trusted_resolution:.0f} Å, below {MATCH_FSC}): "
                       "the particles are not the reference's object (another protein, state or "
                       "preparation?); no resolution is reported: check the reference, or run without it")
        return out


def agrees_beyond(fsc_resolution: float, start: float, box: int, pixel_size: float) -> bool:
    """Half maps agreeing to ``fsc_resolution`` (Å) agree at least ``SIGNAL_SHELLS`` Fourier
    shells beyond ``start`` (Å)."""
    return 1.0 / fsc_resolution >= 1.0 / start + SIGNAL_SHELLS / (box * pixel_size)


def particle_radius(volume: torch.Tensor, fraction: float = 0.99) -> float:
    """Radius (px) about the centre holding ``fraction`` of the positive density."""
    box = volume.shape[-1]
    c = torch.arange(box, dtype=torch.float32) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).flatten()
    mass = volume.clamp_min(0).flatten().cpu()
    order = torch.argsort(r)
    cum = torch.cumsum(mass[order], 0)
    k = int(torch.searchsorted(cum, fraction * cum[-1]))
    return float(r[order][min(k, r.numel() - 1)])


def radius_of_gyration(volume: torch.Tensor, floor: float = 0.05) -> float:
    """RMS distance (px) from the centre of the density above ``floor`` x its maximum."""
    box = volume.shape[-1]
    c = torch.arange(box, dtype=torch.float32) - box // 2
    r2 = c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2
    v = volume.float().cpu()
    mass = torch.where(v > floor * v.max(), v, torch.zeros_like(v))
    return float(((mass * r2).sum() / mass.sum().clamp_min(1e-12)).sqrt())


def round_size(box: int, pixel_size: float, resolution: float, cfg: RefineConfig) -> int:
    """Even image size whose Nyquist is ``resolution / (2 x oversample)``, within [min, box]."""
    s = 2 * math.ceil(cfg.oversample * box * pixel_size / resolution)
    return int(min(box, max(cfg.min_size, s)))


def search_step(resolution: float, radius_angstrom: float, cfg: RefineConfig) -> float:
    """Angular step (degrees) that moves the particle's rim by about the resolution / 2."""
    step = math.degrees(resolution / (2 * radius_angstrom))
    return min(cfg.search_step_max_deg, max(cfg.search_step_min_deg, step))


def search_grids(step: float, cfg: RefineConfig, ops: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global search's grid for an angular ``step`` (degrees), and the lattice its best
    poses are searched again on (None: the grid is searched alone). A step at most half
    ``search_step_max_deg`` is searched coarse to fine: a grid of twice the step (never coarser
    than the first rounds'), then the 3 x 3 x 3 lattice of the step (:func:`local_deltas`) about
    each image's :data:`COARSE_KEEP` best coarse poses (:func:`global_search`). With a point
    group's ``ops`` (symmetric maps), the grid keeps one asymmetric unit, which holds every view,
    widened by a quarter of its own step."""
    coarse = 2 * step <= cfg.search_step_max_deg
    grid_step = 2 * step if coarse else step
    grid = so3_grid(grid_step)
    if ops is not None:
        grid = grid[asymmetric_unit(grid, ops, math.radians(grid_step / 4))]
    return grid, (local_deltas(step) if coarse else None)


def _score_pose(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float, prepared,
                rotations: torch.Tensor, origins_px: torch.Tensor, cutoff: float) -> torch.Tensor:
    """NCC of each image with its reprojection at the given pose (both low-passed), by
    :class:`~cryorient.imaging.align.BandComparison`."""
    n = images.shape[0]
    compare = BandComparison(lowpass_images(images, cutoff), ctf, origins_px, pixel_size, cutoff)
    out = torch.empty(n)
    with torch.no_grad():
        for lo in range(0, n, 1024):
            rows = torch.arange(lo, min(lo + 1024, n), device=images.device)
            out[lo:lo + len(rows)] = compare.ncc(prepared, rotations[rows], rows).cpu()
    return out


def local_confidence(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float, prepared,
                     rotations: torch.Tensor, origins_px: torch.Tensor, cutoff: float, step_deg: float
                     ) -> torch.Tensor:
    """Posterior mass of each pose against its 12 neighbours (rotations by +-step about each
    axis, twice), under the white-noise likelihood ``exp(K ncc^2 / 2)`` (K: the real degrees
    of freedom in the band, see :mod:`cryorient.imaging.search`)."""
    from ..imaging.search import band

    axes = torch.cat([torch.eye(3), -torch.eye(3)])
    deltas = torch.cat([torch.eye(3)[None], roma.rotvec_to_rotmat(axes * math.radians(step_deg)),
                        roma.rotvec_to_rotmat(axes * math.radians(2 * step_deg))])  # (13, 3, 3)
    _, weights = band(images.shape[-1], cutoff)
    k_real = float(weights.sum())
    scores = torch.stack([_score_pose(images, ctf, pixel_size, prepared, rotations @ d, origins_px, cutoff)
                          for d in deltas.to(rotations)], dim=1)
    return torch.softmax(0.5 * k_real * scores.clamp_min(0) ** 2, dim=1)[:, 0]


def local_deltas(step_deg: float) -> torch.Tensor:
    """The 27 rotations of a 3 x 3 x 3 grid of rotation vectors (in units of the step) about a
    pose, identity included: the search's lattice over the ball that holds the cube's corners."""
    return local_grid(math.sqrt(3) * step_deg, step_deg)


@dataclass
class _State:
    """Where the loop stands (the poses in Å, each half's current map, the resolution)."""

    rot: torch.Tensor
    origins: torch.Tensor
    maps: list
    res: float
    have_poses: bool = False
    round: int = 0


# The resolution at which a map of the particles is put in the reference's frame and hand. The
# hand lives in the finer detail: the true 3kpr_single map mirrored, rotated and low-passed to
# 18 Å (as an ab initio map), placed on references at box 64, 2.5 Å/px, picked the right hand
# by 1.9% (exact), 0.8% (a chain missing) and 1.7% (a domain moved by 30°) at 40 Å, and by
# 10.3%, 4.4% and 6.3% at 25 Å; on a reference low-passed to 60 Å it picked the wrong hand by
# 0.2% at 60 Å (a 60 Å map holds hardly any hand: the margin says so).
PLACEMENT_RESOLUTION = 25.0
# The resolution at which the final map's hand is checked against the reference (refine). At
# 25 Å even the true map of 3kpr chains A, B (~45 kDa, box 64 at 2 Å/px) picked the wrong hand
# against a reference lacking chain B (by 1.2%); at 15 Å the right one by 8.1% (10 Å: 15.8%).
# Margins of the right hand at 15 Å against references with chains moved by 30° or 5% extra
# density: 16.0% and 18.8%; against a reference low-passed to 60 Å: 0.0% (no hand to find).
HAND_CHECK_RESOLUTION = 15.0
# two half maps best aligned by a rotation this far (°) from every element of the point group,
# which raises their correlation by more than FRAME_TURN_GAIN, are in different frames
# (:func:`reconcile_halves`): far beyond the alignment's scatter, and a pseudo-symmetry turns
# by 60° or more
FRAME_TURN_DEG = 30.0
FRAME_TURN_GAIN = 0.01
# split_mixture: the resolution of its classes' comparison (the C4 ring's near-mirror is found
# in its map at 8 Å and finer; docs/benchmarks.md), the most iterations, and the smallest
# minority worth turning
SPLIT_ANGSTROM = 8.0
SPLIT_ITERATIONS = 12
SPLIT_MIN_SHARE = 0.05


def place_in_reference_frame(volume: torch.Tensor, reference: torch.Tensor, pixel_size: float
                             ) -> tuple[torch.Tensor, MapAlignment]:
    """``volume`` (a map of the particles alone, in a frame and hand of its own) rotated,
    mirrored and shifted onto ``reference`` at :data:`PLACEMENT_RESOLUTION`: the ``start`` of
    :func:`refine`. The alignment's ``hand_margin`` says how clearly the reference decided the
    hand."""
    return align_onto(volume, reference, pixel_size, resolution=PLACEMENT_RESOLUTION)


def first_map(reference: torch.Tensor, start: torch.Tensor | None, pixel_size: float, cfg: RefineConfig
              ) -> tuple[torch.Tensor, float]:
    """The map round 0 starts from and its resolution (Å): ``start`` (a placed map of the
    particles) low-passed to the finer of ``cfg.initial_lowpass`` and
    :data:`INDEPENDENT_START_LOWPASS`, or else the reference low-passed to ``cfg.initial_lowpass``."""
    if start is None:
        return lowpass_to_resolution(reference.float(), pixel_size, cfg.initial_lowpass), cfg.initial_lowpass
    resolution = min(cfg.initial_lowpass, INDEPENDENT_START_LOWPASS)
    return lowpass_to_resolution(start.float(), pixel_size, resolution), resolution


def refine(stack: ParticleStack, reference: torch.Tensor, cfg: RefineConfig,
           proposer: PoseProposer | None = None, device=None,
           progress: Callable[[str], None] | None = None,
           on_round: Callable[[int, torch.Tensor], None] | None = None,
           start: torch.Tensor | None = None) -> RefineResult:
    """Refine ``stack`` (blind, with half sets) from ``reference`` (a volume on the stack's grid,
    in the frame the poses are wanted in), or from ``start`` (a map made from the particles
    alone, already in the reference's frame and hand; the reference is then only compared
    with). Round 0's map is :func:`first_map`. ``proposer`` (when ``cfg.poses`` is ``network``)
    proposes poses each round; the global search stands in when it is weak. ``on_round(r,
    rotations)`` sees each round's poses (benchmarks judge them; the loop does not).

    With a point group (``cfg.symmetry``) the maps are symmetrised (each image inserted along
    all its mates) and the reference is symmetrised first; with ``cfg.relax_symmetry`` the
    loop then continues in C1, each particle choosing among its symmetry mates the one that
    best matches the (unsymmetrised) map of its half: RELION's symmetry relaxation, for
    pseudo-symmetric oligomers.

    After an independent start with signal, the final map is aligned onto the reference in both
    hands at a finer resolution than the start's placement (:func:`check_hand`): the start's
    hand was chosen at 25 Å on the initial map, which can be too coarse to tell (a ~45 kDa
    complex whose reference lacked a chain: 1.2% margin, the wrong hand, 3.09° and a map 15%
    behind the true-pose map at N = 5000); if the other hand fits better, the loop runs once
    more from the final map put in the reference's hand."""
    result = _refine_once(stack, reference, cfg, proposer, device, progress, on_round, start)
    if start is None or not result.signal:
        return result
    hand = check_hand(result.map, reference, stack.pixel_size, cfg.symmetry)
    restarted = False
    if hand.mirror:
        log.warning("the final map fits the reference better in the other hand (by %.1f%%): the initial map's "
                    "hand was wrong; refining again from the final map in the reference's hand",
                    100 * hand.hand_margin)
        if progress is not None:
            progress("the other hand fits the reference better: refining again from the final map in that hand")
        start = rotate_volume(result.map, hand.rotation, True, hand.shift_px)
        result = _refine_once(stack, reference, cfg, proposer, device, progress, on_round, start)
        restarted = True
        if not result.signal:
            return replace(result, hand_restarted=True)
        hand = check_hand(result.map, reference, stack.pixel_size, cfg.symmetry)
    margin = -hand.hand_margin if hand.mirror else hand.hand_margin
    log.info("the final map's hand against the reference: margin %.1f%%", 100 * margin)
    return replace(result, hand_margin=margin, hand_restarted=restarted)


def check_hand(volume: torch.Tensor, reference: torch.Tensor, pixel_size: float, symmetry: str = "C1"
               ) -> MapAlignment:
    """``volume`` (a map in the reference's frame) aligned onto ``reference`` in both hands at
    :data:`HAND_CHECK_RESOLUTION` (or Nyquist if coarser): ``mirror`` says the other hand fits
    better, ``hand_margin`` by how much."""
    from ..symmetry import point_group, symmetrise

    return align_maps(volume.float(), symmetrise(reference.float(), point_group(symmetry)), pixel_size,
                      resolution=max(HAND_CHECK_RESOLUTION, 2 * pixel_size))


def _correlation(a: torch.Tensor, b: torch.Tensor, pixel_size: float, resolution: float) -> float:
    """Masked correlation of two maps low-passed at ``resolution`` Å."""
    mask = soft_sphere_mask(a.shape[-1])
    a = lowpass_to_resolution(a.float(), pixel_size, resolution) * mask
    b = lowpass_to_resolution(b.float(), pixel_size, resolution) * mask
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def reconcile_halves(h1: torch.Tensor, h2: torch.Tensor, group: PointGroup, pixel_size: float,
                     resolution: float) -> tuple[int, torch.Tensor, float] | None:
    """Which half settled in a frame or hand turned from the other's, and the operation that
    brings it back (``(half, g, gain)``: the half's index 0 or 1, ``g`` a rotation or, for the
    other hand, a rotation times the mirror ``J``; see :func:`turn_poses`), or None.

    A symmetric start that is pseudo-symmetric at its resolution under operations outside its
    group (a flat C4 ring of one library chain: turned upside down it agrees with itself to
    FSC 0.96 at 43 Å and 0.03 at 26 Å, and it is nearly achiral at 40 Å) gives each half a
    mixture; each half then drifts to one solution on its own, and the halves can drift apart:
    the half maps disagree, the resolution stays coarse and the drifting half never settles
    (measured: half 2 of the C4 ring settled in the other hand, 13.9° overall where half 1
    reached 3.5°). As RELION joins the halves below 40 Å for the same reason in point-group
    refinements (``--low_resol_join_halves``), the halves are compared here, for one discrete
    choice: half 2's map is aligned onto half 1's at the round's resolution (either hand); the
    other hand, or a rotation farther than :data:`FRAME_TURN_DEG` from every element of the
    group, that raises their correlation by more than :data:`FRAME_TURN_GAIN` is such a drift.
    The half whose map is the more alike under that operation is turned: it holds more of a
    mixture of the two solutions (a map of one is unlike its turned self), and turned it joins
    the other half's majority. No particle's pose comes from the other half: a whole half is
    turned by one operation."""
    turn = _turn_between(h2, h1, group, pixel_size, resolution)
    if turn is None:
        return None
    a, g, gain = turn
    mixed = [_correlation(rotate_volume(h.float(), a.rotation, a.mirror), h, pixel_size, resolution) for h in (h1, h2)]
    return (1, g, gain) if mixed[1] >= mixed[0] else (0, torch.linalg.inv(g), gain)


def _turn_between(moving: torch.Tensor, fixed: torch.Tensor, group: PointGroup, pixel_size: float,
                  resolution: float) -> tuple[MapAlignment, torch.Tensor, float] | None:
    """``moving`` aligned onto ``fixed`` at ``resolution`` in either hand, when the best
    operation is the other hand or a rotation farther than :data:`FRAME_TURN_DEG` from every
    element of ``group`` and raises the maps' correlation by more than :data:`FRAME_TURN_GAIN`:
    the alignment, the operation ``g`` for :func:`turn_poses` (``V -> V(g^-1 x)``) and the gain;
    else None (the two maps are in the same frame and hand)."""
    a = align_maps(moving.float(), fixed.float(), pixel_size, resolution=resolution)
    if not a.mirror and math.degrees(float(symmetric_distance(torch.eye(3), a.rotation, group))) <= FRAME_TURN_DEG:
        return None
    turned = rotate_volume(moving.float(), a.rotation, a.mirror, a.shift_px)
    gain = _correlation(turned, fixed, pixel_size, resolution) - _correlation(moving, fixed, pixel_size, resolution)
    if gain <= FRAME_TURN_GAIN:
        return None
    return a, (a.rotation @ hand_matrix(a.rotation.dtype) if a.mirror else a.rotation), gain


def split_mixture(stack: ParticleStack, rotations: torch.Tensor, origins: torch.Tensor, group: PointGroup,
                  cfg: RefineConfig, seed: int, device=None) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """The particles of one half set (``stack``, its poses and origins in Å) that sit in a
    mirrored or turned copy of the half's structure, and the operation that brings them back:
    ``(minority, g, gain)`` (a boolean mask, ``g`` for :func:`turn_poses`, the classes' maps'
    correlation gain), or None.

    A start pseudo-symmetric at its resolution can leave a *part* of a half at the other
    solution (a flat C4 ring of one chain, nearly achiral at 40 Å: at N = 5000 a third of one
    half ended seen from the wrong side of the ring, self-consistent with its half map, which
    holds both; a whole half that drifted is :func:`reconcile_halves`' case). Two classes at
    fixed poses separate them: each particle goes to the class whose map (from the class's
    particles, symmetrised) its own pose fits better (NCC at :data:`SPLIT_ANGSTROM`), from a
    random half-and-half start, until no particle moves (measured on that ring's half: 95% of
    its particles classed as the truth would, from a random start, in 7 iterations). The
    smaller class is the other solution when its map, aligned onto the larger one's, needs the
    other hand or a turn outside the group (:func:`_turn_between`); a split of a pure half is a
    split of the noise, whose class maps align without a turn. Only this half's images and
    maps are used."""
    from ..imaging.accumulator import backproject
    from ..imaging.batches import tensor_batches

    box, px = stack.box, stack.pixel_size
    res = max(SPLIT_ANGSTROM, 2 * px)
    s = round_size(box, px, res, cfg)
    px_s = px * box / s
    cutoff = min(0.5, px_s / res)
    images = fourier_resize(stack.images.read(), s).to(device)
    ctf = stack.ctf()
    rot, org = rotations.to(device), (origins / px_s).to(device)
    ops = group.ops()

    def class_maps(label: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for members in (~label, label):
            rows = torch.nonzero(members).flatten().cpu().numpy()
            # the images already read and resized, not the stack again
            acc = backproject(tensor_batches(images, ctf, cfg.batch_size, rows), rot, org, px_s, s, device=device,
                              operators=ops)
            out.append(acc.finalize(cfg.wiener).cpu())
        return out

    label = torch.rand(stack.n, generator=torch.Generator().manual_seed(seed)) < 0.5
    for _ in range(SPLIT_ITERATIONS):
        maps = class_maps(label)
        scores = [_score_pose(images, ctf, px_s, prepare_volume(lowpass_to_resolution(m, px_s, res).to(device)), rot,
                              org, cutoff) for m in maps]
        new = scores[1] > scores[0]
        if bool((new == label).all()):
            break
        label = new
    else:  # not settled: the maps of the last classes
        maps = class_maps(label)
    minority = label if float(label.float().mean()) <= 0.5 else ~label
    if float(minority.float().mean()) < SPLIT_MIN_SHARE:
        return None
    major, minor = maps if minority is label else maps[::-1]  # maps: [~label, label]
    turn = _turn_between(minor, major, group, px_s, res)
    if turn is None:
        return None
    _, g, gain = turn
    return minority, g, gain


def turn_poses(rotations: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The poses of the same images for the map ``V(g^-1 x)`` (``g`` a rotation, or a rotation
    times the mirror ``J``): ``g R``, or ``g R J`` for the other hand (:func:`rotate_volume`)."""
    g = g.to(rotations)
    if torch.linalg.det(g) > 0:
        return g @ rotations
    return g @ rotations @ hand_matrix(rotations.dtype, rotations.device)


def _refine_once(stack: ParticleStack, reference: torch.Tensor, cfg: RefineConfig, proposer: PoseProposer | None,
                 device, progress: Callable[[str], None] | None, on_round: Callable[[int, torch.Tensor], None] | None,
                 start: torch.Tensor | None) -> RefineResult:
    """:func:`refine` from one start, without the final hand check."""
    from ..symmetry import point_group, symmetrise

    box, px = stack.box, stack.pixel_size
    group = point_group(cfg.symmetry)
    independent = start is not None
    start, first = first_map(reference, start, px, cfg)
    start = symmetrise(start, group)
    radius = particle_radius(start) * px
    gyration = radius_of_gyration(start) * px
    state = _State(torch.eye(3).repeat(stack.n, 1, 1), torch.zeros(stack.n, 2), [start, start], first)
    records: list[RoundRecord] = []
    ops = group.ops() if group.order > 1 else None
    state = _rounds(stack, state, cfg, cfg.max_rounds, radius, gyration, ops, None, proposer, device, progress,
                    on_round, records, group)
    if (cfg.relax_symmetry and group.order > 1 and records
            and agrees_beyond(records[0].fsc_resolution_angstrom, first, box, px)):
        # C1 half maps from one pose per particle, then mates compete against them
        state.maps = [a.finalize(cfg.wiener).cpu()
                      for a in _half_accumulators(stack, stack.half_sets(), state.rot, state.origins, cfg, device)]
        state = _rounds(stack, state, cfg, cfg.max_rounds, radius, gyration, None, group.ops(), proposer, device,
                        progress, on_round, records, group)
        ops = None
    # final: both halves, FSC, filtered map, confidence at the final sampling
    halves = stack.half_sets()
    acc1, acc2 = _half_accumulators(stack, halves, state.rot, state.origins, cfg, device, ops)
    h1, h2 = acc1.finalize(cfg.wiener).cpu(), acc2.finalize(cfg.wiener).cpu()
    curve = corrected_fsc(h1, h2, soft_sphere_mask(box))
    resolution = resolution_at(curve, box, px, 0.143)
    full = lowpass_to_resolution((acc1 + acc2).finalize(cfg.wiener).cpu(), px, resolution.angstrom)
    confidence = _confidence(stack, halves, [h1, h2], state.rot, state.origins, resolution.angstrom, radius, cfg,
                             device)
    agreement = fsc(full, symmetrise(reference.float(), group), soft_sphere_mask(box))
    result = RefineResult(state.rot, state.origins, confidence, (h1, h2), full, curve, resolution,
                          first, px, records, agreement, independent, cfg.initial_lowpass)
    if not result.signal:  # nothing to check
        return result
    if progress is not None:
        progress("checking that the two half maps determine the same poses")
    apart, step, far = _cross_half_poses(stack, halves, [h1, h2], state.origins, resolution.angstrom, radius, cfg,
                                         device, group if ops is not None else point_group("C1"))
    log.info("the half maps' poses for the same particles: median %.1f° apart (grid step %.1f°), %.0f%% more "
             "than %.0f° apart", apart, step, 100 * far, CROSS_CHECK_STEPS * step)
    return replace(result, cross_half_deg=apart, cross_half_step_deg=step, cross_half_far_share=far)


def _rounds(stack: ParticleStack, state: _State, cfg: RefineConfig, max_rounds: int, radius: float,
            gyration: float, ops: torch.Tensor | None, mates: torch.Tensor | None, proposer: PoseProposer | None,
            device, progress, on_round, records: list[RoundRecord], group: PointGroup) -> _State:
    """Rounds until convergence (see the module docstring). ``radius``, ``gyration``: the
    particle's radius and radius of gyration (Å) from the start map; ``ops``: the point group
    the maps are symmetrised with; ``mates``: symmetry operators whose mates ``S R`` compete as
    candidates (the relaxation); ``group``: the run's point group, also during the relaxation
    (:func:`reconcile_halves`)."""
    box, px = stack.box, stack.pixel_size
    halves = stack.half_sets()
    ctf = stack.ctf()
    best, since_best = math.inf, 0
    mask = soft_sphere_mask(box)
    for _ in range(max_rounds):
        r, res = state.round, state.res
        t0 = time.perf_counter()
        s = round_size(box, px, res, cfg)
        px_s = px * box / s
        cutoff = min(0.5, px_s / res)
        new_rot, new_origins = state.rot.clone(), state.origins.clone()
        proposals, val_medians, val_consensus, step = [], [], [], None
        for h, idx in enumerate(halves):
            images = fourier_resize(stack.images.read(idx), s).to(device)
            ctf_h = subset(ctf, idx)
            prepared = prepare_volume(fourier_resize_volume(
                lowpass_to_resolution(state.maps[h], px, res), s).to(device))
            t_idx = torch.as_tensor(idx)
            r_h, o_h = state.rot[t_idx].to(device), (state.origins[t_idx] / px_s).to(device)
            candidates: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            if state.have_poses:
                candidates["previous"] = (r_h, o_h)
            if mates is not None:
                for k, op in enumerate(mates[1:].to(r_h)):
                    candidates[f"mate {k + 1}"] = (op @ r_h, o_h)
            elif not state.have_poses or res > cfg.search_until_angstrom:
                step = search_step(res, radius, cfg)
                # the first search looks for the particles' offsets too; later ones around the
                # current origins
                window = cfg.max_shift_fraction * s if not state.have_poses else 1.5
                # a step at most half the coarsest: a grid of twice the step, then each image's
                # best coarse poses on a lattice of the step about them (search_grids)
                grid, deltas = search_grids(step, cfg, ops)
                found = global_search(images, ctf_h, px_s, prepared, grid, cutoff, window,
                                      origins_px=o_h if state.have_poses else None, deltas=deltas,
                                      keep=COARSE_KEEP)
                candidates["search"] = (found.rotations.to(device), -found.shifts_px.to(device))
            if cfg.poses == "network" and proposer is not None and mates is None:
                prop = proposer.propose(stack.subset(idx), lowpass_to_resolution(state.maps[h], px, res), res, h, r)
                val_medians.append(prop.val_median_deg)
                val_consensus.append(prop.consensus_median_deg)
                if not prop.weak and prop.rotations is not None:
                    for k, r_net in enumerate(prop.rotations.to(device).unbind(1)):
                        # the network gives rotations; the offsets: the current ones, or (first
                        # round) the cross-correlation peak against the reprojections
                        o_net = o_h if state.have_poses else _offsets(images, ctf_h, px_s, prepared, r_net, cutoff,
                                                                      cfg.max_shift_fraction * s)
                        candidates["network" if k == 0 else f"network {k + 1}"] = (r_net, o_net)
            (r_h, o_h), shares = _best_candidates(images, ctf_h, px_s, prepared, cutoff, candidates)
            network = [k for k in shares if k.startswith("network")]  # the network's hypotheses, as one
            if network:
                shares = {k: v for k, v in shares.items() if k not in network} | {
                    "network": sum(shares[k] for k in network)}
            how = " + ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())
            if cfg.local_steps > 0:
                r_h, o_h = refine_poses(images, ctf_h, px_s, prepared, r_h, o_h, cutoff, cfg.local_steps)
            new_rot[t_idx], new_origins[t_idx] = r_h.cpu(), (o_h * px_s).cpu()
            proposals.append(how)
            if progress is not None:
                progress(f"round {r}, half {h + 1}: {how}")
        change = float(torch.rad2deg(rotmat_distance(new_rot, state.rot).median())) if state.have_poses else math.nan
        state.rot, state.origins, state.have_poses = new_rot, new_origins, True
        if on_round is not None:
            on_round(r, state.rot)
        accs = _half_accumulators(stack, halves, state.rot, state.origins, cfg, device, ops)
        h1, h2 = (a.finalize(cfg.wiener).cpu() for a in accs)
        drift = reconcile_halves(h1, h2, group, px, res) if group.order > 1 else None
        if drift is not None:
            h, g, gain = drift
            t_idx = torch.as_tensor(halves[h])
            state.rot[t_idx] = turn_poses(state.rot[t_idx], g)
            what = "the other hand" if torch.linalg.det(g) < 0 else "a frame turned from the other half's"
            log.warning("round %d: half %d had drifted into %s (the start is pseudo-symmetric at its resolution); "
                        "its poses were turned back (correlation +%.3f)", r, h + 1, what, gain)
            proposals[h] += " (turned back)"
            accs = _half_accumulators(stack, halves, state.rot, state.origins, cfg, device, ops)
            h1, h2 = (a.finalize(cfg.wiener).cpu() for a in accs)
        resolution = resolution_at(corrected_fsc(h1, h2, mask), box, px, 0.143)
        if (ops is not None and step is not None and res / cfg.max_gain <= cfg.search_until_angstrom
                and resolution.angstrom <= SPLIT_ANGSTROM):
            # the last round of the global search, and maps fine enough to tell the solutions
            # of a pseudo-symmetric start apart: is part of a half at the other one?
            turned = False
            for h, idx in enumerate(halves):
                t_idx = torch.as_tensor(idx)
                split = split_mixture(stack.subset(idx), state.rot[t_idx], state.origins[t_idx], group, cfg,
                                      seed=100 * r + h, device=device)
                if split is None:
                    continue
                minority, g, gain = split
                rows = t_idx[minority.cpu()]
                state.rot[rows] = turn_poses(state.rot[rows], g)
                share = float(minority.float().mean())
                log.warning("round %d: %.0f%% of half %d's particles sat at %s of the rest (a pseudo-symmetric "
                            "start); their poses were turned back (class maps' correlation +%.3f)", r, 100 * share,
                            h + 1, "the other hand" if torch.linalg.det(g) < 0 else "a turned copy", gain)
                proposals[h] += f" ({100 * share:.0f}% turned back)"
                turned = True
            if turned:
                accs = _half_accumulators(stack, halves, state.rot, state.origins, cfg, device, ops)
                h1, h2 = (a.finalize(cfg.wiener).cpu() for a in accs)
                resolution = resolution_at(corrected_fsc(h1, h2, mask), box, px, 0.143)
        # the resolution is that of the maps of the poses themselves; the next round aligns
        # against maps with each pose spread over its neighbourhood (RefineConfig.spread_max_deg)
        spread_step = min(math.degrees(res / (3 * gyration)), cfg.spread_max_deg)
        state.maps = [h1, h2] if spread_step <= 0 else [
            a.rotation_averaged(local_deltas(spread_step)).finalize(cfg.wiener).cpu() for a in accs]
        records.append(RoundRecord(r, res, resolution.angstrom, s, "/".join(proposals), step, change,
                                   time.perf_counter() - t0, _per_half(val_medians), _per_half(val_consensus)))
        log.info("round %d: aligned at %.1f Å (%d px, %s), half maps %.2f Å, median change %.1f°, %.0f s",
                 r, res, s, records[-1].proposals, resolution.angstrom, change, records[-1].seconds)
        state.round += 1
        if len(records) == 1 and not agrees_beyond(resolution.angstrom, res, box, px):
            # noise aligned to the start map: later rounds would only sharpen the reference's
            # image in it (RefineResult.signal)
            log.warning("round 0: the half maps agree to %.1f Å, not beyond the start (%.0f Å): the data hold "
                        "no signal at the reference's resolution; stopping", resolution.angstrom, res)
            break
        if resolution.angstrom < 0.98 * best:
            best, since_best = resolution.angstrom, 0
        else:
            since_best += 1
        # the next round aligns at the half maps' resolution, but at most ``max_gain`` finer than
        # this one: a resolution raised too fast leaves poses outside the basin of the finer map
        state.res = max(resolution.angstrom, res / cfg.max_gain, 2 * px)
        if since_best >= cfg.stop_rounds and change < cfg.converged_deg:
            break
    return state


def _half_accumulators(stack: ParticleStack, halves, rot: torch.Tensor, origins: torch.Tensor, cfg: RefineConfig,
                       device, ops: torch.Tensor | None = None) -> tuple[FourierAccumulator, FourierAccumulator]:
    px = stack.pixel_size
    return half_accumulators(lambda i: stack_batches(stack, cfg.batch_size, i, device=device), halves,
                             rot.to(device), (origins / px).to(device), px, stack.box, device=device, operators=ops)


def _confidence(stack: ParticleStack, halves, maps, rot, origins, resolution: float, radius: float,
                cfg: RefineConfig, device) -> torch.Tensor:
    box, px = stack.box, stack.pixel_size
    res = max(resolution, 2 * px)
    s = round_size(box, px, res, cfg)
    px_s = px * box / s
    cutoff = min(0.5, px_s / res)
    step = math.degrees(res / (2 * radius))
    out = torch.empty(stack.n)
    for h, idx in enumerate(halves):
        t_idx = torch.as_tensor(idx)
        images = fourier_resize(stack.images.read(idx), s).to(device)
        prepared = prepare_volume(fourier_resize_volume(
            lowpass_to_resolution(maps[h], px, res), s).to(device))
        out[t_idx] = local_confidence(images, subset(stack.ctf(), idx), px_s, prepared, rot[t_idx].to(device),
                                      (origins[t_idx] / px_s).to(device), cutoff, step)
    return out


def _cross_half_poses(stack: ParticleStack, halves, maps, origins: torch.Tensor, resolution: float, radius: float,
                      cfg: RefineConfig, device, group: PointGroup) -> tuple[float, float, float]:
    """Median angle (°) between the best grid poses of a sample of each half's particles
    against the two half maps (modulo the maps' point ``group``), the grid step, and the share
    of the sample whose two poses are more than ``CROSS_CHECK_STEPS`` grid steps apart
    (:attr:`RefineResult.poses_agree`, :attr:`RefineResult.poses_split`)."""
    box, px = stack.box, stack.pixel_size
    res = max(resolution, CROSS_CHECK_ANGSTROM)
    s = round_size(box, px, res, cfg)
    px_s = px * box / s
    cutoff = min(0.5, px_s / res)
    step = max(search_step(res, radius, cfg), CROSS_CHECK_MIN_STEP_DEG)
    grid = so3_grid(step)
    if group.order > 1:
        grid = grid[asymmetric_unit(grid, group.ops(), math.radians(step / 4))]
    grid = grid.to(device)
    prepared = [prepare_volume(fourier_resize_volume(lowpass_to_resolution(m, px, res), s).to(device)) for m in maps]
    apart = []
    for idx in halves:
        idx = idx[np.linspace(0, len(idx) - 1, min(CROSS_CHECK_PARTICLES, len(idx))).round().astype(int)]
        images = fourier_resize(stack.images.read(idx), s).to(device)
        ctf = subset(stack.ctf(), idx)
        o = (origins[torch.as_tensor(idx)] / px_s).to(device)
        a, b = (global_search(images, ctf, px_s, p, grid, cutoff, 1.5, origins_px=o).rotations.cpu()
                for p in prepared)
        apart.append(rotmat_angle(b.transpose(-1, -2) @ nearest_mates(a, b, group)))
    apart_deg = torch.rad2deg(torch.cat(apart))
    return float(apart_deg.median()), step, float((apart_deg > CROSS_CHECK_STEPS * step).float().mean())


def _offsets(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float, prepared, rotations: torch.Tensor,
             cutoff: float, limit_px: float) -> torch.Tensor:
    """RELION origins (px) of each image against its reprojection at the given rotation."""
    out = torch.empty(images.shape[0], 2, device=images.device)
    for lo in range(0, images.shape[0], 1024):
        sl = slice(lo, lo + 1024)
        ref = lowpass_images(render(prepared, rotations[sl], None, subset(ctf, sl), pixel_size), cutoff)
        out[sl] = -translation(lowpass_images(images[sl], cutoff), ref, limit_px, lowpass_fraction=1.0)
    return out


def _best_candidates(images, ctf, pixel_size, prepared, cutoff, candidates: dict) -> tuple[tuple, dict]:
    """Per particle, the candidate pose (rotations, origins) that scores best against the map,
    and the share of the particles each candidate won."""
    names = list(candidates)
    if len(names) == 1:
        return candidates[names[0]], {names[0]: 1.0}
    scores = torch.stack([_score_pose(images, ctf, pixel_size, prepared, *candidates[k], cutoff) for k in names])
    best = scores.argmax(dim=0).to(images.device)
    rows = torch.arange(images.shape[0], device=images.device)
    rot = torch.stack([candidates[k][0] for k in names])[best, rows]
    org = torch.stack([candidates[k][1] for k in names])[best, rows]
    return (rot, org), {k: float((best == i).float().mean()) for i, k in enumerate(names)}
