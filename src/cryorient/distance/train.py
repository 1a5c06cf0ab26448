"""Training the Siamese distance on projections of a reference.

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

How long: epoch by epoch (``steps_per_epoch`` steps each), until the validation loss stops
improving (the learning rate halves after ``patience`` epochs without a 1% gain, training
stops after ``stop_patience``; under the cosine schedule not before ``stop_after`` of the
planned epochs), the wall-time budget ``minutes`` is spent, or
``max_epochs``; the first epochs train at a higher SNR (a curriculum down to the stack's).
The decisions depend on the validation history only (a budget stop aside), so the same seed
gives the same model. After each epoch a checkpoint (model, optimiser, schedule, data
generator and augmented reference) is written atomically: a resumed run continues exactly
where the interrupted one stopped. Under ``torchrun`` the same code runs
DistributedDataParallel (gloo on CPU, NCCL on GPUs), each rank drawing its own data; rank 0
decides and writes.

Speed (docs/model.md has the profile): images are rendered at the network's input sampling,
the network runs channels-last and, where the hardware has it, in bfloat16 autocast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import roma
import torch
import torch.distributed as dist

from .. import plots
from ..config import ModelConfig, TrainConfig
from ..errors import CryorientError
from ..io import load_checkpoint, save_checkpoint
from ..symmetry import PointGroup, point_group, symmetric_distance, symmetric_distance_matrix
from .data import ImagingModel, ReferenceSampler
from .model import SiameseDistance, count_parameters
from .turns import consensus, read_turned

log = logging.getLogger(__name__)
MODEL_KIND = "distance-model"
CHECKPOINT_KIND = "distance-training"
MODEL_FORMAT = 2  # bumped when a model's meaning changes (part of the cache key)
WTA_SPREAD = 0.05  # with K pose hypotheses, the share of the loss given to the K-1 losers


def batch_loss(model, inputs: torch.Tensor, rot: torch.Tensor, designed: torch.Tensor,
               cfg: TrainConfig) -> torch.Tensor:
    """The training loss of one batch (see the module docstring for the two objectives)."""
    net = model.module if hasattr(model, "module") else model
    raw = model(inputs).float()  # through DDP when distributed, so gradients are synchronised
    if cfg.objective == "pose":
        # chordal loss on the head's raw 3x3 output (before the SVD): smooth, and measured to
        # leave the initial plateau sooner than the geodesic loss
        mats, logits = net.split(raw)
        ops = point_group(cfg.symmetry).ops(rot.dtype, rot.device)
        if ops.shape[0] == 1:
            per = ((mats - rot[:, None]) ** 2).sum((-2, -1))  # (B, K)
        else:  # the nearest symmetry mate S R of the true pose is the target
            mates = (ops @ rot[:, None])[:, None]  # (B, 1, G, 3, 3)
            per = ((mats[:, :, None] - mates) ** 2).sum((-2, -1)).min(-1).values
        if logits is None:
            return per[:, 0].mean()
        # K hypotheses: winner takes (nearly) all, so each specialises on one mode of an
        # ambiguous image's poses; the scores learn which hypothesis wins
        k = per.shape[1]
        best = per.argmin(1)
        weight = torch.full_like(per, WTA_SPREAD / (k - 1))
        weight.scatter_(1, best[:, None], 1.0 - WTA_SPREAD)
        return (weight * per).sum(1).mean() + torch.nn.functional.cross_entropy(logits, best)
    emb = torch.relu(raw) if net.config.head == "cosine" else \
        roma.special_procrustes(raw.view(-1, 3, 3)).reshape(-1, 9)

    def f(x: torch.Tensor) -> torch.Tensor:
        return x.abs().mean() if cfg.loss == "l1" else (x * x).mean()

    m = inputs.shape[0]
    half = designed.shape[0]
    first = torch.arange(half, device=emb.device)
    d_designed = net.distance(emb[first], emb[first + (m - half)])
    i, j = torch.triu_indices(m, m, offset=1, device=emb.device)
    group = point_group(cfg.symmetry)
    true = symmetric_distance(rot[i], rot[j], group)
    if group.order > 1:  # the designed pairs were designed in SO(3): their distances modulo the group
        designed = symmetric_distance(rot[first], rot[first + (m - half)], group)
    return f(d_designed - designed) + f(net.distance(emb[i], emb[j]) - true)


def validation_distances(model: SiameseDistance, emb: torch.Tensor, rot: torch.Tensor,
                         group: PointGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted and the true distances ``(n, n)`` between all validation images, modulo the
    point group (the cosine head learned distances modulo it; the rotation head's poses are
    compared as :func:`symmetric_distance_matrix` does)."""
    if group.order == 1 or model.config.head != "rotation":
        pred = model.distance_matrix(emb, emb)
    else:
        pred = symmetric_distance_matrix(emb.view(-1, 3, 3), emb.view(-1, 3, 3), group)
    return pred, symmetric_distance_matrix(rot, rot, group)


