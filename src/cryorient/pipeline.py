"""``cryorient run``: the whole method in one run directory, stage by stage.

    simulate (or --particles) -> train (with --reference; cached) -> recover -> reconstruct

The particles are read once: the true poses (when the STAR has them) go to the evaluation
only, every estimation stage sees the blind stack with its half sets (``rlnRandomSubset``,
drawn once). Each stage writes its own subdirectory atomically (staged, renamed when
complete) and records its configuration digest and its typed result (``stage.json``).
Re-running the same command skips completed stages (their results are read back through
their types), resumes an interrupted training from its checkpoint, and refuses to mix stages
made with another configuration. Distance models trained on a reference are cached (in
``$CRYORIENT_CACHE``) by everything that shaped them, so a rerun does not retrain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from . import __version__
from .config import DensityConfig, PipelineConfig
from .density import load_reference
from .distance.data import imaging_from_stack
from .distance.preprocess import default_input
from .distance.train import MODEL_FORMAT, train_on_reference
from .errors import CryorientError
from .evaluation import Truth, evaluate_poses, truth_of, write_evaluation_figures
from .io import write_mrc
from .orientation.frame import to_reference_frame
from .orientation.run import run_recovery, write_recovery
from .particles import ParticleStack, read_particles, write_particles
from .reconstruct.run import reconstruct, write_reconstruction
from .rundir import staged_directory, to_plain, write_json
from .simulate.run import run_simulation
from .structure import resolve_structure

log = logging.getLogger(__name__)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(to_plain(obj), sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("CRYORIENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cryorient")
    return Path(base)


def snr_class(snr: float) -> str:
    """The SNR as it enters the cache key: its half-octave (robust to estimation jitter)."""
    if math.isinf(snr):
        return "noiseless"
    if snr <= 0:
        return "no-signal"
    return f"{round(2 * math.log2(snr)) / 2:g}"


def model_cache_key(reference: str, chains, imaging: dict, train_cfg, seed: int) -> str:
    """Everything that shapes a trained model: the reference's content, its chains, the imaging
    (box, pixel size, SNR class, shift range, CTF parameters), the training configuration, the
    seed, the model format and cryorient's version."""
    content = hashlib.sha256(resolve_structure(reference).read_bytes()).hexdigest()
    key_imaging = {**imaging, "snr": snr_class(imaging["snr"])}
    return _digest({"reference": content, "chains": chains, "imaging": key_imaging, "train": train_cfg,
                    "seed": seed, "model_format": MODEL_FORMAT, "version": __version__})


def find_cached_model(key: str) -> Path | None:
    candidate = cache_dir() / "models" / f"{key}.pt"
    return candidate if candidate.is_file() else None


# --- typed stage results (stage.json holds them; a skipped stage reads them back) ----------


@dataclass(frozen=True)
class SimulateResult:
    star: str
    volume: str
    measured_snr: float


@dataclass(frozen=True)
class TrainStageResult:
    model: str
    origin: str  # trained | trained (from the cache)
    val_median_deg: float | None
    val_within_15deg: float | None
    val_mae_rad: float | None
    weak: bool
    warning: str | None
    consensus_median_deg: float | None = None  # the consensus of the turned readings (the stack's poses)


@dataclass(frozen=True)
class RecoverStageResult:
    ambiguity_margin: float
    recovery_loss: float
    hand: str  # as reference, mirrored, or undetermined (no reference)
    hand_margin: float | None
    median_error_deg: float | None = None
    mean_error_deg: float | None = None
    p90_error_deg: float | None = None
    o4_median_error_deg: float | None = None
    median_error_before_refinement_deg: float | None = None
    hand_vs_truth: str | None = None


@dataclass(frozen=True)
class ReconstructStageResult:
    resolution_halves_angstrom: float
    halves_reach_nyquist: bool
    resolution_vs_truth_angstrom: float | None


