"""``cryorient distances``: a model's embeddings of a stack and the distances of chosen pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

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
  cryorient distances --particles runs/sim/particles.star --model runs/train/model.pt --outdir runs/d
"""


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="embed a stack with a distance model and write pair distances",
        description="Embed every particle with a trained distance model (one encoder pass per "
                    "image, in batches) and write embeddings.npz, the chosen pairs' distances "
                    "(pairs.npz) and figures; with true angles in the STAR, their errors too.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--particles", required=True, help="particle STAR file")
    p.add_argument("--model", required=True, help="model.pt from 'cryorient train'")
    p.add_argument("--pairs-per-particle", type=int, default=None,
                   help="pair budget K per particle (default: all pairs up to 5M pairs, else 5M / N per particle)")
    p.add_argument("--neighbours", type=int, default=16, help="nearest neighbours per particle")
    p.add_argument("--batch-size", type=int, default=512, help="images per encoder batch")
    p.add_argument("--symmetry", default="C1", type=str.upper,
                   help="the particles' point group (RELION's names: Cn, Dn, T, O, I): distances modulo the group")
    add_device_option(p)
    add_star_pixel_size(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    generator = setup(args)
    device = resolve_device(args.device)
    import numpy as np
    import torch

    from .. import plots
    from ..distance.predict import model_source
    from ..evaluation import truth_of
    from ..io import save_npz
    from ..orientation.pairs import choose_pairs
    from ..orientation.run import pair_distances
    from ..orientation.sources import TrueDistances
    from ..particles import read_particles
    from ..rundir import run_directory, write_json
    from ..so3 import rotmat_to_quat
    from ..symmetry import point_group

    stack = read_particles(args.particles, args.pixel_size)
    truth = truth_of(stack)
    stack = stack.blind()
    with progress(stack.n, "embed", args.quiet) as bar:
        source, nn = model_source(stack, args.model, args.neighbours, args.batch_size, bar.update, device,
                                  args.symmetry)
    pairs = pair_distances(source, choose_pairs(stack.n, generator, args.pairs_per_particle, 48, nn))
    config = {"particles": args.particles, "model": args.model, "symmetry": args.symmetry,
              "pairs_per_particle": args.pairs_per_particle, "neighbours": args.neighbours}
    outdir = Path(args.outdir)
    with run_directory(outdir, "distances", config, overwrite=args.overwrite, seed=args.seed) as stage:
        save_npz(stage / "embeddings.npz", embeddings=source.embeddings,
                 neighbours=nn if nn is not None else np.zeros((stack.n, 0), dtype=np.int64))
        save_npz(stage / "pairs.npz", i=pairs.i, j=pairs.j, distance=pairs.d, anchors=pairs.anchors)
        metrics = {"n_particles": stack.n, "n_pairs": len(pairs),
                   "embedding_size": int(source.embeddings.shape[1]),
                   "mean_distance_rad": float(pairs.d.mean())}
        figs = stage / "figures"
        plots.histogram([("predicted", pairs.d.numpy())], figs / "distances.png", "distance (rad)",
                        title="Predicted pair distances")
        if truth is not None:
            true_source = TrueDistances(rotmat_to_quat(truth.rotations), point_group(args.symmetry))
            true = true_source.distances(pairs.i, pairs.j)
            err = (pairs.d - true).abs()
            near = true < 0.5
            metrics["vs_true"] = {"mae_rad": float(err.mean()),
                                  "mae_below_0.5_rad": float(err[near].mean()) if bool(near.any()) else None}
            if nn is not None:
                d_nn = true_source.distances(torch.arange(stack.n).repeat_interleave(nn.shape[1]), nn.reshape(-1))
                metrics["vs_true"]["neighbour_median_true_distance_deg"] = float(torch.rad2deg(d_nn.median()))
            sample = torch.randperm(len(pairs), generator=generator)[:200000]
            plots.hist2d(true[sample].numpy(), pairs.d[sample].numpy(), figs / "predicted_vs_true.png",
                         "true distance (rad)", "predicted distance (rad)", title="Pairs of this stack")
        write_json(stage / "metrics.json", metrics)
    mean = metrics["mean_distance_rad"]
    line = f"embedded {stack.n} particles, {len(pairs)} pair distances (mean {mean:.2f} rad)"
    if "vs_true" in metrics:
        line += f"; MAE vs true {metrics['vs_true']['mae_rad']:.3f} rad"
    print(line)
    print(f"wrote embeddings.npz, pairs.npz and figures/ in {outdir}")
    return 0