@torch.no_grad()
def evaluate_model(model: SiameseDistance, inputs: torch.Tensor, rot: torch.Tensor, objective: str,
                   symmetry: str = "C1") -> dict:
    """Errors on a validation batch. Pair distances (all pairs, and pairs closer than 0.5 / 1
    rad; the overlap of each image's 5 nearest neighbours by prediction and by truth); with
    the pose objective, each image's predicted orientation against its true one (median,
    fraction within 15 degrees); ``val_loss`` (the mean pose error, or the pair MAE) drives the
    schedule. With a point group, every orientation error and distance is modulo the group."""
    group = point_group(symmetry)
    was_training = model.training
    model.eval()
    if model.config.hypotheses > 1:  # one pass: the best-scored hypothesis is the embedding
        hyp = torch.cat([model.hypotheses(inputs[k:k + 256])[0] for k in range(0, inputs.shape[0], 256)])
        emb = hyp[:, 0].reshape(-1, 9)
    else:
        hyp = None
        emb = torch.cat([model.embed(inputs[k:k + 256]).float() for k in range(0, inputs.shape[0], 256)])
    model.train(was_training)
    n = inputs.shape[0]
    dm_pred, dm_true = validation_distances(model, emb, rot, group)
    i, j = torch.triu_indices(n, n, offset=1, device=emb.device)
    pred, true = dm_pred[i, j], dm_true[i, j]
    err = (pred - true).abs()
    out = {"val_mae": float(err.mean()), "val_rmse": float((err**2).mean().sqrt())}
    for cut in (0.5, 1.0):
        sel = true < cut
        out[f"val_mae_below_{cut}"] = float(err[sel].mean()) if bool(sel.any()) else float("nan")
    dm_pred.fill_diagonal_(math.inf)
    dm_true.fill_diagonal_(math.inf)
    nn_pred = dm_pred.topk(5, largest=False).indices
    nn_true = dm_true.topk(5, largest=False).indices
    out["val_knn5_overlap"] = float((nn_pred[:, :, None] == nn_true[:, None, :]).any(-1).float().mean())
    if objective == "pose":
        pose_err = symmetric_distance(emb.view(-1, 3, 3), rot, group)
        if hyp is not None:  # the nearest of the K hypotheses (what a local search can reach)
            nearest = symmetric_distance(hyp, rot[:, None], group).min(1).values
            out["val_nearest_median_deg"] = float(torch.rad2deg(nearest.median()))
        out["val_median_deg"] = float(torch.rad2deg(pose_err.median()))
        out["val_within_15deg"] = float((pose_err < math.radians(15)).float().mean())
        out["val_loss"] = float(pose_err.mean())
    else:
        out["val_median_deg"] = float(torch.rad2deg(err.median()))
        out["val_within_15deg"] = float((err < math.radians(15)).float().mean())
        out["val_loss"] = out["val_mae"]
    return out


@torch.no_grad()
def consensus_errors(model: SiameseDistance, inputs: torch.Tensor, rot: torch.Tensor,
                     symmetry: str = "C1") -> torch.Tensor:
    """Each validation image's error (radians, modulo the point group) of the pose the network
    gives it on a stack: the :func:`~.turns.consensus` of its four quarter-turned readings
    (rotation head). Training's own figures read each image once; this is what the stack's
    poses will look like."""
    group = point_group(symmetry)
    was_training = model.training
    model.eval()
    pose = torch.cat([consensus(*read_turned(model, inputs[k:k + 256]), group)
                      for k in range(0, inputs.shape[0], 256)])
    model.train(was_training)
    return symmetric_distance(pose, rot, group)


