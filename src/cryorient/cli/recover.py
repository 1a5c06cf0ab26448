"""``cryorient recover``: orientations from pairwise distances, ambiguity resolved from the
images, shifts estimated, refined locally; evaluated against the STAR's angles when present."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import AmbiguityConfig, LocalRefineConfig, RecoverConfig, RecoveryConfig, parse_distance_source
from ..errors import CryorientError
from .common import (
    HelpFormatter,
    add_device_option,
    add_run_options,
    add_star_pixel_size,
    progress,
    resolve_device,
    setup,
)

EXAMPLES = """examples:
  cryorient recover --particles runs/sim/particles.star --distances model:runs/train/model.pt \\
      --outdir runs/rec_model
  cryorient recover --particles runs/sim/particles.star --distances euclidean --outdir runs/rec_e
benchmark baselines (they read the true angles of the STAR):
  cryorient recover --particles runs/sim/particles.star --distances true --outdir runs/rec_true
  cryorient recover --particles runs/sim/particles.star --distances perturbed:0.2 --outdir runs/rec_p
"""

_D, _R, _A = RecoverConfig(), RecoveryConfig(), AmbiguityConfig()


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="recover orientations from pairwise distances",
        description="Fit unit quaternions to pairwise distances (multilateration start, "
                    "Gauss-Newton refinement), resolve the distance-only ambiguity (transpose, common "
                    "right factor) from the images by common lines, estimate shifts against a "
                    "reconstruction, refine locally against half maps. Writes orientations.star (the "
                    "input STAR with recovered angles, origins and rlnRandomSubset), orientations.npz, "
                    "loss.csv, ambiguity.json and figures; with true angles in the STAR also the "
                    "evaluation (metrics.json, orientations_aligned.star). The recovered frame and "
                    "hand are arbitrary (no reference): the evaluation aligns them to the truth.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--particles", required=True, help="particle STAR file")
    p.add_argument("--distances", default=_D.distances,
                   help="model:PATH (a model from 'cryorient train') | euclidean | the benchmark "
                        "baselines true and perturbed:S (S in radians), which read the STAR's true angles")
    p.add_argument("--pairs-per-particle", type=int, default=_D.pairs_per_particle,
                   help="pair budget K per particle (default: all pairs up to 5M pairs, else 5M / N per particle)")
    p.add_argument("--anchors", type=int, default=_D.n_anchors, help="anchor particles for the start")
    p.add_argument("--neighbours", type=int, default=_D.neighbours,
                   help="nearest neighbours per particle in the model's embedding (model only)")
    p.add_argument("--symmetry", default=_D.symmetry, type=str.upper,
                   help="the particles' point group (RELION's names: Cn, Dn, T, O, I): distances, recovery and "
                        "the evaluation are modulo the group")
    p.add_argument("--restarts", type=int, default=_R.restarts, help="restarts (lowest loss kept)")
    p.add_argument("--loss", choices=("l2", "huber"), default=_R.loss, help="pair loss")
    p.add_argument("--cutoff", type=float, default=_R.cutoff, help="ignore pairs with target > cutoff (rad)")
    p.add_argument("--optimizer", choices=("gauss-newton", "adam"), default=_R.optimizer)
    p.add_argument("--shifts", choices=("estimate", "zero"), default=_D.shifts,
                   help="origins: estimated against reconstructions, or zero")
    p.add_argument("--refine-rounds", type=int, default=_D.refine.rounds,
                   help="rounds of local refinement against half maps after recovery (0: the method only)")
    p.add_argument("--ambiguity-images", type=int, default=_A.n_images,
                   help="images used to resolve the ambiguity by common lines")
    p.add_argument("--model-batch-size", type=int, default=512, help="images per model batch")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate against the STAR's angles")
    add_device_option(p)
    add_star_pixel_size(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> RecoverConfig:
    kind, _ = parse_distance_source(args.distances)
    return RecoverConfig(
        distances=args.distances, pairs_per_particle=args.pairs_per_particle, n_anchors=args.anchors,
        neighbours=args.neighbours if kind == "model" else 0, shifts=args.shifts,
        refine=LocalRefineConfig(rounds=args.refine_rounds),
        recovery=RecoveryConfig(restarts=args.restarts, loss=args.loss, cutoff=args.cutoff,
                                optimizer=args.optimizer),
        ambiguity=AmbiguityConfig(n_images=args.ambiguity_images), symmetry=args.symmetry)


def run(args: argparse.Namespace) -> int:
    generator = setup(args)
    cfg = config_from_args(args)
    device = resolve_device(args.device)
    kind, arg = parse_distance_source(cfg.distances)
    if kind == "model" and not arg:
        raise CryorientError("--distances model needs a model file: model:PATH (from 'cryorient train'); "
                             "no library model ships with cryorient")
    from ..evaluation import truth_of
    from ..orientation.run import run_recovery, write_recovery
    from ..particles import read_particles
    from ..rundir import run_directory
    from ..symmetry import point_group

    stack = read_particles(args.particles, args.pixel_size)
    truth = truth_of(stack)
    blind = stack.blind().with_half_sets(generator)
    neighbours = None
    if kind == "model":
        from ..distance.predict import model_source

        source, neighbours = model_source(blind, arg, cfg.neighbours, args.model_batch_size, device=device,
                                          symmetry=cfg.symmetry)
    else:
        from ..orientation.sources import make_source

        source = make_source(cfg.distances, blind, generator, truth, point_group(cfg.symmetry))
    outdir = Path(args.outdir)
    config = {"particles": args.particles, "recover": cfg}
    with run_directory(outdir, "recover", config, overwrite=args.overwrite, seed=args.seed) as stage:
        with progress(None, "recover", args.quiet, unit="step") as bar:
            outcome = run_recovery(blind, source, cfg, generator, neighbours, bar.update, device)
        metrics = write_recovery(outcome, blind, stage, None if args.no_eval else truth, cfg.symmetry)
    t = outcome.timings
    amb = outcome.ambiguity
    print(f"recovered {stack.n} orientations from {len(outcome.pairs)} {kind} distances: L_OR "
          f"{outcome.recovery.loss:.3g}; ambiguity {'transposed' if amb.transposed else 'direct'} "
          f"branch, margin {amb.margin:.2f} ({sum(t.values()):.1f} s)")
    ev = metrics.get("evaluation")
    before = metrics.get("evaluation_before_refinement")
    if before:
        print(f"before local refinement: median error {before['rotation_error']['median_deg']:.2f}°")
    if ev:
        r = ev["rotation_error"]
        print(f"vs true angles: median error {r['median_deg']:.2f}° (mean {r['mean_deg']:.2f}°, 90th pct "
              f"{r['p90_deg']:.2f}°), hand {ev['hand']}; O(4) diagnostic median "
              f"{ev['o4_diagnostic']['median_deg']:.2f}°")
    else:
        print("frame and hand: arbitrary (recovered without a reference)")
    print(f"wrote orientations.star and figures/ in {outdir}")
    return 0