class Stages:
    """Stage directories of one run: skip what is done, refuse what does not match."""

    def __init__(self, outdir: Path):
        self.outdir = outdir
        self.skipped: list[str] = []

    def _recorded(self, name: str, config) -> dict | None:
        marker = self.outdir / name / "stage.json"
        if not marker.is_file():
            return None
        recorded = json.loads(marker.read_text())
        if recorded.get("config_digest") != _digest(config):
            raise CryorientError(f"{self.outdir / name} was made with another configuration; rerun with "
                                 "--overwrite or use another --outdir")
        return recorded

    def run(self, name: str, config, result_type: type, fn: Callable[[Path], object]):
        """``fn(staging_dir)`` (returning a ``result_type``) unless done earlier; the directory
        appears only when complete."""
        recorded = self._recorded(name, config)
        if recorded is not None:
            self.skipped.append(name)
            log.info("stage %s: done earlier, skipped", name)
            return result_type(**recorded["result"])
        target = self.outdir / name
        if target.exists():  # no stage.json: an older incomplete attempt
            shutil.rmtree(target)
        t0 = time.perf_counter()
        with staged_directory(target) as stage:
            (stage / "figures").mkdir(exist_ok=True)
            result = fn(stage)
            write_json(stage / "stage.json", {"config_digest": _digest(config),
                                              "seconds": round(time.perf_counter() - t0, 2),
                                              "result": asdict(result)})
        return result


@dataclass(frozen=True)
class AbInitioStageResult:
    initial_map: str  # its file name in the stage directory
    abinitio_seeds: int
    abinitio_seeds_agree: bool
    abinitio_worst_agreement_angstrom: float | None  # the least similar pair of starts' maps, FSC 0.5
    abinitio_seconds: float
    warnings: list
    initial_map_vs_truth_angstrom: float | None = None  # FSC 0.5 after aligning rotation and hand


@dataclass(frozen=True)
class RefineStageResult:
    rounds: int
    half_map_fsc_resolution_angstrom: float
    resolution_angstrom: float | None  # None: no signal beyond the start resolution
    start_resolution_angstrom: float
    confidence_median: float
    fsc_vs_reference_beyond_start: float  # the largest FSC(map, start reference) beyond it
    warnings: list
    fsc_vs_reference_at_start: float | None = None  # the lowest FSC(map, reference) up to it
    # round 0 from the ab initio map put in the reference's frame and hand (the reference shaped
    # nothing else); then the map must match the reference for a resolution to be reported
    started_from_particles: bool = False
    matches_reference: bool = True
    # the two half maps determine the same poses for the same particles (else: chosen by noise)
    poses_agree: bool = True
    placement_hand_margin: float | None = None  # how clearly the reference picked the initial map's hand
    # the final map's hand check (negative: the other hand fits better) and whether the loop ran
    # again from the final map in the other hand (refine.loop.refine)
    final_hand_margin: float | None = None
    hand_restarted: bool = False
    reference_resolution_angstrom: float | None = None  # the reference trusted to (--initial-lowpass)
    median_error_deg: float | None = None
    mean_error_deg: float | None = None
    p90_error_deg: float | None = None
    hand_vs_truth: str | None = None
    resolution_vs_truth_angstrom: float | None = None
    truth_reference_resolution_angstrom: float | None = None  # the same particles at their true poses


