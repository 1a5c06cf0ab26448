"""``cryorient run``: the whole method in one run directory, stage by stage.

    simulate (or --particles) -> train (with --reference; cached) -> recover -> reconstruct

Each stage writes its own subdirectory, atomically (staged and renamed when complete), and
records the configuration it ran with (``stage.json``). Re-running the same command skips
completed stages, resumes an interrupted training from its checkpoint, and refuses to mix
stages made with another configuration. Models trained on a reference are cached by the
reference's content, the stack's imaging parameters and the training configuration, so a
rerun (or another run on the same data) does not retrain; models shipped with the package
(for the demo) are found the same way.
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .density import DensityOptions, load_volume
from .distance.data import imaging_from_stack
from .distance.predict import model_source
from .distance.preprocess import default_input
from .distance.train import TrainConfig, train_on_reference
from .errors import CryorientError
from .orientation.run import RecoverConfig, run_recovery, write_recovery
from .particles import ParticleStack, read_particles, write_particles
from .reconstruct.run import ReconstructOptions, reconstruct, write_reconstruction
from .rundir import staged_directory, to_plain, write_json
from .simulate.run import run_simulation
from .simulate.simulator import SimulationConfig
from .structure import DEFAULT_STRUCTURE, resolve_structure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    particles: str | None = None  # a RELION particle STAR; None: simulate
    structure: str = DEFAULT_STRUCTURE
    density: DensityOptions = field(default_factory=DensityOptions)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    reference: str | None = None  # train a model on this structure/map; None: shipped model
    reference_chains: tuple[str, ...] | None = None
    model: str | None = None  # an existing model.pt (overrides reference)
    train: TrainConfig = field(default_factory=TrainConfig)
    recover: RecoverConfig = field(default_factory=lambda: RecoverConfig(refine_rounds=3))
    reconstruct: ReconstructOptions = field(default_factory=ReconstructOptions)
    truth_map: str | None = None  # ground-truth map for the FSC (simulations use their own)
    seed: int = 0


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(to_plain(obj), sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("CRYORIENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cryorient")
    return Path(base)


def _shipped_models() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("cryorient") / "data" / "models"))


def model_cache_key(reference: str, chains, stack: ParticleStack, snr: float, cfg: TrainConfig) -> str:
    path = resolve_structure(reference)
    content = hashlib.sha256(path.read_bytes()).hexdigest()
    # the SNR enters as its half-octave (log2 rounded to 0.5), robust to estimation jitter
    snr_class = round(2 * math.log2(snr)) / 2 if snr > 0 and math.isfinite(snr) else "inf"
    imaging = {"box": stack.box, "pixel_size": round(stack.pixel_size, 4), "ctf": stack.ctf() is not None,
               "snr_log2": snr_class}
    return _digest({"reference": content, "chains": chains, "imaging": imaging, "train": cfg})


def find_cached_model(key: str) -> Path | None:
    for root in (cache_dir() / "models", _shipped_models()):
        candidate = root / f"{key}.pt"
        if candidate.is_file():
            return candidate
    return None


class Stages:
    """Stage directories of one run: skip what is done, refuse what does not match."""

    def __init__(self, outdir: Path):
        self.outdir = outdir
        outdir.mkdir(parents=True, exist_ok=True)
        self.skipped: list[str] = []

    def done(self, name: str, config) -> bool:
        marker = self.outdir / name / "stage.json"
        if not marker.is_file():
            return False
        recorded = json.loads(marker.read_text()).get("config_digest")
        if recorded != _digest(config):
            raise CryorientError(f"{self.outdir / name} was made with another configuration; rerun with "
                                 "--overwrite or use another --outdir")
        self.skipped.append(name)
        log.info("stage %s: done earlier, skipped", name)
        return True

    def mark(self, directory: Path, config, seconds: float, **info) -> None:
        write_json(directory / "stage.json", {"config_digest": _digest(config), "seconds": round(seconds, 2),
                                              **info})

    def info(self, name: str) -> dict:
        return json.loads((self.outdir / name / "stage.json").read_text())

    def run(self, name: str, config, fn: Callable[[Path], None]) -> Path:
        """Run ``fn(staging_dir)`` unless done; the directory appears only when complete."""
        target = self.outdir / name
        if self.done(name, config):
            return target
        if target.exists():  # no stage.json: an older incomplete attempt
            shutil.rmtree(target)
        t0 = time.perf_counter()
        with staged_directory(target) as stage:
            (stage / "figures").mkdir()
            fn(stage)
            self.mark(stage, config, time.perf_counter() - t0)
        return target


def _train_stage(stages: Stages, cfg: PipelineConfig, stack: ParticleStack, generator: torch.Generator,
                 progress: Callable[[], Callable[[int], None] | None]) -> tuple[Path, str]:
    """Train (or fetch from the cache) a model on ``cfg.reference`` for this stack; ``progress()``
    makes the progress callback when training does happen."""
    imaging = imaging_from_stack(stack, generator=torch.Generator().manual_seed(cfg.seed))
    size, input_px = default_input(stack.box, stack.pixel_size, cfg.train.model.input_size)
    tcfg = replace(cfg.train, model=replace(cfg.train.model, input_size=size, input_pixel_size=input_px,
                                            phase_flip=stack.ctf() is not None))
    key = model_cache_key(cfg.reference, cfg.reference_chains, stack, imaging.snr, tcfg)
    stage_cfg = {"reference": cfg.reference, "chains": cfg.reference_chains, "key": key}
    target = stages.outdir / "train"
    if stages.done("train", stage_cfg):
        return target / "model.pt", stages.info("train").get("origin", "trained")
    target.mkdir(exist_ok=True)
    (target / "figures").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    cached = find_cached_model(key)
    if cached is not None:
        shutil.copyfile(cached, target / "model.pt")
        origin = "trained (from the cache)"
    else:
        volume = load_volume(cfg.reference, DensityOptions(box=stack.box, pixel_size=stack.pixel_size,
                                                           chains=cfg.reference_chains))
        resume = (target / "checkpoint.pt").is_file()
        if not resume:
            (target / "metrics.jsonl").unlink(missing_ok=True)
        summary = {"reference": cfg.reference, "imaging": imaging.summary(), "cache_key": key}
        train_on_reference(volume, imaging, tcfg, target, resume=resume, seed=cfg.seed, summary=summary,
                           progress=progress())
        (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target / "model.pt", cache_dir() / "models" / f"{key}.pt")
        origin = "trained"
    stages.mark(target, stage_cfg, time.perf_counter() - t0, origin=origin)
    return target / "model.pt", origin


def _portable(path: str | Path, outdir: Path) -> str:
    """A path as recorded in a stage's configuration: relative when inside the run directory
    (so that a copied or moved run directory still matches)."""
    try:
        return str(Path(path).resolve().relative_to(outdir.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def run_pipeline(cfg: PipelineConfig, outdir: Path, generator: torch.Generator,
                 progress: Callable[[str, int | None], Callable[[int], None]] | None = None) -> dict:
    """Run every stage into ``outdir``; returns the summary (also written to summary.json)."""
    stages = Stages(outdir)
    t_start = time.perf_counter()

    def bar(name: str, total: int | None):
        return progress(name, total) if progress is not None else None

    # 1. particles
    if cfg.particles is None:
        sim_cfg = {"structure": cfg.structure, "density": cfg.density, "simulation": cfg.simulation,
                   "seed": cfg.seed}
        sim_dir = stages.run("simulate", sim_cfg, lambda d: run_simulation(
            cfg.structure, cfg.density, cfg.simulation, d, torch.Generator().manual_seed(cfg.seed),
            bar("simulate", cfg.simulation.n_particles)))
        star = sim_dir / "particles.star"
        truth_map = cfg.truth_map or str(sim_dir / "volume.mrc")
    else:
        star = Path(cfg.particles)
        truth_map = cfg.truth_map
    stack = read_particles(star)

    # 2. distances: a given model, a reference-trained one, or the shipped library model
    if cfg.model is not None:
        model_path, model_origin = Path(cfg.model), "given"
    elif cfg.reference is not None:
        steps = cfg.train.epochs * cfg.train.steps_per_epoch
        model_path, model_origin = _train_stage(stages, cfg, stack, generator, lambda: bar("train", steps))
    else:
        model_path, model_origin = None, "shipped library model"

    # 3. recovery (+ ambiguity, polish, shifts, local refinement)
    model_digest = hashlib.sha256(model_path.read_bytes()).hexdigest()[:16] if model_path else "shipped"
    rec_cfg = {"recover": cfg.recover, "model": model_digest, "seed": cfg.seed}

    def recover_fn(d: Path) -> None:
        source, nn = model_source(stack, str(model_path) if model_path else None, cfg.recover.neighbours)
        outcome = run_recovery(stack, source, cfg.recover, torch.Generator().manual_seed(cfg.seed), nn)
        write_recovery(outcome, stack, d)

    rec_dir = stages.run("recover", rec_cfg, recover_fn)
    recovered = read_particles(rec_dir / "orientations.star")

    # 4. reconstruction (in the recovered frame; with the truth, also in the truth's frame)
    truth_available = truth_map is not None and Path(truth_map).is_file() and \
        (rec_dir / "orientations_aligned.star").is_file()
    recon_cfg = {"reconstruct": cfg.reconstruct, "seed": cfg.seed,
                 "truth_map": _portable(truth_map, outdir) if truth_available else None}

    def reconstruct_fn(d: Path) -> None:
        from .reconstruct.run import load_reference

        result = reconstruct(recovered, recovered.rotations(), cfg.reconstruct,
                             torch.Generator().manual_seed(cfg.seed), None, bar("reconstruct", recovered.n))
        metrics = {"recovered_frame": result.metrics()}
        write_reconstruction(result, d)
        if truth_available:
            aligned = read_particles(rec_dir / "orientations_aligned.star")
            reference = load_reference(truth_map, aligned.box, aligned.pixel_size)
            in_truth = reconstruct(aligned, aligned.rotations(), replace(cfg.reconstruct, halves=False),
                                   torch.Generator().manual_seed(cfg.seed), reference)
            aligned_dir = d / "truth_frame"
            (aligned_dir / "figures").mkdir(parents=True)
            write_reconstruction(in_truth, aligned_dir, reference)
            metrics["truth_frame"] = in_truth.metrics()
        write_json(d / "metrics.json", metrics)

    recon_dir = stages.run("reconstruct", recon_cfg, reconstruct_fn)

    # 5. final files and summary
    write_particles(recovered, outdir / "particles.star")
    shutil.copyfile(recon_dir / "reconstruction.mrc", outdir / "map.mrc")
    rec_metrics = json.loads((rec_dir / "metrics.json").read_text())
    recon_metrics = json.loads((recon_dir / "metrics.json").read_text())
    summary = {
        "particles": str(star), "n_particles": stack.n, "box": stack.box, "pixel_size": stack.pixel_size,
        "distances": model_origin,
        "reference": cfg.reference, "model": str(model_path) if model_path else None,
        "ambiguity_margin": rec_metrics["ambiguity"]["margin"],
        "recovery_loss": rec_metrics["final_loss"],
        "resolution_halves_angstrom": recon_metrics["recovered_frame"].get("resolution_halves_0143_angstrom"),
        "stages_skipped": stages.skipped,
        "wall_time_s": round(time.perf_counter() - t_start, 1),
    }
    if "evaluation" in rec_metrics:
        ev = rec_metrics["evaluation"]
        summary.update(median_error_deg=ev["rotation_error"]["median_deg"],
                       mean_error_deg=ev["rotation_error"]["mean_deg"],
                       p90_error_deg=ev["rotation_error"]["p90_deg"], hand=ev["hand"],
                       o4_median_error_deg=ev["o4_diagnostic"]["median_deg"])
        before = rec_metrics.get("evaluation_before_refinement")
        if before:
            summary["median_error_before_refinement_deg"] = before["rotation_error"]["median_deg"]
    if "truth_frame" in recon_metrics:
        summary["resolution_vs_truth_angstrom"] = recon_metrics["truth_frame"].get(
            "resolution_vs_reference_05_angstrom")
    write_json(outdir / "summary.json", summary)
    return summary


def three_line_summary(summary: dict, outdir: Path) -> list[str]:
    lines = [f"{summary['n_particles']} particles (box {summary['box']}, {summary['pixel_size']} Å/px); "
             f"distances: {summary['distances']}; ambiguity margin {summary['ambiguity_margin']:.2f}"]
    if "median_error_deg" in summary:
        extra = ""
        if "median_error_before_refinement_deg" in summary:
            extra = f" ({summary['median_error_before_refinement_deg']:.1f}° before local refinement)"
        lines.append(f"orientations: median error {summary['median_error_deg']:.2f}°{extra}, "
                     f"90th pct {summary['p90_error_deg']:.1f}°, hand {summary['hand']}")
    else:
        lines.append("orientations: recovered (no true angles to compare with)")
    res = summary.get("resolution_halves_angstrom")
    truth = summary.get("resolution_vs_truth_angstrom")
    vs_truth = f", {truth:.1f} Å vs truth (FSC 0.5)" if truth else ""
    lines.append(f"map: {res:.1f} Å (half maps, FSC 0.143){vs_truth}; {summary['wall_time_s']:.0f} s; "
                 f"report: {outdir / 'report.html'}")
    return lines

