"""Pose proposals from a network, for the refinement loop (:class:`cryorient.refine.loop.PoseProposer`).

Per half set and round: a network is trained (first round) or fine-tuned from the previous
round's (later rounds) on projections of that half's current map, made like the particles
(CTF, SNR, shifts), for a short budget; its rotation head's output for each particle is the
proposed pose, in the map's frame: the consensus of the image's quarter-turned readings, then
its K hypotheses (``hypotheses``) for the image and for each of its quarter turns
(:func:`~cryorient.distance.predict.hypotheses_stack`), the most probable first, each a candidate
the loop scores against the map. Its validation (median pose error on projections of the
same map) is returned with the proposal, so the loop can fall back on the global search when
the network has not learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig
from ..particles import ParticleStack
from ..symmetry import point_group
from .data import ImagingModel
from .predict import hypotheses_stack
from .preprocess import default_input
from .train import load_model, train_on_reference


@dataclass(frozen=True)
class NetworkProposal:
    # (n, 1 + 4 K, 3, 3): the turns' consensus, then K hypotheses x 4 quarter turns, the most probable first
    rotations: torch.Tensor | None
    val_median_deg: float
    weak: bool
    consensus_median_deg: float | None = None  # the validation read as the stack is (the turns' consensus)


@dataclass
class NetworkProposer:
    imaging: ImagingModel  # measured on the whole stack
    workdir: Path
    train_minutes: float = 2.0
    finetune_minutes: float = 0.5
    input_size: int = ModelConfig().input_size  # px at the network input (at most; never upsampled)
    hypotheses: int | None = None  # pose hypotheses per particle (ModelConfig.hypotheses; None: its default)
    symmetry: str = "C1"  # the maps' point group: the networks learn poses modulo it
    seed: int = 0
    device: torch.device | None = None
    models: dict = field(default_factory=dict)  # half -> the last model trained for it
    name: str = "network"

    def propose(self, particles: ParticleStack, volume: torch.Tensor, resolution: float, half: int,
                round_index: int) -> NetworkProposal:
        outdir = self.workdir / f"round_{round_index:02d}" / f"half{half + 1}"
        (outdir / "figures").mkdir(parents=True, exist_ok=True)
        size, input_px = default_input(particles.box, particles.pixel_size, self.input_size)
        model = ModelConfig(input_size=size, input_pixel_size=input_px,
                            phase_flip=particles.ctf() is not None, hypotheses=self.hypotheses)
        init = self.models.get(half)
        first = init is None
        cfg = TrainConfig(minutes=self.train_minutes if first else self.finetune_minutes, model=model,
                          symmetry=self.symmetry,
                          curriculum_epochs=TrainConfig().curriculum_epochs if first else 1)
        # this half's CTF parameters only: nothing of the other half reaches it
        imaging = replace(self.imaging, ctf=particles.ctf())
        seed = self.seed * 100 + round_index * 2 + half
        result = train_on_reference(volume, imaging, cfg, outdir, seed=seed, init=init, device=self.device)
        median = float(result.final.get("val_median_deg", math.nan))
        consensus = result.final.get("val_consensus_median_deg")
        if result.weak:
            return NetworkProposal(None, median, True, consensus)
        self.models[half] = result.model_path
        net = load_model(result.model_path).to(self.device)
        return NetworkProposal(hypotheses_stack(net, particles, group=point_group(self.symmetry)), median, False,
                               consensus)