@dataclass(frozen=True)
class RunSummary:
    method: str
    particles: str
    n_particles: int
    box: int
    pixel_size: float
    reference: str | None
    stages_skipped: list
    wall_time_s: float
    # the distance method
    distances: str | None = None
    model: str | None = None
    train: TrainStageResult | None = None
    recover: RecoverStageResult | None = None
    reconstruct: ReconstructStageResult | None = None
    # the refinement (after an initial map from the particles alone when no reference was given)
    abinitio: AbInitioStageResult | None = None
    refine: RefineStageResult | None = None

    def to_dict(self) -> dict:
        """The flat summary.json (and the report's metrics table)."""
        nested = ("train", "recover", "reconstruct", "abinitio", "refine")
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in nested and getattr(self, f.name) is not None}
        if self.train is not None:
            out.update(training_median_error_deg=self.train.val_median_deg,
                       training_within_15deg=self.train.val_within_15deg, model_weak=self.train.weak)
            if self.train.consensus_median_deg is not None:
                out["training_consensus_median_error_deg"] = self.train.consensus_median_deg
        for part in (self.recover, self.reconstruct, self.abinitio, self.refine):
            if part is not None:
                out.update({k: v for k, v in asdict(part).items() if v is not None and k != "warnings"})
        warnings = self.warnings()
        if warnings:
            out["warnings"] = warnings
        return out

    def warnings(self) -> list[str]:
        out = []
        if self.train is not None and self.train.warning:
            out.append(self.train.warning)
        if self.recover is not None:
            out.extend(_hand_warning(self.recover.hand_margin))
            if self.recover.ambiguity_margin < 0.05:
                out.append(f"the distance ambiguity was resolved by a thin margin "
                           f"({100 * self.recover.ambiguity_margin:.1f}%)")
        if self.abinitio is not None:
            out.extend(self.abinitio.warnings)
        if self.refine is not None:
            out.extend(self.refine.warnings)
        return out


def _hand_warning(margin: float | None) -> list[str]:
    """A hand picked by the map's correlation with the reference by less than
    :data:`~cryorient.volumes.THIN_HAND_MARGIN`."""
    from .volumes import THIN_HAND_MARGIN

    if margin is None or margin >= THIN_HAND_MARGIN:
        return []
    return [f"the hand was decided by a thin margin ({100 * margin:.1f}% between the two hands' map "
            "correlations with the reference)"]


def run_pipeline(cfg: PipelineConfig, outdir: Path, generator: torch.Generator,
                 progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
                 device=None) -> RunSummary:
    """Run every stage into ``outdir``; returns the summary (also written to summary.json)."""
    stages = Stages(outdir)
    t_start = time.perf_counter()

    def bar(name: str, total: int | None):
        return progress(name, total) if progress is not None else None

    # 1. particles: simulated, or the user's; the truth is set aside for the evaluation
    if cfg.particles is None:
        sim_cfg = {"structure": cfg.structure, "density": cfg.density, "simulation": cfg.simulation,
                   "seed": cfg.seed}

        def simulate_fn(d: Path) -> SimulateResult:
            g = torch.Generator().manual_seed(cfg.seed)
            r = run_simulation(cfg.structure, cfg.density, cfg.simulation, d, g,
                               bar("simulate", cfg.simulation.n_particles))
            return SimulateResult(str(r.star.name), str(r.volume.name), r.truth.measured_snr)

        sim = stages.run("simulate", sim_cfg, SimulateResult, simulate_fn)
        star = outdir / "simulate" / sim.star
        truth_map = cfg.truth_map or str(outdir / "simulate" / sim.volume)
    else:
        star = Path(cfg.particles)
        truth_map = cfg.truth_map
    stack = read_particles(star, cfg.particles_pixel_size)
    truth = truth_of(stack)
    blind = stack.blind().with_half_sets(generator)
    if truth_map is not None and not Path(truth_map).is_file():
        truth_map = None
    common = {"particles": str(star), "n_particles": stack.n, "box": stack.box, "pixel_size": stack.pixel_size,
              "reference": cfg.reference}
    if cfg.method == "refine":
        reference, initial, start = cfg.reference, None, None
        portable_truth = _portable(truth_map, outdir) if truth_map else None
        if reference is not None:  # a reference that cannot be read fails before any work
            load_reference(reference, blind.box, blind.pixel_size, cfg.reference_chains)
        if cfg.starts_from_particles:  # 2. an initial map from the particles alone
            initial = stages.run("abinitio", {"abinitio": cfg.abinitio, "seed": cfg.seed, "truth_map": portable_truth},
                                 AbInitioStageResult, lambda d: _abinitio(d, cfg, blind, truth_map, device))
            start = str(outdir / "abinitio" / initial.initial_map)
            if reference is None:  # the initial map is the reference (its frame and hand)
                reference, start = start, None
        result = stages.run("refine", {"refine": cfg.refinement, "reference": cfg.reference,
                                       "abinitio": cfg.abinitio if cfg.starts_from_particles else None,
                                       "chains": cfg.reference_chains, "seed": cfg.seed, "truth_map": portable_truth},
                            RefineStageResult,
                            lambda d: _refine(d, cfg, blind, truth, truth_map, device, reference, start))
        final_star, final_map = outdir / "refine" / "particles.star", outdir / "refine" / "map.mrc"
        summary = RunSummary("refine", **common, stages_skipped=stages.skipped, wall_time_s=0.0, abinitio=initial,
                             refine=result)
    else:
        summary = _run_distances(stages, cfg, blind, truth, truth_map, common, device, bar)
        final_star, final_map = outdir / "recover" / "orientations.star", outdir / "reconstruct" / "reconstruction.mrc"
    write_particles(read_particles(final_star), outdir / "particles.star")
    shutil.copyfile(final_map, outdir / "map.mrc")
    summary = replace(summary, stages_skipped=stages.skipped, wall_time_s=round(time.perf_counter() - t_start, 1))
    write_json(outdir / "summary.json", summary.to_dict())
    for w in summary.warnings():
        log.warning("warning: %s", w)
    return summary


