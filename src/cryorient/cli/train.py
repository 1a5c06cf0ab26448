"""``cryorient train``: a Siamese distance model trained on projections of a reference made
like the stack's particles (box, pixel size, CTF, SNR, shifts)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from ..density import DensityOptions, load_volume
from ..distance.data import Augmentation, imaging_from_stack
from ..distance.model import ModelConfig
from ..distance.preprocess import default_input
from ..distance.train import TrainConfig, init_distributed, train_on_reference
from ..errors import CryorientError
from ..particles import read_particles
from ..rundir import run_info, write_json, write_yaml
from .common import (
    HelpFormatter,
    add_run_options,
    add_star_pixel_size,
    parse_chains,
    progress,
    setup,
)

EXAMPLES = """examples:
  cryorient train --reference 1ake_adk_closed --particles runs/sim/particles.star --outdir runs/train
  cryorient train --reference my_homolog.cif --particles data/particles.star --epochs 40 --outdir runs/t
  cryorient train --reference runs/train --particles data/particles.star --resume --outdir runs/train
  torchrun --nproc_per_node=2 -m cryorient train --reference map.mrc --particles p.star --outdir runs/t
"""


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="train the Siamese distance on projections of a reference",
        description="Train a Siamese CNN to estimate the geodesic distance between the orientations "
                    "of two projections. Training images are fresh projections of --reference (a "
                    "bundled name, PDB/mmCIF or MRC map) made like the particles of --particles: same "
                    "box and pixel size, CTF parameters drawn from the STAR, shifts like the STAR's, "
                    "noise at the SNR estimated from the particles (background variance), and random "
                    "changes of the reference (deformation, low-pass, missing/extra density). Writes "
                    "model.pt, checkpoint.pt (for --resume), metrics.jsonl and figures.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--reference", required=True, help="structure or map to train on")
    p.add_argument("--particles", required=True, help="particle STAR whose imaging to imitate")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128, help="images per step (all pairs scored)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss", choices=("l1", "l2"), default="l1")
    p.add_argument("--objective", choices=("pose", "pairs"), default="pose",
                   help="pose: embeddings pulled to the true orientations (rotation head); pairs: the "
                        "seed's pair-distance regression")
    p.add_argument("--encoder", choices=("small", "seed"), default="small")
    p.add_argument("--head", choices=("rotation", "cosine"), default="rotation")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (small encoder)")
    p.add_argument("--input-size", type=int, default=32, help="network input size in px (downsampled)")
    p.add_argument("--snr", type=float, default=None, help="training SNR (default: estimated)")
    p.add_argument("--no-augment", action="store_true", help="train on the reference exactly as given")
    p.add_argument("--chains", type=parse_chains, default=None,
                   help="keep only these chains of the reference's atomic model")
    p.add_argument("--resolution", type=float, default=None,
                   help="band limit of the reference density in Å (default 2.5 x pixel size)")
    p.add_argument("--resume", action="store_true", help="continue the run in --outdir")
    add_star_pixel_size(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def configs(args: argparse.Namespace, box: int, pixel_size: float, has_ctf: bool) -> TrainConfig:
    size, input_px = default_input(box, pixel_size, args.input_size)
    model = ModelConfig(encoder=args.encoder, head=args.head, width=args.width, input_size=size,
                        input_pixel_size=input_px, phase_flip=has_ctf)
    cfg = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                      lr=args.lr, loss=args.loss, objective=args.objective, model=model,
                      augmentation=Augmentation(enabled=not args.no_augment))
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    generator = setup(args)
    rank, world = init_distributed()
    stack = read_particles(args.particles, args.pixel_size)
    cfg = configs(args, stack.box, stack.pixel_size, stack.ctf() is not None)
    volume = load_volume(args.reference, DensityOptions(box=stack.box, pixel_size=stack.pixel_size,
                                                        resolution=args.resolution, chains=args.chains))
    imaging = imaging_from_stack(stack, generator=generator)
    if args.snr is not None:
        if not (args.snr > 0):
            raise CryorientError(f"--snr must be > 0, got {args.snr}")
        imaging = replace(imaging, snr=args.snr)
    outdir = Path(args.outdir)
    if rank == 0:
        if outdir.exists() and not (args.resume or args.overwrite):
            raise CryorientError(f"output directory {outdir} exists; use --resume to continue it, "
                                 "--overwrite to replace it, or another --outdir")
        if args.resume and not (outdir / "checkpoint.pt").is_file():
            raise CryorientError(f"--resume: no checkpoint.pt in {outdir}; start without --resume")
        if args.overwrite and not args.resume and outdir.exists():
            import shutil

            shutil.rmtree(outdir)
        (outdir / "figures").mkdir(parents=True, exist_ok=True)
        if not args.resume:
            (outdir / "metrics.jsonl").unlink(missing_ok=True)
        summary = {"reference": str(args.reference), "particles": str(args.particles),
                   "imaging": imaging.summary(), "world_size": world}
        write_yaml(outdir / "config.yaml", {"train": cfg, **summary})
        write_json(outdir / "run.json", run_info("train", None, args.seed))
    if world > 1:
        dist.barrier()
    summary = {"reference": str(args.reference), "imaging": imaging.summary()}
    total = cfg.epochs * cfg.steps_per_epoch
    with progress(total, "train", args.quiet or rank != 0, unit="step") as bar:
        final = train_on_reference(volume, imaging, cfg, outdir, resume=args.resume, seed=int(args.seed),
                                   summary=summary, progress=bar.update)
    if rank == 0:
        snr = f"SNR {imaging.snr:.3g}{' estimated' if args.snr is None else ''}"
        ctf = "CTF" if imaging.ctf is not None else "no CTF"
        print(f"trained on {args.reference} for {cfg.epochs} epochs ({snr}, {ctf}): "
              f"validation distance MAE {final.get('val_mae', math.nan):.3f} rad, "
              f"{final.get('val_mae_below_0.5', math.nan):.3f} rad below 0.5 rad")
        print(f"wrote {outdir / 'model.pt'}, metrics.jsonl and figures/ "
              f"({json.dumps({'knn5_overlap': round(final.get('val_knn5_overlap', math.nan), 3)})})")
    if world > 1:
        dist.destroy_process_group()
    return 0
