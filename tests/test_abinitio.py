"""The initial map from the particles alone: it reaches the structure (after aligning rotation
and hand), its random starts agree, and pure noise gives starts that disagree (a warning)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cryorient.abinitio.em import ab_initio, working_size
from cryorient.config import AbInitioConfig, DensityConfig, SimulationConfig
from cryorient.density import load_volume
from cryorient.particles import ImageStack
from cryorient.simulate.simulator import simulate_stack
from cryorient.volumes import aligned_fsc, resolution_at

BOX, PX = 32, 4.0
FAST = AbInitioConfig(iterations=20, batch_start=100, batch_end=200, seeds=2, grid_step_deg=20.0, top_poses=10)


@pytest.fixture(scope="module")
def particles():
    vol = load_volume("1ake_adk_closed", DensityConfig(box=BOX, pixel_size=PX))
    cfg = SimulationConfig(n_particles=500, snr=1.0, max_shift_px=1.5, ctf=True)
    stack, _ = simulate_stack(vol, PX, cfg, torch.Generator().manual_seed(0))
    return vol, stack.blind()


def test_working_size_puts_nyquist_beyond_the_final_resolution():
    assert working_size(64, 2.5, 18.0) == 24  # 160 Å box: Nyquist 13.3 Å
    assert working_size(256, 1.0, 18.0) == 36  # 256 Å box: Nyquist 14.2 Å
    assert working_size(32, 4.0, 18.0) == 24  # the minimum size, capped by the box
    assert working_size(20, 4.0, 18.0) == 20


def test_initial_map_from_the_particles_alone(particles):
    vol, stack = particles
    result = ab_initio(stack, FAST, seed=0)
    assert result.map.shape == (BOX, BOX, BOX)
    curve, _ = aligned_fsc(result.map, vol, PX, resolution=15.0)
    vs_truth = resolution_at(curve, BOX, PX, 0.5).angstrom
    assert vs_truth < 22.0, curve  # measured 18.2 Å (the map is low-passed at 18 Å)
    # the two random starts found the same object
    assert result.agree and not result.warnings(), result.agreement_angstrom  # measured 11.6 Å (needed: 25)
    assert len(result.seeds) == 2 and result.chosen in (0, 1)


def test_pure_noise_gives_starts_that_disagree(particles):
    _, stack = particles
    noise = torch.randn(stack.n, BOX, BOX, generator=torch.Generator().manual_seed(1))
    result = ab_initio(replace(stack, images=ImageStack.from_array(noise)), FAST, seed=0)
    assert not result.agree, result.agreement_angstrom  # measured: the pair agrees only to 48 Å
    assert "disagree" in result.warnings()[0]
