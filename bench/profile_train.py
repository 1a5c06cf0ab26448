"""Profile one training step (docs/model.md): augmentation, draws, rendering at the input size,
noise, preprocessing, forward, backward, optimiser; bf16 autocast + channels-last as training
uses them, or fp32 (``python bench/profile_train.py fp32``). Demo setting: 3kpr_single, box 64
at 2.5 Å/px, CTF, 128 images per step at the default input size; 40 steps timed after 5 warm-up steps."""

from __future__ import annotations

import sys
import time

import torch

from cryorient.config import DensityConfig, ModelConfig, SimulationConfig, TrainConfig
from cryorient.density import load_volume
from cryorient.distance.data import ReferenceSampler, augment_volume, balanced_orientations, imaging_from_stack
from cryorient.distance.model import SiameseDistance
from cryorient.distance.preprocess import default_input, prepare_inputs
from cryorient.distance.train import batch_loss, use_bf16
from cryorient.imaging.noise import sample_noise
from cryorient.imaging.render import render, sample_shifts
from cryorient.simulate.simulator import simulate_stack

STEPS, WARMUP, BATCH = 40, 5, 128


def main() -> None:
    torch.manual_seed(0)
    vol = load_volume("3kpr_single", DensityConfig(box=64, pixel_size=2.5))
    stack, _ = simulate_stack(vol, 2.5, SimulationConfig(n_particles=500, ctf=True), torch.Generator().manual_seed(0))
    imaging = imaging_from_stack(stack.blind(), vol, 6.25)
    size, input_px = default_input(64, 2.5, ModelConfig().input_size)
    cfg = TrainConfig(model=ModelConfig(input_size=size, input_pixel_size=input_px))
    g = torch.Generator().manual_seed(1)
    sampler = ReferenceSampler(vol, imaging, cfg.model, cfg.augmentation, g)
    model = SiameseDistance(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bf16 = use_bf16("auto", torch.device("cpu")) if len(sys.argv) < 2 else sys.argv[1] == "bf16"
    times: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        return time.perf_counter()

    for step in range(STEPS + WARMUP):
        if step == WARMUP:
            times.clear()
        t = time.perf_counter()
        if cfg.augmentation.enabled and step % cfg.augmentation.refresh == 0:  # off by default
            sampler.augmented = augment_volume(sampler.volume, 2.5, cfg.augmentation, g)
            sampler.prepared = sampler._prepare(sampler.augmented)
        t = lap("augmentation + volume preparation (when enabled)", t)
        rot, designed = balanced_orientations(BATCH, g)
        shifts = sample_shifts(BATCH, imaging.max_shift_px, g) * 0.5
        ctf = sampler._ctf(BATCH, g)
        t = lap("draws", t)
        img = render(sampler.prepared, rot, shifts, ctf, sampler.small_px)
        t = lap("render (input size)", t)
        img = img + sample_noise(img.shape, sampler.noise_variance, g)
        t = lap("noise", t)
        x = prepare_inputs(img, sampler.small_px, ctf, size, input_px, True)
        t = lap("preprocessing (phase flip, normalise)", t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = batch_loss(model, x, rot, designed, cfg)  # as training computes it
        t = lap("forward + loss", t)
        opt.zero_grad()
        loss.backward()
        t = lap("backward", t)
        opt.step()
        lap("optimiser", t)
    total = sum(times.values())
    print(f"bf16={bf16}")
    for k, v in times.items():
        print(f"| {k} | {1000 * v / STEPS:.1f} | {100 * v / total:.0f}% |")
    print(f"| total | {1000 * total / STEPS:.1f} ms/step ({STEPS / total:.1f} steps/s) | |")


if __name__ == "__main__":
    main()