def consensus_metrics(errors: torch.Tensor) -> dict:
    """The median and the share within 15° of :func:`consensus_errors`."""
    return {"val_consensus_median_deg": float(torch.rad2deg(errors.median())),
            "val_consensus_within_15deg": float((errors < math.radians(15)).float().mean())}


def init_distributed() -> tuple[int, int]:
    """``(rank, world size)``; under torchrun, joins the gloo process group (once)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def model_payload(model: SiameseDistance, summary: dict) -> dict:
    net = model.module if hasattr(model, "module") else model
    return {"kind": MODEL_KIND, "config": asdict(net.config), "state_dict": net.state_dict(),
            "summary": json.loads(json.dumps(summary))}


def load_model(path: str | Path) -> SiameseDistance:
    """A trained distance model (checkpoints load with ``weights_only=True``)."""
    payload = load_checkpoint(path, MODEL_KIND)
    try:
        # models saved before pose hypotheses existed had one
        cfg = ModelConfig(**{"hypotheses": 1, **payload["config"]})
        model = SiameseDistance(cfg)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CryorientError(f"{Path(path).name} is not a usable cryorient distance model: "
                             f"{str(exc).splitlines()[0][:120]}") from None
    model.eval()
    return model


Batch = tuple[torch.Tensor, torch.Tensor]


def use_bf16(precision: str, device: torch.device) -> bool:
    """bfloat16 autocast: asked for, or ``auto`` on hardware with native bf16 (a CUDA GPU that
    supports it; a CPU with AVX512-BF16 or AMX, where it measured 2.6x faster than fp32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class TrainResult:
    """How training went (``model.pt`` holds the weights and this summary)."""

    model_path: Path
    epochs: int
    steps: int
    seconds: float
    stopped_by: str  # plateau | budget | max_epochs
    final: dict  # validation metrics of the last epoch
    weak: bool  # the validation says the model cannot be trusted
    history: list = field(default_factory=list)

    def summary(self) -> dict:
        out = {"epochs": self.epochs, "steps": self.steps, "seconds": round(self.seconds, 1),
               "stopped_by": self.stopped_by, "weak": self.weak}
        for k in ("val_mae", "val_median_deg", "val_within_15deg", "val_consensus_median_deg",
                  "val_consensus_within_15deg"):
            if k in self.final:
                out[k] = self.final[k]
        return out

    def warning(self, threshold_deg: float) -> str | None:
        if not self.weak:
            return None
        return (f"the distance model is too weak to trust: validation median error "
                f"{self.final.get('val_median_deg', math.nan):.0f}° (above {threshold_deg:.0f}°) after "
                f"{self.epochs} epochs; give it more time (a larger time budget), check that the "
                "reference matches the particles, or use a lower-resolution input")


@dataclass
class _Schedule:
    """Learning-rate and stopping decisions (checkpointed): the validation history, and the
    number of epochs planned from the time budget and the first epoch's speed."""

    lr_scale: float = 1.0
    best: float = math.inf
    since_best: int = 0
    since_decay: int = 0
    planned_epochs: int | None = None

    def update(self, value: float, cfg: TrainConfig) -> None:
        if value < self.best * 0.99:
            self.best, self.since_best, self.since_decay = value, 0, 0
        else:
            self.since_best += 1
            self.since_decay += 1
            if cfg.schedule == "plateau" and self.since_decay >= cfg.patience:
                self.lr_scale *= 0.5
                self.since_decay = 0

    def plateaued(self, epoch: int, factor: float, cfg: TrainConfig) -> bool:
        """The validation stopped improving: ``stop_patience`` epochs without a 1% gain at the
        stack's SNR. Under the cosine schedule only once ``stop_after`` of the planned epochs are
        done: before, the learning rate is still high and the validation too noisy to judge
        (measured, the medium protein without CTF: stopped after 2.4 of 10 minutes at 19.2°
        median error, 13.2° when let run)."""
        if factor != 1.0 or self.since_best < cfg.stop_patience:
            return False
        planned = self.planned_epochs or cfg.max_epochs
        return cfg.schedule != "cosine" or epoch >= cfg.stop_after * planned

    def plan(self, epoch_seconds: list[float], elapsed: float, epochs_done: int, cfg: TrainConfig) -> None:
        """How many epochs fit in the budget, re-planned after every epoch from the median epoch
        time so far (a slow first epoch does not shorten the run); all of ``max_epochs``
        without a budget."""
        if cfg.minutes is None:
            self.planned_epochs = cfg.max_epochs
            return
        per_epoch = max(float(np.median(epoch_seconds)), 1e-3)
        fit = epochs_done + int(max(0.0, 60 * cfg.minutes - elapsed) // per_epoch)
        self.planned_epochs = max(epochs_done, min(cfg.max_epochs, fit))

    def lr(self, step: int, cfg: TrainConfig, fine_tuning: bool) -> float:
        warm = 1.0 if fine_tuning else min(1.0, (step + 1) / cfg.warmup_steps)
        if cfg.schedule == "plateau":
            return cfg.lr * self.lr_scale * warm
        total = (self.planned_epochs or cfg.max_epochs) * cfg.steps_per_epoch
        t = min(1.0, step / max(total, 1))
        return cfg.lr * warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def curriculum_factor(epoch: int, cfg: TrainConfig) -> float:
    """SNR multiplier of ``epoch`` (0-based): ``curriculum_snr_factor`` falling geometrically
    to 1 at epoch ``curriculum_epochs - 1``."""
    if cfg.curriculum_epochs <= 1 or epoch >= cfg.curriculum_epochs - 1:
        return 1.0
    t = epoch / (cfg.curriculum_epochs - 1)
    return float(cfg.curriculum_snr_factor ** (1 - t))


def train(cfg: TrainConfig, make_sampler: Callable[[int], ReferenceSampler], val: Batch, outdir: Path,
          resume: bool = False, seed: int = 0, summary: dict | None = None, init: Path | None = None,
          device=None, progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train a distance model into ``outdir`` (``model.pt``, ``checkpoint.pt``, ``metrics.jsonl``,
    figures). ``make_sampler(rank)`` builds each rank's data source; ``val`` is a fixed
    validation batch ``(inputs, rotations)``; ``init`` starts from a trained model's weights
    (fine-tuning), its first ``cfg.frozen_stages`` encoder stages kept as they are."""
    rank, world = init_distributed()
    device = torch.device(device) if device is not None else torch.device("cpu")
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = SiameseDistance(cfg.model)
    if init is not None:
        start = load_model(init)
        if start.config != cfg.model:
            c = start.config
            raise CryorientError(f"{Path(init).name} was trained with another network or input "
                                 f"({c.input_size} px at {c.input_pixel_size:.3g} Å/px); fine-tuning needs "
                                 "the same")
        model.load_state_dict(start.state_dict())
        for stage in model.stages()[:cfg.frozen_stages]:
            stage.requires_grad_(False)  # batch norm still follows the new images' statistics
    model = model.to(device)
    sampler = make_sampler(rank)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    schedule = _Schedule()
    start_epoch, history, elapsed = 0, [], 0.0
    ckpt_path = outdir / "checkpoint.pt"
    if resume:
        if not ckpt_path.is_file():
            raise CryorientError(f"no checkpoint.pt in {outdir} to resume from")
        state = load_checkpoint(ckpt_path, CHECKPOINT_KIND)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule = _Schedule(**json.loads(state["schedule"]))
        sampler.load_state(state["samplers"][rank] if rank < len(state["samplers"]) else state["samplers"][0])
        start_epoch, history = int(state["epoch"]), list(json.loads(state["history"]))
        elapsed = float(state["elapsed"])
        log.info("resuming after epoch %d", start_epoch)
        if progress is not None and rank == 0:
            progress(start_epoch * cfg.steps_per_epoch)
    net = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    bf16 = use_bf16(cfg.precision, device)
    val = (val[0].to(device), val[1].to(device))
    model.train()
    log.info("training %s/%s model (%d parameters%s) on %s%s: up to %d epochs x %d steps%s, %d rank(s)",
             cfg.model.encoder, cfg.model.head, count_parameters(net),
             f", {count_parameters(net, trainable=True)} trained: {cfg.frozen_stages} stages frozen"
             if init is not None else "",
             device.type, " (bf16)" if bf16 else "", cfg.max_epochs, cfg.steps_per_epoch,
             f" or {cfg.minutes:g} min" if cfg.minutes is not None else "", world)
    stopped_by = "max_epochs"
    epoch = start_epoch
    while epoch < cfg.max_epochs:
        t0 = time.perf_counter()
        factor = curriculum_factor(epoch, cfg)
        losses = []
        for k in range(cfg.steps_per_epoch):
            step = epoch * cfg.steps_per_epoch + k
            lr = schedule.lr(step, cfg, init is not None)
            for group in opt.param_groups:
                group["lr"] = lr
            inputs, rot, designed = sampler.batch(cfg.batch_size, factor)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = batch_loss(model, inputs, rot.to(device), designed.to(device), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None and rank == 0:
                progress(1)
        epoch += 1
        elapsed += time.perf_counter() - t0
        samplers = [sampler.state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, sampler.state())
            samplers = gathered
        decision = [None, schedule.planned_epochs]
        if rank == 0:
            metrics = evaluate_model(net, *val, cfg.objective, cfg.symmetry)
            schedule.update(metrics["val_loss"], cfg)
            schedule.plan([h["seconds"] for h in history] + [time.perf_counter() - t0], elapsed, epoch, cfg)
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "snr_factor": factor,
                      "lr": float(opt.param_groups[0]["lr"]), "seconds": round(time.perf_counter() - t0, 2),
                      **metrics}
            history.append(record)
            with open(outdir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            save_checkpoint(ckpt_path, {"kind": CHECKPOINT_KIND, "model": net.state_dict(),
                                        "optimizer": opt.state_dict(), "samplers": samplers,
                                        "schedule": json.dumps(asdict(schedule)), "epoch": epoch,
                                        "elapsed": elapsed, "history": json.dumps(history)})
            log.info("epoch %d: loss %.4f, validation median %.1f° (%.0f%% within 15°), MAE %.3f rad, "
                     "%.0f s", epoch, record["train_loss"], record.get("val_median_deg", math.nan),
                     100 * record.get("val_within_15deg", math.nan), record["val_mae"], record["seconds"])
            if schedule.plateaued(epoch, factor, cfg):
                decision[0] = "plateau"
            elif epoch >= schedule.planned_epochs and epoch < cfg.max_epochs:
                decision[0] = "budget"
            elif cfg.minutes is not None and elapsed >= 1.25 * 60 * cfg.minutes:
                decision[0] = "budget"  # the machine slowed down: the plan was too long
            decision[1] = schedule.planned_epochs
        if world > 1:
            dist.broadcast_object_list(decision, src=0)
            schedule.planned_epochs = decision[1]
        if decision[0] is not None:
            stopped_by = decision[0]
            break
    in_sync = True
    if world > 1:  # DDP keeps replicas identical; check it rather than assume it
        checksum = torch.stack([p.detach().double().sum() for p in net.parameters()]).sum().reshape(1).cpu()
        sums = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(sums, checksum)
        in_sync = all(bool(torch.equal(sums[0], t)) for t in sums)
        dist.barrier()
    final = dict(history[-1]) if history else {}
    turned = None
    if final and net.config.head == "rotation":  # the validation's poses as the stack's will be read
        turned = consensus_errors(net, *val, cfg.symmetry)
        final.update(consensus_metrics(turned))
    weak = bool(final) and final.get("val_median_deg", 0.0) > cfg.weak_median_deg
    result = TrainResult(outdir / "model.pt", epoch, epoch * cfg.steps_per_epoch, elapsed, stopped_by, final,
                         weak, history)
    if rank == 0:
        info = {**(summary or {}), **result.summary(), "final": final, "world_size": world,
                "ranks_in_sync": in_sync, "train_config": json.loads(json.dumps(asdict(cfg)))}
        save_checkpoint(outdir / "model.pt", model_payload(net.cpu(), info))
        net.to(device)
        write_training_figures(net, history, val, outdir / "figures", cfg.symmetry, turned)
        if weak:
            log.warning("%s", result.warning(cfg.weak_median_deg))
    return result


def train_on_reference(volume: torch.Tensor, imaging: ImagingModel, cfg: TrainConfig, outdir: Path,
                       resume: bool = False, seed: int = 0, summary: dict | None = None,
                       init: Path | None = None, device=None,
                       progress: Callable[[int], None] | None = None) -> TrainResult:
    """Train on projections of ``volume`` made with ``imaging`` (see :class:`ReferenceSampler`);
    every rank draws its own data, the validation batch (at the stack's SNR, no augmentation)
    is fixed by the seed."""

    def make_sampler(rank: int) -> ReferenceSampler:
        return ReferenceSampler(volume, imaging, cfg.model, cfg.augmentation,
                                torch.Generator().manual_seed(seed * 1000 + rank + 1), device)

    return train(cfg, make_sampler, validation_batch(volume, imaging, cfg, seed, device), outdir, resume=resume,
                 seed=seed, summary=summary, init=init, device=device, progress=progress)


def validation_batch(volume: torch.Tensor, imaging: ImagingModel, cfg: TrainConfig, seed: int = 0,
                     device=None) -> Batch:
    """The fixed validation batch ``(inputs, rotations)`` of a training with ``seed``: at the
    stack's SNR, no augmentation."""
    val = ReferenceSampler(volume, imaging, cfg.model, replace(cfg.augmentation, enabled=False),
                           torch.Generator().manual_seed(seed * 1000 + 999), device)
    inputs, rot, _ = val.batch(cfg.val_size)
    return inputs, rot


def write_training_figures(model: SiameseDistance, history: list[dict], val: Batch, figs: Path,
                           symmetry: str = "C1", turned: torch.Tensor | None = None) -> None:
    """Training curves (loss, validation median error and MAE per epoch), predicted vs true
    distances of the validation pairs, their error by distance, and (pose head) the
    validation images' orientation errors, one reading and, given ``turned``
    (:func:`consensus_errors`), the consensus of the turned readings; modulo the point group
    ``symmetry``."""
    group = point_group(symmetry)
    figs.mkdir(exist_ok=True)
    if history:
        ep = np.array([h["epoch"] for h in history])

        def col(key: str) -> np.ndarray:
            return np.array([h.get(key, np.nan) for h in history])

        plots.curves([("train loss", ep, col("train_loss")), ("validation MAE (rad)", ep, col("val_mae")),
                      ("validation median error (rad)", ep, np.deg2rad(col("val_median_deg")))],
                     figs / "loss.png", "epoch", "loss / error", title="Distance training")
    with torch.no_grad():
        model.eval()
        emb = torch.cat([model.embed(val[0][k:k + 256]).float()
                         for k in range(0, val[0].shape[0], 256)]).cpu()
    rot = val[1].cpu()
    i, j = torch.triu_indices(emb.shape[0], emb.shape[0], offset=1)
    rotation = model.config.head == "rotation" and emb.shape[1] == 9
    dm_pred, dm_true = validation_distances(model, emb, rot, group)
    pred, true = dm_pred[i, j].numpy(), dm_true[i, j].numpy()
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
    if rotation:
        series = [("one reading (training's validation)",
                   np.rad2deg(symmetric_distance(emb.view(-1, 3, 3), rot, group).numpy()))]
        if turned is not None:
            series.append(("consensus of 4 quarter turns (a stack's poses)", np.rad2deg(turned.cpu().numpy())))
        plots.histogram(series, figs / "pose_error.png", "predicted vs true orientation (degrees)",
                        title="Validation orientation error", bins=np.linspace(0, 180, 61),
                        markers=[(15.0, "15°")], medians="°")
