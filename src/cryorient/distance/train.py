"""Training the Siamese distance on projections of a reference (or of several structures).

Every step renders a fresh batch (``ReferenceSampler``) and embeds it once. Two objectives:

- ``pairs`` (the seed's): all pairs of the batch are scored, the designed pairs (distances
  spread evenly over [0, pi]) and every other pair; L1 (the seed's choice) or L2 on
  ``d_hat - d``;
- ``pose`` (cryorient's default with a reference, rotation head only): the head's raw 3x3
  output for each training image is pulled towards its true orientation in the reference's
  frame (chordal L2). Distances between embeddings are then distances between orientation
  estimates.
  Measured on the default structure (bench/distance.py): the pair objective stalls in a
  folded map (validation MAE 0.43 rad after 2000 steps, clean images) where the pose
  objective keeps improving (0.18 rad).

An epoch is ``steps_per_epoch`` steps; after each, a checkpoint (model, optimiser, schedule,
data generator) is written atomically, so ``--resume`` continues an interrupted run losing at
most one epoch. Under ``torchrun`` the same code runs DistributedDataParallel (gloo on CPU),
each rank drawing its own data; rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import roma
import torch
import torch.distributed as dist

from .. import plots
from ..errors import CryorientError
from ..io import atomic_output, load_checkpoint, save_checkpoint
from ..so3 import rotmat_distance
from .data import Augmentation, ReferenceSampler
from .model import ModelConfig, SiameseDistance, count_parameters

log = logging.getLogger(__name__)
MODEL_KIND = "distance-model"
CHECKPOINT_KIND = "distance-training"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    steps_per_epoch: int = 100
    batch_size: int = 128  # images per step (all their pairs are scored)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "l1"  # l1 (the seed's) or l2
    objective: str = "pose"  # pose (rotation head, reference frame) or pairs (the seed's)
    val_size: int = 384
    model: ModelConfig = field(default_factory=ModelConfig)
    augmentation: Augmentation = field(default_factory=Augmentation)

    def validate(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1:
            raise CryorientError(f"epochs and steps per epoch must be >= 1, got {self.epochs}, "
                                 f"{self.steps_per_epoch}")
        if self.batch_size < 4:
            raise CryorientError(f"batch size must be >= 4, got {self.batch_size}")
        if self.loss not in ("l1", "l2"):
            raise CryorientError(f"unknown loss {self.loss!r}; use l1 or l2")
        if self.objective not in ("pose", "pairs"):
            raise CryorientError(f"unknown objective {self.objective!r}; use pose or pairs")
        if self.objective == "pose" and self.model.head != "rotation":
            raise CryorientError("the pose objective needs the rotation head (use --objective pairs "
                                 "with --head cosine)")
        self.model.validate()


def batch_loss(model, inputs: torch.Tensor, rot: torch.Tensor, designed: torch.Tensor,
               cfg: TrainConfig) -> torch.Tensor:
    """The training loss of one batch (see the module docstring for the two objectives)."""
    net = model.module if hasattr(model, "module") else model
    raw = model(inputs)  # through DDP when distributed, so gradients are synchronised
    if cfg.objective == "pose":
        # chordal loss on the head's raw 3x3 output (before the SVD): smooth, and measured to
        # leave the initial plateau sooner than the geodesic loss
        return ((raw.view(-1, 3, 3) - rot) ** 2).sum((-2, -1)).mean()
    emb = torch.relu(raw) if net.config.head == "cosine" else \
        roma.special_procrustes(raw.view(-1, 3, 3)).reshape(-1, 9)

    def f(x: torch.Tensor) -> torch.Tensor:
        return x.abs().mean() if cfg.loss == "l1" else (x * x).mean()

    m = inputs.shape[0]
    half = designed.shape[0]
    first = torch.arange(half)
    d_designed = net.distance(emb[first], emb[first + (m - half)])
    i, j = torch.triu_indices(m, m, offset=1)
    return f(d_designed - designed) + f(net.distance(emb[i], emb[j]) - rotmat_distance(rot[i], rot[j]))


@torch.no_grad()
def evaluate_pairs(model: SiameseDistance, inputs: torch.Tensor, rot: torch.Tensor) -> dict:
    """Distance errors on a validation batch: all pairs, and pairs closer than 0.5 / 1 rad."""
    model.eval()
    emb = torch.cat([model.embed(inputs[k:k + 256]) for k in range(0, inputs.shape[0], 256)])
    model.train()
    i, j = torch.triu_indices(inputs.shape[0], inputs.shape[0], offset=1)
    pred = model.distance(emb[i], emb[j])
    true = rotmat_distance(rot[i], rot[j])
    err = (pred - true).abs()
    out = {"val_mae": float(err.mean()), "val_rmse": float((err**2).mean().sqrt())}
    for cut in (0.5, 1.0):
        sel = true < cut
        out[f"val_mae_below_{cut}"] = float(err[sel].mean()) if bool(sel.any()) else float("nan")
    # how many of each image's 5 nearest neighbours (by prediction) are true neighbours (top 5)
    dm_pred = torch.full((inputs.shape[0],) * 2, math.inf)
    dm_true = torch.full_like(dm_pred, math.inf)
    dm_pred[i, j] = pred
    dm_pred[j, i] = pred
    dm_true[i, j] = true
    dm_true[j, i] = true
    nn_pred = dm_pred.topk(5, largest=False).indices
    nn_true = dm_true.topk(5, largest=False).indices
    hits = (nn_pred[:, :, None] == nn_true[:, None, :]).any(-1).float().mean()
    out["val_knn5_overlap"] = float(hits)
    return out


def init_distributed() -> tuple[int, int]:
    """``(rank, world size)``; under torchrun, joins the gloo process group (once)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def model_payload(model: SiameseDistance, summary: dict) -> dict:
    net = model.module if hasattr(model, "module") else model
    return {"kind": MODEL_KIND, "config": net.config.to_dict(), "state_dict": net.state_dict(),
            "summary": json.loads(json.dumps(summary))}