def _abinitio(d: Path, cfg: PipelineConfig, blind: ParticleStack, truth_map: str | None,
              device) -> AbInitioStageResult:
    """The initial map from the particles alone, its files, and (with a true map) how close it is."""
    from .abinitio.em import ab_initio
    from .abinitio.run import write_initial_map
    from .volumes import aligned_fsc, resolution_at

    result = ab_initio(blind, cfg.abinitio, cfg.seed, device, progress=lambda msg: log.info("%s", msg))
    metrics = write_initial_map(result, d)
    out = AbInitioStageResult("initial_map.mrc", len(result.seeds), result.agree, result.worst_agreement_angstrom,
                              metrics["seconds"], result.warnings())
    if truth_map is not None:
        true_map = load_reference(truth_map, blind.box, blind.pixel_size)
        curve, _ = aligned_fsc(result.map, true_map, blind.pixel_size, resolution=20.0)
        out = replace(out, initial_map_vs_truth_angstrom=round(
            resolution_at(curve, blind.box, blind.pixel_size, 0.5).angstrom, 2))
    return out


def _refine(d: Path, cfg: PipelineConfig, blind: ParticleStack, truth: Truth | None, truth_map: str | None,
            device, reference_path: str, start_path: str | None = None) -> RefineStageResult:
    """The gold-standard loop from the reference (given, or the initial map), or from the
    initial map put in the given reference's frame and hand (``start_path``), its files, and
    (with the truth) its evaluation."""
    from .distance.data import imaging_from_stack
    from .distance.proposer import NetworkProposer
    from .refine.loop import refine
    from .refine.run import write_refinement
    from .volumes import lowpass_to_resolution, shell_frequencies

    rc = cfg.refinement
    reference = load_reference(reference_path, blind.box, blind.pixel_size, cfg.reference_chains)
    start, margin = None, None
    if start_path is not None:  # the reference decides the frame and hand, nothing else
        from .refine.loop import place_in_reference_frame

        start, placed = place_in_reference_frame(load_reference(start_path, blind.box, blind.pixel_size),
                                                 reference, blind.pixel_size)
        margin = round(placed.hand_margin, 4)
        log.info("initial map placed in the reference's frame (hand margin %.3f)", margin)
        write_mrc(d / "start_in_reference_frame.mrc", start, blind.pixel_size)
        from . import plots

        shown = [("reference", lowpass_to_resolution(reference, blind.pixel_size, rc.initial_lowpass)),
                 ("initial map, placed", lowpass_to_resolution(start, blind.pixel_size, rc.initial_lowpass))]
        plots.volume_slices(shown, d / "figures" / "placement.png", projections=True,
                            title=f"The particles' initial map in the reference's frame and hand (both at "
                                  f"{rc.initial_lowpass:.0f} Å; hand margin {100 * margin:.1f}%)")
    proposer = None
    if rc.poses == "network":
        from .refine.loop import first_map

        first, lp = first_map(reference, start, blind.pixel_size, rc)
        imaging = imaging_from_stack(blind, first, lp,
                                     generator=torch.Generator().manual_seed(cfg.seed))
        proposer = NetworkProposer(imaging, d / "networks", rc.train_minutes, rc.finetune_minutes,
                                   input_size=cfg.train.model.input_size, seed=cfg.seed,
                                   hypotheses=cfg.train.model.hypotheses, symmetry=rc.symmetry, device=device)
    result = refine(blind, reference, rc, proposer, device, progress=lambda msg: log.info("%s", msg), start=start)
    metrics = write_refinement(result, blind, d)
    # the controls: how much of the reference beyond the start resolution is in the map, and
    # how well the map agrees with it up to there
    freqs = shell_frequencies(blind.box, blind.pixel_size)
    beyond = result.fsc_reference[freqs > 1.0 / rc.initial_lowpass]
    out = RefineStageResult(len(result.rounds), result.resolution.angstrom,
                            metrics["resolution_angstrom"], result.start_resolution, metrics["confidence_median"],
                            float(beyond.max()) if beyond.size else 0.0, result.warnings(),
                            fsc_vs_reference_at_start=round(result.reference_agreement, 3),
                            started_from_particles=result.independent_start,
                            matches_reference=result.matches_reference, poses_agree=result.poses_agree,
                            placement_hand_margin=margin,
                            final_hand_margin=None if math.isnan(result.hand_margin) else round(result.hand_margin, 4),
                            hand_restarted=result.hand_restarted,
                            reference_resolution_angstrom=result.trusted_resolution)
    if truth is not None:
        # poses are defined modulo the point group (unless it was relaxed): judge the mate
        # closest to the truth
        from .symmetry import nearest_mates, point_group

        group = point_group("C1" if rc.relax_symmetry else rc.symmetry)
        judged = nearest_mates(result.rotations, truth.rotations, group) if group.order > 1 else result.rotations
        ev = evaluate_poses(judged, result.origins_angstrom, truth, blind.pixel_size)
        em = ev.metrics()
        write_json(d / "evaluation.json", em)
        write_evaluation_figures(ev.evaluation, truth, d / "figures", "refined")
        write_particles(ev.in_truth_frame(blind, result.origins_angstrom),
                        d / "orientations_aligned.star")
        out = replace(out, median_error_deg=em["rotation_error"]["median_deg"],
                      mean_error_deg=em["rotation_error"]["mean_deg"], p90_error_deg=em["rotation_error"]["p90_deg"],
                      hand_vs_truth=em["hand"])
        if truth_map is not None:
            true_map = load_reference(truth_map, blind.box, blind.pixel_size)
            aligned = ev.in_truth_frame(blind, result.origins_angstrom)
            one = replace(cfg.reconstruct, halves=False, symmetry="C1" if rc.relax_symmetry else rc.symmetry)
            mine = reconstruct(aligned, aligned.rotations(), one, true_map, device=device)
            ideal_stack = blind.with_orientations(truth.rotations, truth.origins_angstrom
                                                  if truth.origins_angstrom is not None else None)
            ideal = reconstruct(ideal_stack, truth.rotations, one, true_map, device=device)
            out = replace(out, resolution_vs_truth_angstrom=mine.resolution_reference.angstrom,
                          truth_reference_resolution_angstrom=ideal.resolution_reference.angstrom)
            (d / "truth_frame" / "figures").mkdir(parents=True)
            write_reconstruction(mine, d / "truth_frame", true_map)
    return out


