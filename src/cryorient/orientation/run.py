"""``cryorient recover`` as library functions: distances -> orientations -> ambiguity ->
shifts, then files, figures and (when the STAR carries true angles) the evaluation."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..errors import CryorientError
from ..io import atomic_output, save_npz
from ..particles import ParticleStack, write_particles
from ..reconstruct.shifts import estimate_shifts
from ..rundir import write_json
from ..so3 import geodesic_distance, quat_to_rotmat, rotmat_angle, rotmat_to_quat
from .align import Evaluation, evaluate
from .ambiguity import AmbiguityOptions, AmbiguityResult, apply, refine_right_factor, resolve
from .pairs import PairSet, check_distances, choose_pairs
from .recover import RecoveryOptions, RecoveryResult, recover
from .refine import RefineOptions, reprojection_refine
from .sources import DistanceSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverConfig:
    distances: str = "true"
    pairs_per_particle: int | None = None  # None: all pairs up to N=1000, else 128
    n_anchors: int = 48
    neighbours: int = 0  # nearest neighbours per particle in the source's embedding (model)
    shifts: str = "estimate"  # estimate | keep | zero
    shift_iterations: int = 3
    refine_rounds: int = 0  # local refinement by reprojection after recovery (0: the method only)
    recovery: RecoveryOptions = field(default_factory=RecoveryOptions)
    ambiguity: AmbiguityOptions = field(default_factory=AmbiguityOptions)

    def validate(self) -> None:
        if self.pairs_per_particle is not None and self.pairs_per_particle < 1:
            raise CryorientError(f"--pairs-per-particle must be >= 1, got {self.pairs_per_particle}")
        if self.n_anchors < 5:
            raise CryorientError(f"--anchors must be >= 5, got {self.n_anchors}")
        if self.refine_rounds < 0:
            raise CryorientError(f"--refine-rounds must be >= 0, got {self.refine_rounds}")
        if self.shifts not in ("estimate", "keep", "zero"):
            raise CryorientError(f"--shifts must be estimate, keep or zero, got {self.shifts!r}")
        self.recovery.validate()


@dataclass(frozen=True)
class RecoverOutcome:
    rotations: torch.Tensor  # (N, 3, 3) final (ambiguity resolved), in the recovery's frame
    origins_angstrom: torch.Tensor  # (N, 2)
    recovery: RecoveryResult
    ambiguity: AmbiguityResult
    pairs: PairSet
    timings: dict
    evaluation: Evaluation | None = None
    evaluation_before_refinement: Evaluation | None = None


def pair_distances(source: DistanceSource, pairs: PairSet) -> PairSet:
    d = torch.cat([source.distances(pairs.i[k:k + 262144], pairs.j[k:k + 262144])
                   for k in range(0, len(pairs), 262144)]).float()
    if source.checked:
        check_distances(d, f"{source.name} distances")
    return pairs.with_distances(d)


def run_recovery(stack: ParticleStack, source: DistanceSource, cfg: RecoverConfig,
                 generator: torch.Generator, neighbours: torch.Tensor | None = None,
                 progress: Callable[[int], None] | None = None, evaluate_truth: bool = True
                 ) -> RecoverOutcome:
    """Recover the orientations of ``stack`` from ``source``'s distances (no ground truth is
    read unless the source itself is ``true``/``perturbed``; evaluation comes last)."""
    cfg.validate()
    timings = {}
    t0 = time.perf_counter()
    pairs = choose_pairs(stack.n, generator, cfg.pairs_per_particle, cfg.n_anchors, neighbours)
    pairs = pair_distances(source, pairs)
    timings["distances_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = recover(pairs, cfg.recovery, generator, progress)
    timings["recovery_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = quat_to_rotmat(result.quaternions)
    m = min(stack.n, cfg.ambiguity.n_images)
    subset = np.sort(torch.randperm(stack.n, generator=generator)[:m].numpy())
    ctf = stack.ctf()
    sub_ctf = ctf.subset(torch.as_tensor(subset)) if ctf is not None else None
    images = stack.images.read(subset)
    amb = resolve(raw[subset], images, cfg.ambiguity, generator, sub_ctf, stack.pixel_size)
    if cfg.ambiguity.polish_images > 0:
        k = min(len(subset), cfg.ambiguity.polish_images)
        delta = refine_right_factor(amb.rotations[:k], images[:k], generator,
                                    sub_ctf.subset(slice(0, k)) if sub_ctf is not None else None,
                                    stack.pixel_size)
        amb = replace(amb, right_factor=amb.right_factor @ delta, rotations=amb.rotations @ delta,
                      polish_deg=math.degrees(float(rotmat_angle(delta))))
    rotations = apply(raw, amb.transposed, amb.right_factor)
    timings["ambiguity_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if cfg.shifts == "estimate":
        origins = estimate_shifts(stack, rotations, cfg.shift_iterations)
    elif cfg.shifts == "keep":
        origins = stack.shifts_angstrom()
    else:
        origins = torch.zeros(stack.n, 2)
    timings["shifts_s"] = time.perf_counter() - t0
    unrefined = None
    if cfg.refine_rounds > 0:
        t0 = time.perf_counter()
        unrefined = rotations
        rotations, refined_origins = reprojection_refine(
            stack, rotations, origins, generator, RefineOptions(rounds=cfg.refine_rounds), progress=None)
        if cfg.shifts == "estimate":
            origins = refined_origins
        timings["refine_s"] = time.perf_counter() - t0
    evaluation = before = None
    if evaluate_truth and stack.has_orientations():
        evaluation = evaluate(rotations, stack.rotations())
        if unrefined is not None:
            before = evaluate(unrefined, stack.rotations())
    return RecoverOutcome(rotations, origins, result, amb, pairs, timings, evaluation, before)


def write_recovery(outcome: RecoverOutcome, stack: ParticleStack, outdir: Path) -> dict:
    """orientations.star/.npz, loss.csv, ambiguity.json, metrics.json and figures."""
    figs = outdir / "figures"
    write_particles(stack.with_orientations(outcome.rotations, outcome.origins_angstrom),
                    outdir / "orientations.star")
    save_npz(outdir / "orientations.npz", quaternions=rotmat_to_quat(outcome.rotations),
             raw_quaternions=outcome.recovery.quaternions, origins_angstrom=outcome.origins_angstrom,
             transposed=np.array(outcome.ambiguity.transposed),
             right_factor=outcome.ambiguity.right_factor, pair_i=outcome.pairs.i,
             pair_j=outcome.pairs.j, pair_distance=outcome.pairs.d)
    history = outcome.recovery.history
    with atomic_output(outdir / "loss.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss"])
        w.writerows([k, f"{v:.8g}"] for k, v in enumerate(history))
    write_json(outdir / "ambiguity.json", outcome.ambiguity.metrics())
    plots.curves([("L_OR (mean squared distance error, rad^2)", np.arange(len(history)), history)],
                 figs / "loss.png", "refinement step", "loss", title="Orientation recovery",
                 logy=bool(len(history) and min(history) > 0))
    metrics = {
        "n_particles": stack.n,
        "n_pairs": len(outcome.pairs),
        "final_loss": outcome.recovery.loss,
        "init_loss": outcome.recovery.init_loss,
        "restart_losses": outcome.recovery.restart_losses,
        "ambiguity": outcome.ambiguity.metrics(),
        "timings_s": {k: round(v, 3) for k, v in outcome.timings.items()},
    }
    ev = outcome.evaluation
    if ev is not None:
        truth = stack.rotations()
        metrics["evaluation"] = ev.metrics()
        if outcome.evaluation_before_refinement is not None:
            metrics["evaluation_before_refinement"] = outcome.evaluation_before_refinement.metrics()
        if "rlnOriginXAngst" in stack.particles.columns:
            err = (outcome.origins_angstrom - stack.shifts_angstrom()).norm(dim=1) / stack.pixel_size
            metrics["evaluation"]["shift_error_px"] = {"median": float(err.median()),
                                                       "mean": float(err.mean())}
        q_true = rotmat_to_quat(truth)
        true_d = geodesic_distance(q_true[outcome.pairs.i], q_true[outcome.pairs.j])
        metrics["distance_error"] = {"mae_rad": float((outcome.pairs.d - true_d).abs().mean()),
                                     "rmse_rad": float(((outcome.pairs.d - true_d) ** 2).mean().sqrt())}
        write_particles(stack.with_orientations(ev.aligned.float(), outcome.origins_angstrom),
                        outdir / "orientations_aligned.star")
        errs = {k: np.rad2deg(v.numpy()) for k, v in ev.errors.items()}
        med = float(np.median(errs["rotation"]))
        plots.histogram([("rotation", errs["rotation"]), ("viewing direction", errs["direction"]),
                         ("in-plane", errs["in_plane"])], figs / "errors.png",
                        "angular error after physical alignment (degrees)",
                        title="Recovered vs true orientations", markers=[(med, f"median {med:.2f}°")])
        plots.viewing_directions([("true", truth), ("recovered (aligned)", ev.aligned.float())],
                                 figs / "viewing_directions.png",
                                 title="Viewing directions: recovered (aligned) vs true")
        sample = torch.randperm(len(outcome.pairs))[:200000]
        plots.hist2d(true_d[sample].numpy(), outcome.pairs.d[sample].numpy(), figs / "distances.png",
                     "true distance (rad)", "target distance (rad)",
                     title=f"{outcome.pairs.d.shape[0]} pair distances")
    write_json(outdir / "metrics.json", metrics)
    return metrics
