"""``cryorient recover``: orientations from pairwise distances, ambiguity resolved from the
images, shifts estimated; evaluated against the STAR's angles when present."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..orientation.ambiguity import AmbiguityOptions
from ..orientation.recover import RecoveryOptions
from ..orientation.run import RecoverConfig, run_recovery, write_recovery
from ..orientation.sources import make_source, parse_source
from ..particles import read_particles
from ..rundir import run_directory
from .common import HelpFormatter, add_run_options, add_star_pixel_size, progress, setup

EXAMPLES = """examples:
  cryorient recover --particles runs/sim/particles.star --distances true --outdir runs/rec_true
  cryorient recover --particles runs/sim/particles.star --distances perturbed:0.2 --outdir runs/rec_p
  cryorient recover --particles runs/sim/particles.star --distances euclidean --outdir runs/rec_e
  cryorient recover --particles runs/sim/particles.star --distances model:runs/train/model.pt \\
      --pairs-per-particle 128 --outdir runs/rec_model
"""


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="recover orientations from pairwise distances",
        description="Fit unit quaternions to pairwise distances (multilateration start, "
                    "Gauss-Newton refinement), resolve the distance-only ambiguity (transpose, common "
                    "right factor) from the images by common lines, estimate shifts against a "
                    "reconstruction. Writes orientations.star (the input STAR with recovered angles "
                    "and origins), orientations.npz, loss.csv, ambiguity.json and figures; with true "
                    "angles in the STAR also metrics.json and orientations_aligned.star.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--particles", required=True, help="particle STAR file")
    p.add_argument("--distances", default="true",
                   help="true | perturbed:S (S in radians) | euclidean | model[:PATH]")
    p.add_argument("--pairs-per-particle", type=int, default=None,
                   help="pair budget K per particle (default: all pairs up to 1000 particles, else 128)")
    p.add_argument("--anchors", type=int, default=48, help="anchor particles for the initialisation")
    p.add_argument("--neighbours", type=int, default=16,
                   help="nearest neighbours per particle in the model's embedding (model only)")
    p.add_argument("--restarts", type=int, default=2, help="restarts (lowest loss kept)")
    p.add_argument("--loss", choices=("l2", "huber"), default="l2", help="pair loss")
    p.add_argument("--cutoff", type=float, default=None, help="ignore pairs with target > cutoff (rad)")
    p.add_argument("--optimizer", choices=("gauss-newton", "adam"), default="gauss-newton")
    p.add_argument("--shifts", choices=("estimate", "keep", "zero"), default="estimate",
                   help="origins written to orientations.star: estimated against a reconstruction, "
                        "kept from the input, or zero")
    p.add_argument("--refine-rounds", type=int, default=0,
                   help="rounds of local refinement by reprojection after recovery (0: off)")
    p.add_argument("--ambiguity-images", type=int, default=2000,
                   help="images used to resolve the ambiguity by common lines")
    p.add_argument("--model-batch-size", type=int, default=512, help="images per model batch")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate against the STAR's angles")
    add_star_pixel_size(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    generator = setup(args)
    kind, arg = parse_source(args.distances)
    cfg = RecoverConfig(
        distances=args.distances, pairs_per_particle=args.pairs_per_particle, n_anchors=args.anchors,
        neighbours=args.neighbours if kind == "model" else 0, shifts=args.shifts,
        refine_rounds=args.refine_rounds,
        recovery=RecoveryOptions(restarts=args.restarts, loss=args.loss, cutoff=args.cutoff,
                                 optimizer=args.optimizer),
        ambiguity=AmbiguityOptions(n_images=args.ambiguity_images))
    cfg.validate()
    stack = read_particles(args.particles, args.pixel_size)
    neighbours = None
    if kind == "model":
        from ..distance.predict import model_source

        source, neighbours = model_source(stack, arg, cfg.neighbours, args.model_batch_size)
    else:
        source = make_source(args.distances, stack, generator)
    outdir = Path(args.outdir)
    config = {"particles": args.particles, "recover": cfg}
    with run_directory(outdir, "recover", config, overwrite=args.overwrite, seed=args.seed) as stage:
        with progress(None, "recover", args.quiet, unit="step") as bar:
            outcome = run_recovery(stack, source, cfg, generator, neighbours, bar.update,
                                   evaluate_truth=not args.no_eval)
        metrics = write_recovery(outcome, stack, stage)
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
    print(f"wrote orientations.star and figures/ in {outdir}")
    return 0 if not math.isnan(outcome.recovery.loss) else 2