def _run_distances(stages: Stages, cfg: PipelineConfig, blind: ParticleStack, truth: Truth | None,
                   truth_map: str | None, common: dict, device, bar) -> RunSummary:
    """The original method: a distance network, recovery, the reference's frame, reconstruction."""
    outdir = stages.outdir
    reference = None
    train_result = None
    if cfg.model is not None:
        model_path, origin = Path(cfg.model), "given"
    else:
        reference = load_reference(cfg.reference, blind.box, blind.pixel_size, cfg.reference_chains)
        train_result = _train_stage(stages, cfg, blind, reference, device, lambda total: bar("train", total))
        model_path, origin = Path(train_result.model), train_result.origin

    model_digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16]
    rec_cfg = {"recover": cfg.recover, "model": model_digest, "seed": cfg.seed, "reference": cfg.reference}

    def recover_fn(d: Path) -> RecoverStageResult:
        return _recover(d, cfg, blind, truth, model_path, reference, device)

    rec = stages.run("recover", rec_cfg, RecoverStageResult, recover_fn)
    recovered = read_particles(outdir / "recover" / "orientations.star")

    # reconstruction with the recovery's half sets; with the truth (evaluation only), also the
    # map of the truth-aligned poses against the true map
    aligned_star = outdir / "recover" / "orientations_aligned.star"
    truth_available = truth_map is not None and aligned_star.is_file()
    recon_cfg = {"reconstruct": cfg.reconstruct, "seed": cfg.seed,
                 "truth_map": _portable(truth_map, outdir) if truth_available else None}

    def reconstruct_fn(d: Path) -> ReconstructStageResult:
        result = reconstruct(recovered, recovered.rotations(), cfg.reconstruct, None,
                             bar("reconstruct", recovered.n), device=device)
        write_reconstruction(result, d)
        metrics = {"map": result.metrics()}
        vs_truth = None
        if truth_available:
            aligned = read_particles(aligned_star)
            ref_map = load_reference(truth_map, aligned.box, aligned.pixel_size)
            in_truth = reconstruct(aligned, aligned.rotations(), replace(cfg.reconstruct, halves=False),
                                   ref_map, device=device)
            (d / "truth_frame" / "figures").mkdir(parents=True)
            write_reconstruction(in_truth, d / "truth_frame", ref_map)
            metrics["truth_frame"] = in_truth.metrics()
            vs_truth = in_truth.resolution_reference.angstrom
        write_json(d / "metrics.json", metrics)
        halves = result.resolution_halves
        return ReconstructStageResult(halves.angstrom, halves.reached_nyquist, vs_truth)

    recon = stages.run("reconstruct", recon_cfg, ReconstructStageResult, reconstruct_fn)
    return RunSummary("distances", **common, stages_skipped=[], wall_time_s=0.0, distances=origin,
                      model=str(model_path), train=train_result, recover=rec, reconstruct=recon)