def load_model(path: str | Path) -> SiameseDistance:
    """A trained distance model (checkpoints load with ``weights_only=True``)."""
    payload = load_checkpoint(path, MODEL_KIND)
    try:
        cfg = ModelConfig(**payload["config"])
        model = SiameseDistance(cfg)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CryorientError(f"{Path(path).name} is not a usable cryorient distance model: "
                             f"{str(exc).splitlines()[0][:120]}") from None
    model.eval()
    return model


Batch = tuple[torch.Tensor, torch.Tensor]


def train(cfg: TrainConfig, make_sampler: Callable[[int], ReferenceSampler], val: Batch, outdir: Path,
          resume: bool = False, seed: int = 0, summary: dict | None = None,
          progress: Callable[[int], None] | None = None) -> dict:
    """Train a distance model into ``outdir`` (``model.pt``, ``checkpoint.pt``, ``metrics.jsonl``,
    figures). ``make_sampler(rank)`` builds each rank's data source; ``val`` is a fixed
    validation batch ``(inputs, rotations)``."""
    cfg.validate()
    rank, world = init_distributed()
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = SiameseDistance(cfg.model)
    sampler = make_sampler(rank)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    warmup = max(1, total // 20)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay; a longer resumed run stretches it
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start_epoch, history = 0, []
    ckpt_path = outdir / "checkpoint.pt"
    if resume:
        if not ckpt_path.is_file():
            raise CryorientError(f"--resume: no checkpoint.pt in {outdir}; start without --resume")
        state = load_checkpoint(ckpt_path, CHECKPOINT_KIND)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sampler.load_state(state["samplers"][rank] if rank < len(state["samplers"]) else state["samplers"][0])
        start_epoch, history = int(state["epoch"]), list(json.loads(state["history"]))
        log.info("resuming after epoch %d", start_epoch)
        if progress is not None and rank == 0:
            progress(start_epoch * cfg.steps_per_epoch)
    net = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    log.info("training %s/%s model (%d parameters) for %d epochs x %d steps, %d rank(s)",
             cfg.model.encoder, cfg.model.head, count_parameters(net), cfg.epochs, cfg.steps_per_epoch, world)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        losses = []
        for _ in range(cfg.steps_per_epoch):
            inputs, rot, designed = sampler.batch(cfg.batch_size)
            loss = batch_loss(model, inputs, rot, designed, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress is not None and rank == 0:
                progress(1)
        samplers = [sampler.state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, sampler.state())
            samplers = gathered
        if rank == 0:
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                      "lr": float(sched.get_last_lr()[0]), "seconds": round(time.perf_counter() - t0, 2),
                      **evaluate_pairs(net, *val)}
            history.append(record)
            with open(outdir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            save_checkpoint(ckpt_path, {"kind": CHECKPOINT_KIND, "model": net.state_dict(),
                                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                        "samplers": samplers, "epoch": epoch + 1,
                                        "history": json.dumps(history)})
            log.info("epoch %d/%d: loss %.4f, val MAE %.3f rad (%.3f below 0.5 rad), %.0f s", epoch + 1,
                     cfg.epochs, record["train_loss"], record["val_mae"], record["val_mae_below_0.5"],
                     record["seconds"])
    in_sync = True
    if world > 1:  # DDP keeps replicas identical; check it rather than assume it
        checksum = torch.stack([p.detach().double().sum() for p in net.parameters()]).sum().reshape(1)
        sums = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(sums, checksum)
        in_sync = all(bool(torch.equal(sums[0], t)) for t in sums)
        dist.barrier()
    final = history[-1] if history else {}
    if rank == 0:
        info = {**(summary or {}), "epochs": cfg.epochs, "final": final, "world_size": world,
                "ranks_in_sync": in_sync, "train_config": json.loads(json.dumps(asdict(cfg)))}
        save_checkpoint(outdir / "model.pt", model_payload(net, info))
        write_training_figures(net, history, val, outdir / "figures")
    return final


def train_on_reference(volume: torch.Tensor, imaging, cfg: TrainConfig, outdir: Path, resume: bool = False,
                       seed: int = 0, summary: dict | None = None,
                       progress: Callable[[int], None] | None = None) -> dict:
    """Train on projections of ``volume`` made with ``imaging`` (see :class:`ReferenceSampler`);
    every rank draws its own data, the validation batch is fixed by the seed."""
    m = cfg.model

    def make_sampler(rank: int) -> ReferenceSampler:
        return ReferenceSampler(volume, imaging, m.input_size, m.input_pixel_size, m.phase_flip,
                                cfg.augmentation, torch.Generator().manual_seed(seed * 1000 + rank + 1))

    val = ReferenceSampler(volume, imaging, m.input_size, m.input_pixel_size, m.phase_flip,
                           Augmentation(enabled=False), torch.Generator().manual_seed(seed * 1000 + 999))
    inputs, rot, _ = val.batch(cfg.val_size)
    return train(cfg, make_sampler, (inputs, rot), outdir, resume=resume, seed=seed, summary=summary,
                 progress=progress)


def write_training_figures(model: SiameseDistance, history: list[dict], val: Batch, figs: Path) -> None:
    figs.mkdir(exist_ok=True)
    if history:
        ep = np.array([h["epoch"] for h in history])
        def col(key: str) -> np.ndarray:
            return np.array([h[key] for h in history])

        plots.curves([("train loss", ep, col("train_loss")), ("validation MAE (rad)", ep, col("val_mae")),
                      ("validation MAE, d < 0.5 rad", ep, col("val_mae_below_0.5"))],
                     figs / "loss.png", "epoch", "loss / error", title="Distance training")
    with torch.no_grad():
        model.eval()
        emb = torch.cat([model.embed(val[0][k:k + 256]) for k in range(0, val[0].shape[0], 256)])
    i, j = torch.triu_indices(emb.shape[0], emb.shape[0], offset=1)
    pred = model.distance(emb[i], emb[j]).numpy()
    true = rotmat_distance(val[1][i], val[1][j]).numpy()
    plots.hist2d(true, pred, figs / "predicted_vs_true.png", "true distance (rad)",
                 "predicted distance (rad)", title="Validation pairs")
    bins = np.linspace(0, np.pi, 13)
    centres = 0.5 * (bins[1:] + bins[:-1])
    which = np.clip(np.digitize(true, bins) - 1, 0, 11)
    err = pred - true
    mae = np.array([np.abs(err[which == b]).mean() if (which == b).any() else np.nan for b in range(12)])
    bias = np.array([err[which == b].mean() if (which == b).any() else np.nan for b in range(12)])
    plots.curves([("mean |error|", centres, mae), ("mean error (bias)", centres, bias)],
                 figs / "error_by_distance.png", "true distance (rad)", "error (rad)",
                 title="Distance error by distance bin", hlines=[(0.0, "")])


def write_atomic_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
