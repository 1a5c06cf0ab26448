import math

import numpy as np
import pytest
import torch

from cryorient import so3
from cryorient.config import CTFSampling, SimulationConfig
from cryorient.ctf import ctf_rfft, first_zero_frequency, sample_ctf
from cryorient.errors import CryorientError
from cryorient.fourier import shift_images
from cryorient.imaging.noise import measured_snr
from cryorient.imaging.projector import prepare_volume, project
from cryorient.imaging.render import render
from cryorient.simulate.simulator import draw_particles, simulate_stack


@pytest.mark.parametrize("snr", [1.0, 1 / 16])
def test_measured_snr_within_5_percent(adk_volume_32, snr):
    g = torch.Generator().manual_seed(0)
    stack, truth = simulate_stack(adk_volume_32, 4.0, SimulationConfig(n_particles=600, snr=snr), g)
    assert abs(truth.measured_snr / snr - 1) < 0.05
    clean = render(prepare_volume(adk_volume_32), truth.rotations, truth.shifts_px, None, 4.0)
    assert abs(measured_snr(clean, stack.images.read()) / snr - 1) < 0.05


def test_noise_variance_option_is_absolute(adk_volume_32):
    g = torch.Generator().manual_seed(0)
    stack, truth = simulate_stack(adk_volume_32, 4.0,
                                  SimulationConfig(n_particles=200, noise_variance=16.0), g)
    clean = render(prepare_volume(adk_volume_32), truth.rotations, truth.shifts_px, None, 4.0)
    noise = stack.images.read() - clean
    assert abs(float(noise.var()) / 16.0 - 1) < 0.03


def test_same_seed_identical_stack(adk_volume_32):
    cfg = SimulationConfig(n_particles=100, ctf=True)
    a, _ = simulate_stack(adk_volume_32, 4.0, cfg, torch.Generator().manual_seed(7))
    b, _ = simulate_stack(adk_volume_32, 4.0, cfg, torch.Generator().manual_seed(7))
    c, _ = simulate_stack(adk_volume_32, 4.0, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a.images.read(), b.images.read())
    assert a.particles.equals(b.particles)
    assert not torch.equal(a.images.read(), c.images.read())


def test_shifts_recorded_and_undone(adk_volume_32):
    g = torch.Generator().manual_seed(3)
    cfg = SimulationConfig(n_particles=50, snr=math.inf, max_shift_px=3.0)
    stack, _truth = simulate_stack(adk_volume_32, 4.0, cfg, g)
    origin = stack.shifts_angstrom()
    assert origin.norm(dim=1).max() <= 3.0 * 4.0 + 1e-4 and origin.abs().max() > 1.0
    centred = shift_images(stack.images.read(), origin / 4.0)  # undo: shift by +origin / px
    ref = project(adk_volume_32, stack.rotations())
    assert float((centred - ref).norm() / ref.norm()) < 1e-3


def test_ctf_applied_and_recorded(adk_volume_32):
    g = torch.Generator().manual_seed(4)
    cfg = SimulationConfig(n_particles=20, snr=math.inf, max_shift_px=0, ctf=True)
    stack, truth = simulate_stack(adk_volume_32, 4.0, cfg, g)
    ctf = stack.ctf()
    assert ctf is not None
    assert torch.allclose(ctf.defocus_u_angstrom, truth.ctf.defocus_u_angstrom)
    spectra = torch.fft.rfft2(torch.fft.ifftshift(stack.images.read(), dim=(-2, -1)))
    plain = torch.fft.rfft2(torch.fft.ifftshift(project(adk_volume_32, stack.rotations()),
                                                dim=(-2, -1)))
    expect = plain * ctf_rfft(ctf, 32, 4.0)
    assert float((spectra - expect).abs().max() / expect.abs().max()) < 1e-4


def test_ctf_sign_and_first_zero():
    params = sample_ctf(4, CTFSampling(defocus_min_angstrom=15000, defocus_max_angstrom=15000,
                                       astigmatism_angstrom=0), torch.Generator().manual_seed(0))
    c = ctf_rfft(params, 64, 2.0)
    assert abs(float(c[0, 0, 0]) - 0.1) < 1e-6  # RELION sign: +Q at the origin
    assert float(c[0, 0, 1]) > 0.1  # and positive at low frequency for underfocus
    f0 = first_zero_frequency(params, 2.0)
    # first zero of sin(pi lambda df k^2 + ...) near k = sqrt(1 / (lambda df)) = 0.058 / Å
    assert 0.05 < f0 / 2.0 < 0.065


def test_orientation_ranges_in_star(adk_volume_32):
    g = torch.Generator().manual_seed(5)
    cfg = SimulationConfig(n_particles=300, tilt_range_deg=(0.0, 72.0), snr=math.inf)
    stack, truth = simulate_stack(adk_volume_32, 4.0, cfg, g)
    assert stack.particles["rlnAngleTilt"].max() <= 72.0 + 1e-4
    assert torch.allclose(stack.rotations(), truth.rotations, atol=1e-5)


def test_batched_equals_looped_and_inputs_not_mutated(adk_volume_32):
    g = torch.Generator().manual_seed(6)
    vol = adk_volume_32.clone()
    rot = so3.sample_rotations(10, g)
    rot_copy = rot.clone()
    batched = project(vol, rot, batch_size=4)
    looped = torch.cat([project(vol, r[None]) for r in rot])
    assert torch.allclose(batched, looped, atol=1e-5)
    assert torch.equal(vol, adk_volume_32) and torch.equal(rot, rot_copy)
    truth = draw_particles(SimulationConfig(n_particles=10, ctf=True), g)
    shifts = truth.shifts_px.clone()
    render(prepare_volume(vol), truth.rotations, truth.shifts_px, truth.ctf, 4.0)
    assert torch.equal(shifts, truth.shifts_px)


def test_dtype_kept(adk_volume_32):
    g = torch.Generator().manual_seed(6)
    rot = so3.sample_rotations(3, g, dtype=torch.float64)
    out = project(adk_volume_32.double(), rot)
    assert out.dtype == torch.float64
    assert np.allclose(out.float().numpy(), project(adk_volume_32, rot.float()).numpy(), atol=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    ({"n_particles": 0}, "integer >= 1"),
    ({"snr": 1e-30}, "below 0.0001"),
    ({"snr": 0.0}, "SNR must be > 0"),
    ({"snr": -1.0}, "SNR must be > 0"),
    ({"max_shift_px": -1.0}, "maximum shift"),
])
def test_bad_simulation_config(kwargs, match):
    with pytest.raises(CryorientError, match=match):
        SimulationConfig(**kwargs)