def _train_stage(stages: Stages, cfg: PipelineConfig, stack: ParticleStack, reference: torch.Tensor, device,
                 progress: Callable[[int | None], Callable[[int], None] | None]) -> TrainStageResult:
    """Train (or fetch from the cache) a model on the reference for this stack."""
    res = DensityConfig(box=stack.box, pixel_size=stack.pixel_size).resolved_resolution()
    imaging = imaging_from_stack(stack, reference, res, generator=torch.Generator().manual_seed(cfg.seed))
    size, input_px = default_input(stack.box, stack.pixel_size, cfg.train.model.input_size)
    tcfg = replace(cfg.train, model=replace(cfg.train.model, input_size=size, input_pixel_size=input_px,
                                            phase_flip=stack.ctf() is not None))
    key = model_cache_key(cfg.reference, cfg.reference_chains, imaging.summary(), tcfg, cfg.seed)
    stage_cfg = {"reference": cfg.reference, "chains": cfg.reference_chains, "key": key}
    if stages._recorded("train", stage_cfg) is not None:
        return _absolute(stages.run("train", stage_cfg, TrainStageResult, None), stages.outdir)
    target = stages.outdir / "train"
    target.mkdir(exist_ok=True)
    (target / "figures").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    cached = find_cached_model(key)
    if cached is not None:
        shutil.copyfile(cached, target / "model.pt")
        from .io import load_checkpoint

        info = load_checkpoint(cached)["summary"]
        final = info.get("final", {})
        weak = bool(info.get("weak", False))
        result = TrainStageResult("train/model.pt", "trained (from the cache)", final.get("val_median_deg"),
                                  final.get("val_within_15deg"), final.get("val_mae"), weak,
                                  _weak_warning(final, tcfg.weak_median_deg) if weak else None,
                                  final.get("val_consensus_median_deg"))
    else:
        resume = (target / "checkpoint.pt").is_file()
        if not resume:
            (target / "metrics.jsonl").unlink(missing_ok=True)
        summary = {"reference": cfg.reference, "imaging": imaging.summary(), "cache_key": key}
        steps = tcfg.max_epochs * tcfg.steps_per_epoch
        tr = train_on_reference(reference, imaging, tcfg, target, resume=resume, seed=cfg.seed,
                                summary=summary, device=device, progress=progress(steps))
        (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target / "model.pt", cache_dir() / "models" / f"{key}.pt")
        result = TrainStageResult("train/model.pt", "trained", tr.final.get("val_median_deg"),
                                  tr.final.get("val_within_15deg"), tr.final.get("val_mae"), tr.weak,
                                  tr.warning(tcfg.weak_median_deg), tr.final.get("val_consensus_median_deg"))
    write_json(target / "stage.json", {"config_digest": _digest(stage_cfg), "result": asdict(result),
                                       "seconds": round(time.perf_counter() - t0, 2)})
    return _absolute(result, stages.outdir)


