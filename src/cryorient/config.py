"""Every stage's configuration: the options, their defaults (stated here once) and their
validation (on construction, so a config that exists is valid).

This module imports neither torch nor numpy: the command line builds its parsers from these
defaults and starts in well under a second. Messages name the quantity, not a command-line
flag (the CLI words its own errors).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from .errors import CryorientError, require, require_positive

DEFAULT_STRUCTURE = "3kpr_single"
DEFAULT_WIENER = 0.005  # lambda / mean(sum CTF^2) of the direct Fourier inversion


SYMMETRY_NAMES = re.compile(r"(C\d+|D\d+|CI|CS|T|O|I[1-4]?)")


def check_symmetry(name: str) -> str:
    """A point group as RELION names it (case-insensitive): C1, Cn, Dn, T, O, I (I1-I4), Ci, Cs."""
    key = str(name).strip().upper()
    require(SYMMETRY_NAMES.fullmatch(key) is not None and key not in ("C0", "D0"),
            f"unknown symmetry {name!r}; use RELION's point-group names: C1, Cn, Dn, T, O, I (I1-I4), Ci, Cs")
    return key


def _choice(value, literal, name: str) -> None:
    options = get_args(literal)
    if value not in options:
        raise CryorientError(f"unknown {name} {value!r}; use {' or '.join(map(str, options))}")


def _integer(value, name: str, minimum: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise CryorientError(f"{name} must be an integer >= {minimum}, got {value!r}")


# --- structures and simulation -------------------------------------------------------------


@dataclass(frozen=True)
class DensityConfig:
    """How a structure becomes a density volume."""

    box: int = 64
    pixel_size: float = 2.5
    resolution: float | None = None  # Å; default 2.5 px (0.8 of Nyquist)
    keep_ligands: bool = False
    chains: tuple[str, ...] | None = None  # keep only these chains of an atomic model

    def __post_init__(self):
        _integer(self.box, "box size", 16)
        require(self.box % 2 == 0, f"box size must be even, got {self.box}")
        require_positive(self.pixel_size, "pixel size")
        res = require_positive(self.resolved_resolution(), "resolution")
        require(res >= 2 * self.pixel_size - 1e-9,
                f"resolution {res} Å is finer than Nyquist ({2 * self.pixel_size} Å) at pixel size "
                f"{self.pixel_size} Å; use a resolution >= {2 * self.pixel_size} Å")

    def resolved_resolution(self) -> float:
        return self.resolution if self.resolution is not None else 2.5 * self.pixel_size


@dataclass(frozen=True)
class CTFSampling:
    """How a simulation draws CTF parameters."""

    defocus_min_angstrom: float = 10000.0
    defocus_max_angstrom: float = 25000.0
    astigmatism_angstrom: float = 500.0  # maximum |dU - dV| / 2
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1

    def __post_init__(self):
        require(0 < self.defocus_min_angstrom <= self.defocus_max_angstrom,
                "defocus range must satisfy 0 < min <= max (Å)")
        require(self.astigmatism_angstrom >= 0, "astigmatism must be >= 0")
        require_positive(self.voltage_kv, "voltage")
        require(0 <= self.amplitude_contrast < 1, "amplitude contrast must be in [0, 1)")


ShiftDistribution = Literal["uniform", "gaussian"]
OrientationMode = Literal["so3", "euler"]


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Angles in degrees (RELION's rot, tilt, psi ranges)."""

    n_particles: int = 5000
    snr: float = 1 / 16  # inf: no noise
    noise_variance: float | None = None  # absolute sigma^2 (the seed's levels); overrides snr
    max_shift_px: float = 4.0
    shift_distribution: ShiftDistribution = "uniform"  # in the disc, or gaussian (sigma = max / 2)
    ctf: bool = False
    ctf_sampling: CTFSampling = field(default_factory=CTFSampling)
    phase_flip: bool = False
    rot_range_deg: tuple[float, float] = (-180.0, 180.0)
    tilt_range_deg: tuple[float, float] = (0.0, 180.0)
    psi_range_deg: tuple[float, float] = (-180.0, 180.0)
    orientation_mode: OrientationMode = "so3"
    batch_size: int = 256

    def __post_init__(self):
        _integer(self.n_particles, "number of particles", 1)
        if self.noise_variance is None:
            check_snr(self.snr)
        else:
            require(self.noise_variance >= 0 and math.isfinite(self.noise_variance),
                    f"noise variance must be >= 0, got {self.noise_variance}")
        require(self.max_shift_px >= 0 and math.isfinite(self.max_shift_px),
                f"maximum shift must be >= 0 px, got {self.max_shift_px}")
        _choice(self.shift_distribution, ShiftDistribution, "shift distribution")
        _choice(self.orientation_mode, OrientationMode, "orientation sampling mode")
        lo, hi = self.tilt_range_deg
        require(0.0 <= lo < hi <= 180.0,
                f"tilt range must satisfy 0 <= min < max <= 180, got {self.tilt_range_deg}")
        _integer(self.batch_size, "batch size", 1)


