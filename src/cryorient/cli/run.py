"""``cryorient run``: simulate (or take --particles) -> distances -> recover -> reconstruct,
with a report; ``cryorient demo`` is ``run`` with the demo's defaults."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from ..distance.model import ModelConfig
from ..distance.train import TrainConfig
from ..errors import CryorientError
from ..orientation.ambiguity import AmbiguityOptions
from ..orientation.recover import RecoveryOptions
from ..orientation.run import RecoverConfig
from ..pipeline import PipelineConfig, run_pipeline, three_line_summary
from ..reconstruct.backproject import DEFAULT_WIENER
from ..reconstruct.run import ReconstructOptions
from ..report import write_report
from ..rundir import run_info, write_json, write_yaml
from .common import HelpFormatter, add_run_options, parse_chains, progress, setup
from .simulate import add_simulation_options
from .simulate import config_from_args as simulation_from_args

EXAMPLES = """examples:
  cryorient run --reference 1ake_adk_closed --outdir runs/run1          # simulate, train, recover
  cryorient run --particles data/particles.star --reference model.cif --outdir runs/real
  cryorient run --particles data/particles.star --model runs/run1/train/model.pt --outdir runs/x
  cryorient run --config runs/run1/config.yaml --outdir runs/run1_again # reproduce a run
"""
RUN_KEYS = {"outdir", "overwrite", "quiet", "threads", "config", "func", "command"}


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML of option values (a run's config.yaml)")
    p.add_argument("--particles", default=None, help="a RELION particle STAR (default: simulate)")
    add_simulation_options(p)
    g = p.add_argument_group("distances")
    g.add_argument("--reference", default=None,
                   help="train the distance on this structure/map (cached); needed unless --model is "
                        "given (no library model ships yet, see docs/model.md)")
    g.add_argument("--reference-chains", type=parse_chains, default=None,
                   help="chains of the reference's atomic model to keep")
    g.add_argument("--model", default=None, help="use this trained model.pt instead")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--steps-per-epoch", type=int, default=100)
    g.add_argument("--train-batch-size", type=int, default=128)
    g.add_argument("--input-size", type=int, default=32, help="network input size in px")
    g.add_argument("--width", type=int, default=16, help="network width (first-stage channels)")
    g = p.add_argument_group("recovery and reconstruction")
    g.add_argument("--pairs-per-particle", type=int, default=None)
    g.add_argument("--restarts", type=int, default=2)
    g.add_argument("--refine-rounds", type=int, default=3,
                   help="local refinement by reprojection after recovery (0: the method only)")
    g.add_argument("--ambiguity-images", type=int, default=2000)
    g.add_argument("--wiener", type=float, default=DEFAULT_WIENER)
    g.add_argument("--truth-map", default=None,
                   help="ground-truth map for the FSC (a simulation uses its own volume.mrc)")


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="the whole pipeline: simulate/particles -> distances -> recover -> reconstruct",
        description="Run every stage into one run directory: simulate (unless --particles), train the "
                    "distance on --reference for this stack (cached; or use --model), recover "
                    "orientations, resolve the ambiguity, estimate shifts, "
                    "refine locally, reconstruct with half maps; evaluate when the STAR carries true "
                    "angles; write particles.star, map.mrc, summary.json and report.html. A rerun "
                    "skips finished stages.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    add_pipeline_options(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the YAML of ``--config`` as defaults (explicit flags win)."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        path = Path(pre.config)
        if not path.is_file():
            raise CryorientError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise CryorientError(f"cannot read config {path.name}: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise CryorientError(f"config {path.name} must be a mapping of option names to values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CryorientError(f"config {path.name} has unknown option(s) {', '.join(unknown)}")
        for key in ("chains", "reference_chains", "rot_range_deg", "psi_range_deg", "defocus_range_um"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        parser.set_defaults(**{k: v for k, v in values.items() if k not in RUN_KEYS})
    return parser.parse_args(argv)


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    density, simulation = simulation_from_args(args)
    simulation.validate()
    model = ModelConfig(width=args.width, input_size=args.input_size)
    train = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                        batch_size=args.train_batch_size, model=model)
    train.validate()
    recover = RecoverConfig(pairs_per_particle=args.pairs_per_particle, refine_rounds=args.refine_rounds,
                            recovery=RecoveryOptions(restarts=args.restarts),
                            ambiguity=AmbiguityOptions(n_images=args.ambiguity_images))
    recover.validate()
    if not args.wiener > 0:
        raise CryorientError(f"--wiener must be > 0, got {args.wiener}")
    return PipelineConfig(particles=args.particles, structure=args.structure, density=density,
                          simulation=simulation, reference=args.reference,
                          reference_chains=args.reference_chains, model=args.model, train=train,
                          recover=recover, reconstruct=ReconstructOptions(wiener=args.wiener),
                          truth_map=args.truth_map, seed=args.seed)


def resolved_options(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in RUN_KEYS}


def execute(args: argparse.Namespace, command: str) -> int:
    generator = setup(args)
    cfg = pipeline_config(args)
    outdir = Path(args.outdir)
    if outdir.exists() and args.overwrite:
        shutil.rmtree(outdir)
    if outdir.exists() and not (outdir / "config.yaml").is_file():
        raise CryorientError(f"output directory {outdir} exists and is not a cryorient run; use --overwrite "
                             "or another --outdir")
    if (outdir / "config.yaml").is_file():
        previous = yaml.safe_load((outdir / "config.yaml").read_text())
        current = yaml.safe_load(yaml.safe_dump(resolved_options(args)))
        if previous != current:
            raise CryorientError(f"{outdir} holds a run with other options; rerun it with --config "
                                 f"{outdir / 'config.yaml'}, or use --overwrite or another --outdir")

    def bar(name: str, total: int | None):
        return progress(total, name, args.quiet, unit="step" if name == "train" else "img").update

    outdir.mkdir(parents=True, exist_ok=True)
    write_yaml(outdir / "config.yaml", resolved_options(args))  # first: an interrupted run can resume
    summary = run_pipeline(cfg, outdir, generator, progress=bar)
    write_json(outdir / "run.json", run_info(command, None, args.seed))
    write_report(outdir)
    for line in three_line_summary(summary, outdir):
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    return execute(args, "run")

