import math

import numpy as np
import pytest
import torch

from cryorient import so3
from cryorient.config import CTFSampling, DensityConfig, SimulationConfig
from cryorient.ctf import first_zero_frequency
from cryorient.density import load_volume, match_grid
from cryorient.imaging.accumulator import FourierAccumulator
from cryorient.imaging.projector import prepare_volume
from cryorient.imaging.render import render
from cryorient.simulate.simulator import draw_particles
from cryorient.volumes import fsc, resolution_at, shell_frequencies

BOX = 32


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    # band-limited at 0.8 of Nyquist: resolution 2.5 px
    return load_volume("1ake_adk_closed", DensityConfig(box=BOX, pixel_size=4.0, resolution=10.0))


def reconstruct_from(volume, cfg: SimulationConfig, seed: int = 0, wiener: float = 0.002):
    truth = draw_particles(cfg, torch.Generator().manual_seed(seed))
    prep = prepare_volume(volume)
    acc = FourierAccumulator.empty(BOX)
    for lo in range(0, cfg.n_particles, 500):
        sl = slice(lo, lo + 500)
        ctf = truth.ctf.subset(sl) if truth.ctf is not None else None
        images = render(prep, truth.rotations[sl], truth.shifts_px[sl], ctf, 4.0)
        # RELION origins are minus the applied displacement
        acc.insert(images, truth.rotations[sl], -truth.shifts_px[sl], ctf, 4.0)
    return acc.finalize(wiener), truth


def shells_up_to(fraction_of_nyquist: float) -> slice:
    return slice(1, int(fraction_of_nyquist * BOX / 2) + 1)


def test_2000_views_reconstruct_to_08_nyquist(volume):
    rec, _ = reconstruct_from(volume, SimulationConfig(n_particles=2000, snr=math.inf, max_shift_px=0))
    curve = fsc(rec, volume)
    assert curve[shells_up_to(0.8)].min() > 0.95, curve
    assert abs(float((rec * volume).sum() / (volume * volume).sum()) - 1) < 0.02


def test_shifts_applied_and_undone(volume):
    rec, _ = reconstruct_from(volume, SimulationConfig(n_particles=2000, snr=math.inf, max_shift_px=4))
    assert fsc(rec, volume)[shells_up_to(0.8)].min() > 0.95
    # ignoring the origins must hurt: the test can fail
    truth = draw_particles(SimulationConfig(n_particles=2000, snr=math.inf, max_shift_px=4),
                           torch.Generator().manual_seed(0))
    acc = FourierAccumulator.empty(BOX)
    images = render(prepare_volume(volume), truth.rotations, truth.shifts_px, None, 4.0)
    acc.insert(images, truth.rotations)
    assert fsc(acc.finalize(0.002), volume)[shells_up_to(0.8)].min() < 0.5


def test_ctf_wiener_reconstruction(volume):
    """Noiseless images with CTF (defocus 1-2.5 µm): FSC > 0.9 from the first shell to 0.8 of
    Nyquist, i.e. far beyond the first CTF zero (stated: ~1/17 Å^-1 at 2.5 µm)."""
    cfg = SimulationConfig(n_particles=2000, snr=math.inf, max_shift_px=2, ctf=True,
                           ctf_sampling=CTFSampling())
    rec, truth = reconstruct_from(volume, cfg)
    curve = fsc(rec, volume)
    first_zero = first_zero_frequency(truth.ctf, 4.0) / 4.0  # 1/Å
    assert first_zero < shell_frequencies(BOX, 4.0)[shells_up_to(0.8)].max()
    assert curve[shells_up_to(0.8)].min() > 0.9, curve


def test_fsc_identities_and_resolution_interpolation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(BOX, BOX, BOX, generator=g)
    b = torch.randn(BOX, BOX, BOX, generator=g)
    assert np.allclose(fsc(a, a), 1.0, atol=1e-5)
    noise = np.abs(fsc(a, b))
    # a shell of n voxels correlates by chance ~ 1/sqrt(n): small at all but the lowest shells
    assert noise[5:].max() < 0.1 and noise[1:].mean() < 0.06
    box, px = 64, 2.0
    k = np.arange(box // 2 + 1)
    curve = np.clip(1.2 - k / 20.0, 0, 1)  # crosses 0.5 at k = 14 exactly
    res = resolution_at(curve, box, px, 0.5)
    assert res.angstrom == pytest.approx(box * px / 14.0) and not res.reached_nyquist
    res = resolution_at(np.ones(box // 2 + 1), box, px, 0.143)
    assert res.reached_nyquist and res.angstrom == pytest.approx(2 * px)


def test_match_grid_keeps_the_frame(volume):
    big = match_grid(volume.numpy(), 4.0, 48, 4.0)
    assert big.shape == (48, 48, 48)
    assert torch.allclose(big[8:40, 8:40, 8:40], volume)
    fine = match_grid(volume.numpy(), 4.0, 64, 2.0)
    back = match_grid(fine.numpy(), 2.0, BOX, 4.0)
    assert np.corrcoef(back.flatten(), volume.flatten())[0, 1] > 0.98


def test_insertion_is_batch_independent(volume):
    truth = draw_particles(SimulationConfig(n_particles=64, snr=math.inf), torch.Generator().manual_seed(1))
    images = render(prepare_volume(volume), truth.rotations, truth.shifts_px, None, 4.0)
    one, two = FourierAccumulator.empty(BOX), FourierAccumulator.empty(BOX)
    one.insert(images, truth.rotations)
    for sl in (slice(0, 20), slice(20, 64)):
        two.insert(images[sl], truth.rotations[sl])
    assert torch.allclose(one.data, two.data, atol=1e-3)
    assert so3.rotmat_angle(truth.rotations).shape == (64,)


def test_translation_peak_at_the_search_window_edge_is_finite():
    """A correlation peak on the rim of the search window (neighbours outside it) gives a
    finite, whole-pixel shift, not NaN."""
    from cryorient.imaging.translation import translation

    g = torch.Generator().manual_seed(0)
    ref = torch.zeros(4, 32, 32)
    ref[:, 16, 16] = 1.0
    img = torch.roll(ref, shifts=(0, 5), dims=(-2, -1)) + 0.01 * torch.randn(4, 32, 32, generator=g)
    s = translation(img, ref, limit_px=5.0, lowpass_fraction=1.0)
    assert torch.isfinite(s).all()
    assert torch.allclose(s[:, 0], torch.full((4,), 5.0), atol=0.51) and s[:, 1].abs().max() < 0.51