def _absolute(result: TrainStageResult, outdir: Path) -> TrainStageResult:
    return replace(result, model=str(outdir / result.model))


def _weak_warning(final: dict, threshold: float) -> str:
    return (f"the distance model is too weak to trust: validation median error "
            f"{final.get('val_median_deg', math.nan):.0f}° (above {threshold:.0f}°)")


def _recover(d: Path, cfg: PipelineConfig, blind: ParticleStack, truth: Truth | None, model_path: Path,
             reference: torch.Tensor | None, device) -> RecoverStageResult:
    from .distance.predict import model_source

    g = torch.Generator().manual_seed(cfg.seed)
    source, nn = model_source(blind, model_path, cfg.recover.neighbours, device=device, symmetry=cfg.recover.symmetry)
    outcome = run_recovery(blind, source, cfg.recover, g, nn, device=device)
    hand, hand_margin = "undetermined", None
    if reference is not None:
        # the reference's frame and hand, from the data: the map at these poses against the reference
        res = max(15.0, 3 * blind.pixel_size)
        framed = to_reference_frame(blind, outcome.rotations, outcome.origins_angstrom, reference, res, g,
                                    device)
        outcome = replace(outcome, rotations=framed.rotations, origins_angstrom=framed.origins_angstrom)
        hand, hand_margin = "as reference", framed.alignment.hand_margin
        write_json(d / "frame.json", framed.metrics())
    metrics = write_recovery(outcome, blind, d, truth, cfg.recover.symmetry)
    result = RecoverStageResult(outcome.ambiguity.margin, outcome.recovery.loss, hand, hand_margin)
    if truth is not None:
        ev = metrics["evaluation"]
        result = replace(result, median_error_deg=ev["rotation_error"]["median_deg"],
                         mean_error_deg=ev["rotation_error"]["mean_deg"],
                         p90_error_deg=ev["rotation_error"]["p90_deg"],
                         o4_median_error_deg=ev["o4_diagnostic"]["median_deg"], hand_vs_truth=ev["hand"])
        if "evaluation_before_refinement" in metrics:
            result = replace(result, median_error_before_refinement_deg=metrics[
                "evaluation_before_refinement"]["rotation_error"]["median_deg"])
    return result


