"""``cryorient train``: a Siamese distance model trained on projections of a reference made
like the stack's particles (box, pixel size, CTF, SNR, shifts)."""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import replace
from pathlib import Path

from ..config import DEFAULT_HYPOTHESES, AugmentationConfig, DensityConfig, ModelConfig, TrainConfig
from ..errors import CryorientError
from .common import (
    HelpFormatter,
    add_device_option,
    add_run_options,
    add_star_pixel_size,
    parse_chains,
    parse_positive,
    parse_snr,
    progress,
    resolve_device,
    setup,
)

EXAMPLES = """examples:
  cryorient train --reference 1ake_adk_closed --particles runs/sim/particles.star --outdir runs/train
  cryorient train --reference my_homolog.cif --particles data/particles.star --minutes 20 --outdir runs/t
  cryorient train --reference my_homolog.cif --particles data/particles.star --resume --outdir runs/t
  cryorient train --reference moved.cif --particles p.star --init runs/t/model.pt --minutes 1 --outdir runs/ft
  torchrun --nproc_per_node=2 -m cryorient train --reference map.mrc --particles p.star --outdir runs/t
"""
_T, _M = TrainConfig(), ModelConfig()


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="train the Siamese distance on projections of a reference",
        description="Train a Siamese CNN to estimate the geodesic distance between the orientations "
                    "of two projections. Training images are fresh projections of --reference (a "
                    "bundled name, PDB/mmCIF or MRC map) made like the particles of --particles: same "
                    "box and pixel size, CTF parameters drawn from the STAR, shifts in the range "
                    "measured from the images, noise at the SNR estimated from the particles "
                    "(background variance), and random changes of the reference (deformation, "
                    "low-pass, missing/extra density). Training stops when the validation stops "
                    "improving or the time budget is spent; it warns when the model is too weak to "
                    "trust. Writes model.pt, checkpoint.pt (for --resume), metrics.jsonl and figures.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--reference", required=True, help="structure or map to train on")
    p.add_argument("--particles", required=True, help="particle STAR whose imaging to imitate")
    p.add_argument("--minutes", type=parse_positive, default=_T.minutes, help="wall-time budget")
    p.add_argument("--max-epochs", type=int, default=_T.max_epochs)
    p.add_argument("--steps-per-epoch", type=int, default=_T.steps_per_epoch)
    p.add_argument("--batch-size", type=int, default=_T.batch_size, help="images per step (all pairs scored)")
    p.add_argument("--lr", type=parse_positive, default=_T.lr)
    p.add_argument("--loss", choices=("l1", "l2"), default=_T.loss)
    p.add_argument("--objective", choices=("pose", "pairs"), default=_T.objective,
                   help="pose: embeddings pulled to the true orientations (rotation head); pairs: the "
                        "seed's pair-distance regression")
    p.add_argument("--encoder", choices=("small", "seed"), default=_M.encoder)
    p.add_argument("--head", choices=("rotation", "cosine"), default=_M.head)
    p.add_argument("--width", type=int, default=_M.width, help="channels of the first stage (small encoder)")
    p.add_argument("--input-size", type=int, default=_M.input_size, help="network input size in px")
    p.add_argument("--hypotheses", type=int, default=None,
                   help=f"pose hypotheses per image, each with a score (rotation head): more than one keeps "
                        f"the views a small protein cannot tell apart (docs/model.md); None: {DEFAULT_HYPOTHESES} "
                        f"with the pose objective, 1 with the pairs objective")
    p.add_argument("--symmetry", default=_T.symmetry, type=str.upper,
                   help="the reference's point group (RELION's names, the reference in RELION's symmetry "
                        "frame): the pose loss takes the nearest symmetry mate of each true pose")
    p.add_argument("--snr", type=parse_snr, default=None, help="training SNR (default: estimated)")
    p.add_argument("--curriculum", type=float, default=_T.curriculum_snr_factor,
                   help="the first epochs train at this multiple of the SNR (1: no curriculum)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=_T.precision)
    p.add_argument("--augment", action="store_true",
                   help="perturb the reference while training (2 Å deformation, low-pass up to 12 Å, 5 Å "
                        "blobs); off by default: measured to cost accuracy, even on particles that differ "
                        "from the reference (docs/model.md)")
    p.add_argument("--chains", type=parse_chains, default=None,
                   help="keep only these chains of the reference's atomic model")
    p.add_argument("--resolution", type=parse_positive, default=None,
                   help="band limit of the reference density in Å (default 2.5 x pixel size)")
    p.add_argument("--init", default=None, help="start from this model.pt (fine-tuning)")
    p.add_argument("--frozen-stages", type=int, default=_T.frozen_stages,
                   help="with --init: keep the encoder's first N stages as trained (0: train all; "
                        "freezing makes the steps faster and was measured better after a minute, "
                        "docs/model.md)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --outdir")
    add_device_option(p)
    add_star_pixel_size(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace, box: int, pixel_size: float, has_ctf: bool) -> TrainConfig:
    from ..distance.preprocess import default_input

    size, input_px = default_input(box, pixel_size, args.input_size)
    model = ModelConfig(encoder=args.encoder, head=args.head, width=args.width, input_size=size,
                        input_pixel_size=input_px, phase_flip=has_ctf,
                        hypotheses=1 if args.hypotheses is None and args.objective == "pairs" else args.hypotheses)
    return TrainConfig(max_epochs=args.max_epochs, minutes=args.minutes, steps_per_epoch=args.steps_per_epoch,
                       batch_size=args.batch_size, lr=args.lr, loss=args.loss, objective=args.objective,
                       curriculum_snr_factor=args.curriculum,
                       curriculum_epochs=_T.curriculum_epochs if args.curriculum > 1 else 1,
                       precision=args.precision, symmetry=args.symmetry, frozen_stages=args.frozen_stages,
                       model=model,
                       augmentation=AugmentationConfig(enabled=args.augment))


def run(args: argparse.Namespace) -> int:
    generator = setup(args)
    device = resolve_device(args.device)
    outdir = Path(args.outdir)
    if args.init is not None and not Path(args.init).is_file():
        raise CryorientError(f"--init: model file not found: {args.init}")
    import torch.distributed as dist

    from ..density import load_volume
    from ..distance.data import imaging_from_stack
    from ..distance.train import init_distributed, train_on_reference
    from ..particles import read_particles
    from ..rundir import resumable_directory

    rank, world = init_distributed()
    stack = read_particles(args.particles, args.pixel_size).blind()
    cfg = config_from_args(args, stack.box, stack.pixel_size, stack.ctf() is not None)
    density = DensityConfig(box=stack.box, pixel_size=stack.pixel_size, resolution=args.resolution,
                            chains=args.chains)
    volume = load_volume(args.reference, density)
    if rank == 0:
        if outdir.exists() and not (args.resume or args.overwrite):
            raise CryorientError(f"output directory {outdir} exists; use --resume to continue it, "
                                 "--overwrite to replace it, or another --outdir")
        if args.resume and not (outdir / "checkpoint.pt").is_file():
            raise CryorientError(f"--resume: no checkpoint.pt in {outdir}; start without --resume")
    imaging = imaging_from_stack(stack, volume, density.resolved_resolution(), generator=generator)
    if args.snr is not None:
        imaging = replace(imaging, snr=args.snr)
    # the budget may grow on --resume; every other option must match the run being resumed
    options = {k: v for k, v in vars(args).items()
               if k not in ("func", "resume", "overwrite", "quiet", "threads", "device", "outdir", "minutes",
                            "max_epochs")}
    summary = {"reference": str(args.reference), "particles": str(args.particles),
               "imaging": imaging.summary(), "world_size": world}
    directory = (resumable_directory(outdir, "train", options, overwrite=args.overwrite and not args.resume,
                                     seed=args.seed) if rank == 0 else contextlib.nullcontext())
    with directory:
        if rank == 0:
            (outdir / "figures").mkdir(exist_ok=True)
            if not args.resume:
                (outdir / "metrics.jsonl").unlink(missing_ok=True)
        if world > 1:
            dist.barrier()  # rank 0 has prepared the directory
        total = cfg.max_epochs * cfg.steps_per_epoch
        with progress(total, "train", args.quiet or rank != 0, unit="step") as bar:
            result = train_on_reference(volume, imaging, cfg, outdir, resume=args.resume, seed=int(args.seed),
                                        summary=summary, init=Path(args.init) if args.init else None,
                                        device=device, progress=bar.update)
    if rank == 0:
        snr = f"SNR {imaging.snr:.3g}{' estimated' if args.snr is None else ''}"
        ctf = "CTF" if imaging.ctf is not None else "no CTF"
        f = result.final
        minutes = result.seconds / 60
        print(f"trained on {args.reference} for {result.epochs} epochs, {minutes:.1f} min, stopped "
              f"by {result.stopped_by} ({snr}, {ctf}, shifts up to {imaging.max_shift_px:.1f} px measured)")
        print(f"validation: median orientation error {f.get('val_median_deg', math.nan):.1f}°, "
              f"{100 * f.get('val_within_15deg', math.nan):.0f}% within 15°, distance MAE "
              f"{f.get('val_mae', math.nan):.3f} rad")
        if "val_consensus_median_deg" in f:
            print(f"on a stack (the consensus of each image's 4 quarter-turned readings): median orientation "
                  f"error {f['val_consensus_median_deg']:.1f}°, {100 * f['val_consensus_within_15deg']:.0f}% "
                  "within 15°")
        if result.weak:
            print(f"WARNING: {result.warning(cfg.weak_median_deg)}")
        print(f"wrote {outdir / 'model.pt'}, metrics.jsonl and figures/")
    if world > 1:
        dist.destroy_process_group()
    return 0