SNR_MIN = 1e-4  # -40 dB: far below anything single particles are recorded at


def check_snr(snr: float) -> float:
    """An SNR as the simulator and the training data take it: a number in
    ``[1e-4, inf]`` (inf = no noise)."""
    v = require_positive(snr, "SNR", allow_inf=True)
    require(v >= SNR_MIN, f"SNR {snr} is below {SNR_MIN} (-40 dB), where images hold no signal; "
                          "give the SNR as a ratio, e.g. 1/16")
    return v


# --- the learned distance ------------------------------------------------------------------

Encoder = Literal["small", "seed"]
Head = Literal["rotation", "cosine"]
Objective = Literal["pose", "pairs"]
PairLoss = Literal["l1", "l2"]


DEFAULT_HYPOTHESES = 4  # pose hypotheses of the rotation head (ModelConfig.hypotheses)


ENCODER_STAGES = {"small": 4, "seed": 7}  # SiameseDistance.stages() of each encoder


@dataclass(frozen=True)
class ModelConfig:
    encoder: Encoder = "small"  # small | seed (the original's 7-block encoder)
    head: Head = "rotation"  # rotation | cosine (the original's)
    width: int = 16  # channels of the first stage (small encoder)
    embedding: int = 512  # feature size for the cosine head
    # px at the network input (at most: a smaller box is never upsampled). Fewer pixels, more
    # epochs in the same time: demo setting, 5 min on two AVX2 cores, validation MAE 32 px 0.233,
    # 28 px 0.220, 24 px 0.214, 20 px 0.193 (docs/model.md)
    input_size: int = 20
    input_pixel_size: float = 4.0  # Å/px at the network input
    phase_flip: bool = True  # images are CTF phase-flipped before the network
    # rotation head: K pose hypotheses per image with a score each (winner-takes-all training);
    # the best-scored one is the embedding, all K are candidates for a local search. None: 4 with
    # the rotation head (measured better after a local search than 1 on all three proteins of
    # docs/model.md, with and without CTF, at the same training budget), 1 with the cosine head
    hypotheses: int | None = None

    def __post_init__(self):
        _choice(self.encoder, Encoder, "encoder")
        _choice(self.head, Head, "head")
        _integer(self.width, "network width", 1)
        if self.hypotheses is None:
            object.__setattr__(self, "hypotheses", DEFAULT_HYPOTHESES if self.head == "rotation" else 1)
        _integer(self.hypotheses, "number of pose hypotheses", 1)
        require(self.hypotheses == 1 or self.head == "rotation", "pose hypotheses need the rotation head")
        require(self.input_size >= 16 and self.input_size % 2 == 0,
                f"network input size must be even and >= 16, got {self.input_size}")
        require_positive(self.input_pixel_size, "network input pixel size")