def _portable(path: str | Path, outdir: Path) -> str:
    """A path as recorded in a stage's configuration: relative when inside the run directory
    (so that a copied or moved run directory still matches)."""
    try:
        return str(Path(path).resolve().relative_to(outdir.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def three_line_summary(summary: RunSummary, outdir: Path) -> list[str]:
    head = f"{summary.n_particles} particles (box {summary.box}, {summary.pixel_size} Å/px)"
    report = f"{summary.wall_time_s:.0f} s; report: {outdir / 'report.html'}"
    if summary.refine is not None:
        r = summary.refine
        a = summary.abinitio
        start = summary.reference
        if a is not None and a.abinitio_worst_agreement_angstrom is None:
            start = "an ab initio map (one random start: nothing to check it against)"
        elif a is not None:
            start = (f"an ab initio map ({a.abinitio_seeds} random starts "
                     + ("agree" if a.abinitio_seeds_agree else "DISAGREE")
                     + f" to {a.abinitio_worst_agreement_angstrom:.0f} Å)")
        if a is not None and summary.reference is not None:
            start += f" in the frame and hand of {summary.reference}"
        lines = [f"{head}; refined from {start} low-passed to {r.start_resolution_angstrom:.0f} Å "
                 f"in {r.rounds} rounds; median confidence {r.confidence_median:.2f}"]
        if r.median_error_deg is not None:
            hand = f"hand {r.hand_vs_truth}" + ("" if summary.reference is not None else " (no reference fixes it)")
            lines.append(f"orientations: median error {r.median_error_deg:.2f}°, 90th pct {r.p90_error_deg:.1f}° "
                         f"(vs truth), {hand}")
        elif summary.reference is not None:
            lines.append("orientations: in the reference's frame and hand (no true angles to compare with)")
        else:
            lines.append("orientations: in the initial map's frame and one of the two hands (no reference fixes "
                         "them; no true angles to compare with)")
        vs_truth = (f", {r.resolution_vs_truth_angstrom:.1f} Å vs truth (FSC 0.5; true poses "
                    f"{r.truth_reference_resolution_angstrom:.1f} Å)" if r.resolution_vs_truth_angstrom else "")
        if r.resolution_angstrom is not None:
            lines.append(f"map: {r.resolution_angstrom:.1f} Å (gold-standard FSC 0.143){vs_truth}; {report}")
        elif not r.poses_agree:
            lines.append(f"map: NO RESOLUTION: the two half maps do not determine the same poses (chosen by "
                         f"noise: the particles cannot be aligned against this reference){vs_truth}; {report}")
        elif not r.matches_reference:
            lines.append(f"map: NO RESOLUTION: the particles' map does not match the reference (FSC "
                         f"{r.fsc_vs_reference_at_start:.2f} up to "
                         f"{r.reference_resolution_angstrom or r.start_resolution_angstrom:.0f} Å){vs_truth}; "
                         f"{report}")
        else:
            lines.append(f"map: NO RESOLUTION: the half maps do not agree beyond the start "
                         f"({r.start_resolution_angstrom:.0f} Å){vs_truth}; {report}")
        return lines
    rec, recon = summary.recover, summary.reconstruct
    lines = [f"{head}; distances: {summary.distances}; ambiguity margin {rec.ambiguity_margin:.2f}; "
             f"hand {rec.hand}"]
    if rec.median_error_deg is not None:
        extra = ""
        if rec.median_error_before_refinement_deg is not None:
            extra = f" ({rec.median_error_before_refinement_deg:.1f}° before local refinement)"
        lines.append(f"orientations: median error {rec.median_error_deg:.2f}°{extra}, "
                     f"90th pct {rec.p90_error_deg:.1f}°, hand {rec.hand_vs_truth} (vs truth)")
    else:
        lines.append("orientations: recovered (no true angles to compare with)")
    vs_truth = (f", {recon.resolution_vs_truth_angstrom:.1f} Å vs truth (FSC 0.5)"
                if recon.resolution_vs_truth_angstrom else "")
    lines.append(f"map: {recon.resolution_halves_angstrom:.1f} Å (half maps, FSC 0.143){vs_truth}; {report}")
    return lines
