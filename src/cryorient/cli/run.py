"""``cryorient run``: simulate (or take --particles) -> distances -> recover -> reconstruct,
with a report; ``cryorient demo`` is ``run`` with the demo's defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import (
    AbInitioConfig,
    AmbiguityConfig,
    LocalRefineConfig,
    ModelConfig,
    PipelineConfig,
    ReconstructConfig,
    RecoverConfig,
    RecoveryConfig,
    RefineConfig,
    TrainConfig,
)
from ..errors import CryorientError
from .common import (
    HelpFormatter,
    add_device_option,
    add_run_options,
    parse_chains,
    parse_positive,
    progress,
    resolve_device,
    setup,
)
from .simulate import add_simulation_options
from .simulate import config_from_args as simulation_from_args

EXAMPLES = """examples:
  cryorient run --reference 1ake_adk_closed --outdir runs/run1          # simulate, train, recover
  cryorient run --particles data/particles.star --reference model.cif --outdir runs/real
  cryorient run --particles data/particles.star --outdir runs/denovo     # initial map from the particles
  cryorient run --particles data/particles.star --model runs/run1/train/model.pt --outdir runs/x
  cryorient run --config runs/run1/config.yaml --outdir runs/run1_again # reproduce a run
"""
RUN_KEYS = {"outdir", "overwrite", "quiet", "threads", "config", "func", "command", "device"}
_T, _M, _R, _A, _C = TrainConfig(), ModelConfig(), RecoverConfig(), AmbiguityConfig(), ReconstructConfig()
_F, _I = RefineConfig(), AbInitioConfig()


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML of option values (a run's config.yaml)")
    p.add_argument("--particles", default=None,
                   help="a RELION particle STAR (default: simulate)")
    add_simulation_options(p)
    p.add_argument("--method", choices=("refine", "distances"), default="refine",
                   help="refine: gold-standard refinement from the reference (independent half sets, "
                        "resolution raised round by round); distances: the original method (learned "
                        "distances, orientation recovery)")
    g = p.add_argument_group("refinement (--method refine)")
    g.add_argument("--initial-lowpass", type=parse_positive, default=_F.initial_lowpass,
                   help="the resolution (Å) the reference is trusted to: --start reference low-passes it "
                        "to this before the first round; --start particles checks the particles' map "
                        "against it up to here (and starts from their own map at this or 40 Å)")
    g.add_argument("--max-rounds", type=int, default=_F.max_rounds)
    g.add_argument("--poses", choices=("network", "search"), default=_F.poses,
                   help="search: the exhaustive global search while the resolution is coarse, then local "
                        "refinement; network: also a network trained on each half's map proposes poses "
                        "(the best-scoring candidate wins; see docs/benchmarks.md for when it pays)")
    g.add_argument("--symmetry", default=_F.symmetry, type=str.upper,
                   help="point group of the particle, RELION's names (C1, Cn, Dn, T, O, I); the maps are "
                        "symmetrised and the reference must be in RELION's symmetry frame (both methods: with "
                        "--method distances, the distances are modulo the group)")
    g.add_argument("--relax-symmetry", action="store_true",
                   help="after refining with --symmetry, continue in C1 with each particle choosing its best "
                        "symmetry mate (pseudo-symmetric oligomers)")
    g.add_argument("--round-minutes", type=parse_positive, default=_F.train_minutes,
                   help="the network's training budget per half in the first round (later rounds fine-tune "
                        f"for {_F.finetune_minutes:g} min)")
    g.add_argument("--start", choices=("auto", "particles", "reference"), default="auto",
                   help="what round 0 starts from when --reference is given: particles: an initial map made "
                        "from the particles alone, put in the reference's frame and hand (a 60 Å map, a "
                        "model missing a chain or of another protein cannot bias it; the final map must "
                        "match the reference for a resolution to be reported); reference: the reference "
                        "low-passed to --initial-lowpass, as RELION's auto-refine; auto: particles in C1, "
                        "reference with --symmetry")
    g = p.add_argument_group("initial map (--method refine without --reference, or --start particles)")
    g.add_argument("--abinitio-seeds", type=int, default=_I.seeds,
                   help="independent random starts; their maps must agree for the initial map to be trusted")
    g.add_argument("--abinitio-iterations", type=int, default=_I.iterations,
                   help="expectation-maximisation iterations per start (random batches of particles)")
    g = p.add_argument_group("distances (--method distances)")
    g.add_argument("--reference", default=None,
                   help="train the distance on this structure/map (cached); a run needs it or --model "
                        "(no library model ships, see docs/model.md)")
    g.add_argument("--reference-chains", type=parse_chains, default=None,
                   help="chains of the reference's atomic model to keep")
    g.add_argument("--model", default=None, help="use this trained model.pt instead")
    g.add_argument("--minutes", type=parse_positive, default=_T.minutes,
                   help="training time budget (training also stops when the validation stops improving)")
    g.add_argument("--max-epochs", type=int, default=_T.max_epochs)
    g.add_argument("--steps-per-epoch", type=int, default=_T.steps_per_epoch)
    g.add_argument("--train-batch-size", type=int, default=_T.batch_size)
    g.add_argument("--input-size", type=int, default=_M.input_size, help="network input size in px")
    g.add_argument("--width", type=int, default=_M.width, help="network width (first-stage channels)")
    g.add_argument("--hypotheses", type=int, default=_M.hypotheses,
                   help="pose hypotheses per image (rotation head); also the networks of --poses network, whose "
                        "hypotheses are each a candidate pose")
    g = p.add_argument_group("recovery and reconstruction")
    g.add_argument("--pairs-per-particle", type=int, default=_R.pairs_per_particle)
    g.add_argument("--restarts", type=int, default=_R.recovery.restarts)
    g.add_argument("--refine-rounds", type=int, default=_R.refine.rounds,
                   help="local refinement against half maps after recovery (0: the method only)")
    g.add_argument("--ambiguity-images", type=int, default=_A.n_images)
    g.add_argument("--wiener", type=parse_positive, default=_C.wiener)
    g.add_argument("--truth-map", default=None,
                   help="ground-truth map for the FSC (a simulation uses its own volume.mrc)")
    add_device_option(p)


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="the whole pipeline: simulate/particles -> refine (or distances -> recover) -> reconstruct",
        description="Run every stage into one run directory: simulate (unless --particles); then "
                    "--method refine (the default): gold-standard refinement from --reference (without one: "
                    "from an initial map made from the particles alone, by expectation-maximisation from "
                    "--abinitio-seeds random starts) low-passed to --initial-lowpass, half sets with their own maps, "
                    "global search then local "
                    "refinement, rounds driven by the half maps' FSC (--symmetry for point groups); or "
                    "--method distances (the original method): train the distance on --reference for "
                    "this stack (cached; or use --model), recover orientations, resolve the ambiguity, "
                    "estimate shifts, refine locally, put the poses in the reference's frame and hand, "
                    "reconstruct with half maps. Evaluate when the STAR carries true angles; write "
                    "particles.star, map.mrc, summary.json and report.html. A rerun skips finished stages.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    add_pipeline_options(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the YAML of ``--config`` as defaults (explicit flags win)."""
    import yaml

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
    if args.reference is None and args.method == "distances" and args.model is None:
        raise CryorientError("the distance method needs --reference (a structure or map to train on) or --model "
                             "model.pt; without a reference, use --method refine (an initial map is made from the "
                             "particles alone)")
    if args.reference is None and args.symmetry != "C1" and args.method == "refine":
        raise CryorientError(f"--symmetry {args.symmetry} needs --reference in RELION's symmetry frame (the ab "
                             "initio map is made in C1, in a frame of its own); give one, or refine in C1")
    density, simulation = simulation_from_args(args)
    model = ModelConfig(width=args.width, input_size=args.input_size, hypotheses=args.hypotheses)
    distances = args.method == "distances"
    recover = RecoverConfig(pairs_per_particle=args.pairs_per_particle,
                            refine=LocalRefineConfig(rounds=args.refine_rounds),
                            recovery=RecoveryConfig(restarts=args.restarts),
                            ambiguity=AmbiguityConfig(n_images=args.ambiguity_images),
                            symmetry=args.symmetry if distances else "C1")
    train = TrainConfig(max_epochs=args.max_epochs, minutes=args.minutes,
                        steps_per_epoch=args.steps_per_epoch, batch_size=args.train_batch_size, model=model,
                        symmetry=recover.symmetry)
    if distances and args.relax_symmetry:
        raise CryorientError("--relax-symmetry belongs to --method refine (the distance method keeps the group)")
    refinement = RefineConfig(initial_lowpass=args.initial_lowpass, max_rounds=args.max_rounds, poses=args.poses,
                              train_minutes=args.round_minutes, symmetry="C1" if distances else args.symmetry,
                              relax_symmetry=args.relax_symmetry)
    abinitio = AbInitioConfig(seeds=args.abinitio_seeds, iterations=args.abinitio_iterations)
    return PipelineConfig(method=args.method, refinement=refinement, abinitio=abinitio, particles=args.particles,
                          particles_pixel_size=args.pixel_size if args.particles else None,
                          structure=args.structure, density=density,
                          simulation=simulation, reference=args.reference,
                          reference_chains=args.reference_chains, model=args.model, train=train,
                          recover=recover, reconstruct=ReconstructConfig(wiener=args.wiener, symmetry=recover.symmetry),
                          truth_map=args.truth_map, seed=args.seed, start=args.start)


def resolved_options(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in RUN_KEYS}


def execute(args: argparse.Namespace, command: str) -> int:
    generator = setup(args)
    cfg = pipeline_config(args)
    device = resolve_device(args.device)
    if cfg.particles is not None:  # read it now: a bad STAR fails before anything is written
        from ..particles import read_particles

        read_particles(cfg.particles, cfg.particles_pixel_size)
    from ..pipeline import run_pipeline, three_line_summary
    from ..report import write_report
    from ..rundir import resumable_directory

    def bar(name: str, total: int | None):
        return progress(total, name, args.quiet, unit="step" if name == "train" else "img").update

    outdir = Path(args.outdir)
    with resumable_directory(outdir, command, resolved_options(args), overwrite=args.overwrite,
                             seed=args.seed):
        summary = run_pipeline(cfg, outdir, generator, progress=bar, device=device)
        write_report(outdir)
    for line in three_line_summary(summary, outdir):
        print(line)
    for w in summary.warnings():
        print(f"WARNING: {w}")
    return 0


def run(args: argparse.Namespace) -> int:
    return execute(args, "run")