@dataclass(frozen=True)
class AugmentationConfig:
    """Random changes to the reference, re-drawn every ``refresh`` batches. Off by default:
    measured on the demo setting (3 minutes, SNR 1/16, CTF) it cost accuracy on the exact
    structure (13.2 against 10.8 deg) and on particles with a domain moved by 15 deg (17.7
    against 15.0), and on a 25 kDa protein 88.8 against 33.4 deg (docs/model.md)."""

    enabled: bool = False
    refresh: int = 8
    deform_angstrom: float = 2.0  # RMS of a smooth random displacement field
    lowpass_range_angstrom: tuple[float, float] = (0.0, 12.0)  # extra low-pass, 0 = none
    blobs: int = 3  # small densities removed or added (missing loops, extra density)
    blob_radius_angstrom: float = 5.0

    def __post_init__(self):
        _integer(self.refresh, "augmentation refresh", 1)


Precision = Literal["auto", "fp32", "bf16"]
Schedule = Literal["cosine", "plateau"]


@dataclass(frozen=True)
class TrainConfig:
    """Training runs epoch by epoch until the validation stops improving, the time budget is
    spent or ``max_epochs`` is reached, whichever comes first."""

    max_epochs: int = 200
    minutes: float | None = 10.0  # wall-time budget (None: no limit)
    steps_per_epoch: int = 100
    batch_size: int = 128  # images per step (all their pairs are scored)
    lr: float = 4e-3  # measured on the demo setting, 5 min: 2e-3 MAE 0.302 rad, 4e-3 0.247
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    schedule: Schedule = "cosine"  # cosine over the planned epochs, or halving on plateaus
    patience: int = 3  # (plateau) epochs without a 1% better validation before the learning rate halves
    stop_patience: int = 8  # epochs without a 1% better validation before training stops
    stop_after: float = 0.67  # (cosine) share of the planned epochs before that rule may stop training
    curriculum_snr_factor: float = 8.0  # the first epochs train at this multiple of the stack's SNR ...
    curriculum_epochs: int = 6  # ... down to the stack's SNR over this many epochs (1: no curriculum)
    # fine-tuning (``init``) keeps the encoder's first stages as trained: faster steps, and a lower
    # validation error after a minute (measured, docs/model.md "How training is made fast")
    frozen_stages: int = 2
    loss: PairLoss = "l1"  # l1 (the seed's) or l2
    objective: Objective = "pose"  # pose (rotation head, reference frame) or pairs (the seed's)
    val_size: int = 1024  # validation images: their pair MAE varies ±0.012 rad between draws (±0.019 at 384)
    weak_median_deg: float = 30.0  # a validation median pose error above this: the model is not trusted
    precision: Precision = "auto"  # auto: bf16 where the hardware has it (GPU, AVX512-BF16/AMX CPU)
    # the reference's point group (RELION's names): a pose is right when it is any of its symmetry
    # mates, so the pose loss and the validation take the nearest mate; the pairs objective's
    # targets are distances modulo the group
    symmetry: str = "C1"
    model: ModelConfig = field(default_factory=ModelConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    def __post_init__(self):
        _integer(self.max_epochs, "epochs", 1)
        if self.minutes is not None:
            require_positive(self.minutes, "training time budget (minutes)")
        _integer(self.steps_per_epoch, "steps per epoch", 1)
        _integer(self.batch_size, "training batch size", 4)
        require_positive(self.lr, "learning rate")
        _integer(self.patience, "patience", 1)
        _integer(self.stop_patience, "stop patience", 1)
        _integer(self.frozen_stages, "frozen stages", 0)
        stages = ENCODER_STAGES[self.model.encoder]
        require(self.frozen_stages <= stages, f"the {self.model.encoder} encoder has {stages} stages; "
                f"cannot freeze {self.frozen_stages}")
        require(0 <= self.stop_after <= 1, "the share of the budget before a plateau may stop training must be "
                "in [0, 1]")
        require(self.curriculum_snr_factor >= 1, "the curriculum's SNR factor must be >= 1")
        _integer(self.curriculum_epochs, "curriculum epochs", 1)
        _choice(self.loss, PairLoss, "loss")
        _choice(self.objective, Objective, "objective")
        _choice(self.precision, Precision, "precision")
        _choice(self.schedule, Schedule, "schedule")
        check_symmetry(self.symmetry)
        require(not (self.objective == "pose" and self.model.head != "rotation"),
                "the pose objective needs the rotation head (the cosine head goes with the pairs "
                "objective)")
        require(self.objective == "pose" or self.model.hypotheses == 1,
                "the pairs objective trains one pose hypothesis per image: set hypotheses to 1 "
                "(--hypotheses 1), or use the pose objective")


# --- orientation recovery ------------------------------------------------------------------

Optimizer = Literal["gauss-newton", "adam"]
RecoveryLoss = Literal["l2", "huber"]
ShiftsMode = Literal["estimate", "zero"]


@dataclass(frozen=True)
class RecoveryConfig:
    restarts: int = 2
    grid_size: int = 16384  # SO(3) samples for multilateration (~7 deg apart)
    optimizer: Optimizer = "gauss-newton"  # or adam (the seed's choice; slower, see bench/recover.py)
    max_steps: int = 2000
    lr: float = 0.03
    min_lr: float = 3e-4
    patience: int = 30  # steps without 0.1% improvement before the learning rate is halved
    loss: RecoveryLoss = "l2"  # l2 (the seed's L_OR) or huber (robust)
    huber_delta: float = 0.1  # radians
    cutoff: float | None = None  # ignore pairs whose target exceeds this (radians)
    batch_pairs: int = 4_000_000  # pairs per step above which steps use random batches

    def __post_init__(self):
        _integer(self.restarts, "restarts", 1)
        _choice(self.optimizer, Optimizer, "optimizer")
        _choice(self.loss, RecoveryLoss, "recovery loss")
        require(self.cutoff is None or 0 < self.cutoff <= math.pi,
                f"distance cutoff must be in (0, pi], got {self.cutoff}")


@dataclass(frozen=True)
class AmbiguityConfig:
    n_images: int = 2000  # images used for the common-lines score
    coarse_pairs: int = 6000  # pairs for the coarse search
    n_pairs: int = 40000  # pairs for re-scoring and refinement
    n_angles: int = 360  # line angles over [0, pi) for the fine search
    coarse_angles: int = 45  # the coarse correlation table (4 deg)
    n_candidates: int = 11250  # coarse candidates per branch: 250 views x 45 in-plane (coarse_angles)
    radius_min: float = 2.0  # px (Fourier radius)
    coarse_radius_fraction: float = 0.125  # of the box: smooth lines for the coarse search
    fine_radius_fraction: float = 0.25  # of the box: radii weighted by their measured SNR
    rescore_top: int = 24  # coarse winners re-scored per branch on all pairs
    refine_top: int = 2  # of which the best are refined per branch
    twin_exclusion_deg: float = 15.0
    polish_images: int = 1500  # images for the reprojection polish of E (0: no polish)

    def __post_init__(self):
        _integer(self.n_images, "images for the ambiguity", 3)


@dataclass(frozen=True)
class LocalRefineConfig:
    """Local refinement of orientations and origins against reprojections of half maps."""

    rounds: int = 3
    steps: int = 15
    size: int = 48  # px: images and maps are downsampled to this (demo stack: 32 px 4.7°, 48 px 3.7°)
    lr_deg: float = 1.0
    lowpass_start: float = 0.2  # cycles/px of the downsampled grid in the first round ...
    lowpass_end: float = 0.45  # ... and in the last
    chunk: int = 1024

    def __post_init__(self):
        _integer(self.rounds, "local refinement rounds", 0)


DISTANCE_SOURCES = ("model", "euclidean", "true", "perturbed")


def parse_distance_source(spec: str) -> tuple[str, str | None]:
    """``"perturbed:0.2"`` -> ``("perturbed", "0.2")``, ``"model:PATH"`` -> ``("model", PATH)``."""
    kind, _, arg = spec.partition(":")
    if kind not in DISTANCE_SOURCES:
        raise CryorientError(f"unknown distance source {spec!r}; use model[:PATH], euclidean, or the "
                             "truth-reading baselines true and perturbed:S")
    if kind == "perturbed":
        try:
            sigma = float(arg)
        except ValueError:
            raise CryorientError(f"perturbed needs a noise level in radians, e.g. perturbed:0.2, "
                                 f"got {spec!r}") from None
        require(sigma >= 0 and math.isfinite(sigma),
                f"perturbation must be a finite number >= 0, got {sigma}")
    elif kind in ("true", "euclidean") and arg:
        raise CryorientError(f"{kind} takes no argument, got {spec!r}")
    return kind, (arg or None)


@dataclass(frozen=True)
class RecoverConfig:
    distances: str = "model"  # model[:PATH] | euclidean | true | perturbed:S (the last two read the truth)
    pairs_per_particle: int | None = None  # None: all pairs up to 5M pairs, else 5M / N each
    n_anchors: int = 48
    neighbours: int = 16  # nearest neighbours per particle in the model's embedding (model only)
    shifts: ShiftsMode = "estimate"  # estimate (against reconstructions) | zero
    shift_iterations: int = 3
    refine: LocalRefineConfig = field(default_factory=LocalRefineConfig)  # rounds 0: the method only
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    ambiguity: AmbiguityConfig = field(default_factory=AmbiguityConfig)
    # the particles' point group (RELION's names, proper groups): distances are modulo the group
    symmetry: str = "C1"

    def __post_init__(self):
        parse_distance_source(self.distances)
        require(check_symmetry(self.symmetry) not in ("CI", "CS"),
                f"symmetry {self.symmetry}: distances between orientations are modulo rotations; a protein's "
                "group is Cn, Dn, T, O or I")
        if self.pairs_per_particle is not None:
            _integer(self.pairs_per_particle, "pairs per particle", 1)
        _integer(self.n_anchors, "anchors", 5)
        _integer(self.neighbours, "neighbours", 0)
        _choice(self.shifts, ShiftsMode, "shifts mode")


# --- reconstruction ------------------------------------------------------------------------

FSCMask = Literal["sphere", "none"]


@dataclass(frozen=True)
class ReconstructConfig:
    halves: bool = True
    wiener: float = DEFAULT_WIENER
    batch_size: int = 256
    use_ctf: bool = True
    mask: FSCMask = "sphere"  # FSC mask: sphere or none
    lowpass: bool = False  # low-pass the final map at the half-map resolution
    symmetry: str = "C1"  # each image inserted along every symmetry mate (RELION's names)

    def __post_init__(self):
        check_symmetry(self.symmetry)
        require_positive(self.wiener, "Wiener constant")
        _integer(self.batch_size, "batch size", 1)
        _choice(self.mask, FSCMask, "FSC mask")


# --- initial map from the particles alone ----------------------------------------------------


@dataclass(frozen=True)
class AbInitioConfig:
    """Stochastic expectation-maximisation from a random start (see :mod:`cryorient.abinitio`)."""

    iterations: int = 40
    batch_start: int = 200  # particles per iteration in the first half of the iterations ...
    batch_end: int = 400  # ... and in the second
    start_resolution: float = 40.0  # Å: the map is low-passed to this in the first iteration ...
    final_resolution: float = 18.0  # ... and raised linearly to this by 70% of the iterations
    grid_step_deg: float = 15.0  # the orientation grid of the expectation step
    top_poses: int = 30  # each image inserted along its most probable poses, weighted
    memory: float = 0.5  # the running sums are multiplied by this before each iteration's are added
    mask_fraction: float = 0.8  # the soft spherical mask's diameter, as a fraction of the box
    seeds: int = 3  # independent runs: they must agree for the initial map to be trusted
    max_shift_fraction: float = 0.1  # of the box: translations searched

    def __post_init__(self):
        _integer(self.iterations, "ab initio iterations", 1)
        _integer(self.batch_start, "ab initio batch size", 2)
        _integer(self.batch_end, "ab initio batch size", 2)
        require(self.start_resolution >= self.final_resolution > 0,
                "the ab initio resolutions must satisfy start >= final > 0")
        require_positive(self.grid_step_deg, "ab initio grid step")
        _integer(self.top_poses, "poses per image", 1)
        require(0 <= self.memory < 1, "the ab initio memory must be in [0, 1)")
        require(0 < self.mask_fraction <= 1, "the mask fraction must be in (0, 1]")
        _integer(self.seeds, "ab initio seeds", 1)


# --- gold-standard refinement -------------------------------------------------------------

PoseProposer = Literal["network", "search"]


@dataclass(frozen=True)
class RefineConfig:
    """The gold-standard loop (see :mod:`cryorient.refine.loop`)."""

    initial_lowpass: float = 40.0  # Å: the reference is low-passed to this before round 0
    max_rounds: int = 10
    # who proposes poses: "search" (the global search while the resolution is coarse, then local
    # refinement) or "network" (a network trained on each half's map adds its proposals). Measured
    # on the demo setting (bench/refine.py, N=5000): search 3.3 deg in 404 s, network 8.0 deg in
    # 991 s, so the search is the default.
    poses: PoseProposer = "search"
    # global search while the resolution is worse than this (not at it: at box 32, 2.5 Å/px,
    # Nyquist is 10 Å: the last two rounds, 76 s each, searched again and it won 0-1% of the
    # particles)
    search_until_angstrom: float = 10.0
    search_step_max_deg: float = 15.0  # the coarsest grid of the global search
    search_step_min_deg: float = 5.0  # its finest grid
    max_shift_fraction: float = 0.1  # of the box: the global search's translation range
    local_steps: int = 40  # gradient steps of the local refinement per round
    train_minutes: float = 2.0  # round-0 training budget per half (network proposals)
    finetune_minutes: float = 0.5  # later rounds' fine-tuning budget per half
    oversample: float = 1.25  # image size per round: Nyquist at resolution / (2 x this)
    min_size: int = 24  # px
    stop_rounds: int = 2  # stop after this many rounds without a 2% better resolution ...
    # ... once the poses moved less than this (median) in the last round. At 1 deg the loop
    # stopped at 2.75 deg with the poses still improving (0.87 deg moved); at 0.5, one more
    # round (26 s) gave 2.63 (3kpr_single, box 64, N = 2000, bench/refine.py --start particles).
    converged_deg: float = 0.5
    max_gain: float = 1.5  # the alignment resolution improves by at most this factor per round
    # Each round's maps for the next round's alignment spread every pose evenly over a
    # 3 x 3 x 3 grid of poses about it (step: the resolution over 3 x the particle's radius of
    # gyration, at most this many degrees; 0: the poses alone). A map of hard poses holds each
    # particle's own noise at its pose, which keeps it there: the loop settled at 4.2 deg where
    # the true map gives 2.1 (3kpr_single, N = 2000, box 32, bench/refine.py). Steps of 1.5,
    # 2.5 and 4 deg gave 3.8, 3.4 and 2.9 deg; uncapped, the coarse rounds' wide spreads (19 deg
    # at 40 Å) slowed the loop (16.2 deg after round 1 against 8.6). Weighting the 27 poses by
    # each image's likelihood (tempered by 0.05; untempered it is far too sharp) gave 2.93 deg,
    # even weights 2.91-2.99: the spread is a blur of the accumulated sums
    # (FourierAccumulator.rotation_averaged), whatever the number of particles.
    spread_max_deg: float = 5.0
    wiener: float = DEFAULT_WIENER
    batch_size: int = 512
    symmetry: str = "C1"  # point group (RELION's names); the maps are symmetrised
    relax_symmetry: bool = False  # then C1 rounds in which each particle picks its best symmetry mate

    def __post_init__(self):
        check_symmetry(self.symmetry)
        require_positive(self.initial_lowpass, "initial low-pass")
        _integer(self.max_rounds, "maximum rounds", 1)
        _choice(self.poses, PoseProposer, "pose proposer")
        require(0 < self.search_step_min_deg <= self.search_step_max_deg,
                "the global search's angular steps must satisfy 0 < finest <= coarsest")
        _integer(self.local_steps, "local refinement steps", 0)
        require_positive(self.train_minutes, "training budget (minutes)")
        require_positive(self.finetune_minutes, "fine-tuning budget (minutes)")
        _integer(self.stop_rounds, "stop rounds", 1)
        require(self.max_gain > 1, "the resolution gain per round must be > 1")
        require(self.spread_max_deg >= 0, "the pose spread's step must be >= 0 degrees")
        _integer(self.min_size, "minimum image size", 16)


# --- the whole pipeline --------------------------------------------------------------------


Method = Literal["refine", "distances"]
# where the refinement's round 0 starts: a map made from the particles alone (ab initio) put in
# the reference's frame and hand, or the reference itself; auto: the particles in C1, the
# reference for point groups (the ab initio map is made in C1)
Start = Literal["auto", "particles", "reference"]


@dataclass(frozen=True)
class PipelineConfig:
    method: Method = "refine"  # refine: the gold-standard loop; distances: the original method
    particles: str | None = None  # a RELION particle STAR; None: simulate
    particles_pixel_size: float | None = None  # for RELION 3.0 STAR files without one
    structure: str = DEFAULT_STRUCTURE
    density: DensityConfig = field(default_factory=DensityConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    reference: str | None = None  # train a model on this structure/map
    reference_chains: tuple[str, ...] | None = None
    model: str | None = None  # an existing model.pt (overrides reference)
    train: TrainConfig = field(default_factory=TrainConfig)
    recover: RecoverConfig = field(default_factory=RecoverConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)
    refinement: RefineConfig = field(default_factory=RefineConfig)
    abinitio: AbInitioConfig = field(default_factory=AbInitioConfig)  # when the start is the particles
    start: Start = "auto"
    truth_map: str | None = None  # ground-truth map for the FSC (simulations use their own)
    seed: int = 0

    @property
    def starts_from_particles(self) -> bool:
        """The refinement starts from an ab initio map (no reference, or ``start`` says so)."""
        if self.reference is None:
            return True
        return self.start == "particles" or (self.start == "auto" and self.refinement.symmetry == "C1")

    def __post_init__(self):
        _choice(self.method, Method, "method")
        _choice(self.start, Start, "start")
        if self.method == "refine":
            require(self.start != "particles" or self.refinement.symmetry == "C1",
                    "--start particles makes the initial map in C1; with --symmetry start from the reference "
                    "(--start reference)")
            require(self.reference is not None or self.refinement.symmetry == "C1",
                    "a symmetric refinement needs a reference in RELION's symmetry frame (the ab initio map "
                    "is made in C1, in a frame of its own)")
        else:
            require(self.refinement.symmetry == "C1",
                    "the distance method takes its point group from the recovery's configuration "
                    "(recover.symmetry), not the refinement's")
            require(self.train.symmetry == self.recover.symmetry == self.reconstruct.symmetry,
                    "the distance method's training, recovery and reconstruction need the same point group "
                    f"(got {self.train.symmetry}, {self.recover.symmetry}, {self.reconstruct.symmetry})")
            require(self.reference is not None or self.model is not None,
                    "the distance method needs a reference structure or map to train on, or a trained "
                    "model; no library model ships with cryorient")
