"""Real RELION 3.1 as the oracle for cryorient's conventions.

These tests fail (not skip) when RELION is missing on Linux: `make test` installs it
(`apt-get install -y relion`). Measured correlations are printed (pytest -s) and kept in the
assertion messages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from cryorient.config import CTFSampling, SimulationConfig
from cryorient.imaging.projector import prepare_volume
from cryorient.io import read_mrc, write_mrc, write_star
from cryorient.particles import read_particles
from cryorient.simulate.simulator import draw_particles, particle_table, render, simulation_optics
from cryorient.so3 import rotmat_distance

from .cli_helpers import SMALL, run_cli
from .conftest import blob_volume


@pytest.fixture(scope="module", autouse=True)
def relion_installed():
    if shutil.which("relion_project") is None:
        if sys.platform.startswith("linux"):
            pytest.fail("RELION is not installed; `make test` installs it (apt-get install -y relion)")
        pytest.skip("RELION is only installed automatically on Linux")


def relion(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{args[0]} failed: {proc.stderr[-500:]}"


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)])


def project_both(tmp_path: Path, volume: torch.Tensor, px: float, cfg: SimulationConfig, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, Path]:
    """Our images and relion_project's for the same volume and STAR (angles, shifts, CTF)."""
    box = volume.shape[-1]
    write_mrc(tmp_path / "vol.mrc", volume, px)
    truth = draw_particles(cfg, torch.Generator().manual_seed(seed))
    table = particle_table(truth, px)
    table.insert(0, "rlnImageName", [f"{i + 1:06d}@none.mrcs" for i in range(len(table))])
    write_star(tmp_path / "ang.star", {"optics": simulation_optics(cfg, px, box), "particles": table})
    args = ["relion_project", "--i", "vol.mrc", "--o", "proj", "--ang", "ang.star"]
    relion(args + (["--ctf"] if cfg.ctf else []), tmp_path)
    theirs, _ = read_mrc(tmp_path / "proj.mrcs")
    ours = render(prepare_volume(volume), truth.rotations, truth.shifts_px, truth.ctf, px).numpy()
    return ours, theirs, tmp_path / "proj.star"


def test_projection_matches_relion_project_even_box(tmp_path, adk_volume_64):
    cfg = SimulationConfig(n_particles=24, max_shift_px=5.0)  # sub-pixel shifts, in Å in the STAR
    ours, theirs, _ = project_both(tmp_path, adk_volume_64, 2.0, cfg, seed=11)
    cc = correlations(ours, theirs)
    print(f"\nrelion_project vs cryorient, box 64, no CTF: min corr {cc.min():.5f}, mean {cc.mean():.5f}")
    assert cc.min() > 0.995, cc
    scale = float(np.linalg.norm(theirs) / np.linalg.norm(ours))
    assert abs(scale - 1) < 0.01, scale  # same units: line integrals in voxel units


def test_ctf_projection_matches_relion_project(tmp_path, adk_volume_64):
    cfg = SimulationConfig(n_particles=24, max_shift_px=5.0, ctf=True,
                           ctf_sampling=CTFSampling(astigmatism_angstrom=2000.0))
    ours, theirs, _ = project_both(tmp_path, adk_volume_64, 2.0, cfg, seed=12)
    cc = correlations(ours, theirs)
    print(f"\nrelion_project --ctf vs cryorient, box 64: min corr {cc.min():.5f}, mean {cc.mean():.5f}")
    assert cc.min() > 0.995, cc
    rel_err = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    assert rel_err < 0.03, rel_err


def test_odd_box_relion_displaces_by_one_pixel(tmp_path):
    """Finding: for odd boxes relion_project puts the centre at (D//2 + 1, D//2 + 1); cryorient
    (like the independent real-space projector) uses D//2. RELION extracts even boxes only, and
    cryorient refuses odd boxes when it builds volumes."""
    vol = blob_volume(33, sigma=1.5)
    ours, theirs, _ = project_both(tmp_path, vol, 2.0, SimulationConfig(n_particles=8, max_shift_px=2),
                                   seed=13)
    raw = correlations(ours, theirs)
    aligned = correlations(ours, np.roll(theirs, (-1, -1), axis=(1, 2)))
    print(f"\nodd box 33: corr {raw.mean():.4f} as is, {aligned.mean():.5f} after a 1-px shift")
    assert aligned.min() > 0.995 and raw.mean() < 0.97


def test_relion_project_star_loads_into_cryorient(tmp_path, adk_volume_64):
    cfg = SimulationConfig(n_particles=10, max_shift_px=3.0, ctf=True)
    _, theirs, star = project_both(tmp_path, adk_volume_64, 2.0, cfg, seed=14)
    stack = read_particles(star)
    assert stack.n == 10 and stack.box == 64 and stack.pixel_size == pytest.approx(2.0)
    ours_truth = draw_particles(cfg, torch.Generator().manual_seed(14))
    assert torch.allclose(stack.rotations(), ours_truth.rotations, atol=1e-4)
    assert torch.allclose(stack.shifts_angstrom(), -ours_truth.shifts_px * 2.0, atol=1e-3)
    assert stack.ctf() is not None
    np.testing.assert_allclose(stack.images.read().numpy(), theirs, atol=1e-6)


def test_relion_reconstruct_accepts_our_star(tmp_path):
    """relion_reconstruct, given our STAR as is, rebuilds our ground-truth volume: RELION reads
    our angles and origins the way we wrote them."""
    out = tmp_path / "sim"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 800,
                           "--snr", "inf", "--max-shift-px", 3, "--outdir", out, "--quiet")
    assert code == 0, err
    relion(["relion_reconstruct", "--i", "particles.star", "--o", "relion_rec.mrc"], out)
    rec, px = read_mrc(out / "relion_rec.mrc")
    truth, _ = read_mrc(out / "volume.mrc")
    assert px == pytest.approx(4.0)
    corr = np.corrcoef(rec.ravel(), truth.ravel())[0, 1]
    print(f"\nrelion_reconstruct from cryorient's STAR vs ground truth: corr {corr:.4f}")
    assert corr > 0.95
    # the same STAR with every psi off by 37 degrees must reconstruct worse: the check can fail
    p = starfile.read(out / "particles.star", always_dict=True)
    bad = p["particles"].copy()
    bad["rlnAnglePsi"] = bad["rlnAnglePsi"] + 37.0
    starfile.write({"optics": p["optics"], "particles": bad}, out / "bad.star")
    relion(["relion_reconstruct", "--i", "bad.star", "--o", "bad_rec.mrc"], out)
    bad_rec, _ = read_mrc(out / "bad_rec.mrc")
    assert np.corrcoef(bad_rec.ravel(), truth.ravel())[0, 1] < corr - 0.2


REFINE_ONE_ITERATION = ["--iter", "1", "--K", "1", "--particle_diameter", "110", "--ini_high", "8",
                        "--firstiter_cc", "--healpix_order", "2", "--offset_range", "3", "--offset_step", "1",
                        "--tau2_fudge", "2", "--pad", "1", "--j", "1", "--dont_combine_weights_via_disc",
                        "--pool", "10", "--sym", "C1", "--oversampling", "1", "--random_seed", "1"]


def refine_once(cwd: Path, star: str, name: str, *extra: str) -> Path:
    (cwd / name).mkdir()
    relion(["relion_refine", "--i", star, "--ref", "volume.mrc", "--o", f"{name}/run",
            *REFINE_ONE_ITERATION, *extra], cwd)
    return cwd / name / "run_it001_data.star"


def test_relion_refine_accepts_our_star_and_its_data_star_loads(tmp_path):
    """relion_refine (one iteration of 3D classification, K=1, from the true map) takes
    cryorient's STAR as is: without CTF it finds our angles; with CTF it treats our STAR and
    images exactly as relion_project's own; its _data.star loads back into cryorient."""
    clean = tmp_path / "clean"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 100, "--snr", "inf", "--max-shift-px", 0,
                           "--outdir", clean, "--quiet")
    assert code == 0, err
    data = refine_once(clean, "particles.star", "cls")
    stack, ours = read_particles(data), read_particles(clean / "particles.star")
    assert stack.n == ours.n == 100 and stack.box == 32 and stack.pixel_size == pytest.approx(4.0)
    np.testing.assert_allclose(stack.images.read().numpy(), ours.images.read().numpy())
    err_deg = torch.rad2deg(rotmat_distance(stack.rotations(), ours.rotations()))
    print(f"\nrelion_refine on cryorient's STAR: median {float(err_deg.median()):.1f} deg from the truth "
          "(HEALPix order 2 = 7.5 deg sampling)")
    assert float(err_deg.median()) < 10
    # CTF: RELION's search on our images and on its own relion_project images of the same STAR agree
    ctf = tmp_path / "ctf"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 40, "--snr", "inf", "--ctf",
                           "--max-shift-px", 2, "--outdir", ctf, "--quiet")
    assert code == 0, err
    relion(["relion_project", "--i", "volume.mrc", "--o", "theirs", "--ang", "particles.star", "--ctf"], ctf)
    ours_ctf = read_particles(refine_once(ctf, "particles.star", "a", "--ctf"))
    theirs_ctf = read_particles(refine_once(ctf, "theirs.star", "b", "--ctf"))
    assert ours_ctf.ctf() is not None
    assert torch.allclose(ours_ctf.rotations(), theirs_ctf.rotations(), atol=1e-4)
    assert torch.allclose(ours_ctf.shifts_angstrom(), theirs_ctf.shifts_angstrom(), atol=1e-3)


@pytest.mark.parametrize("group", ["C3", "C7", "D2", "D5", "T", "O", "I", "I1", "I3", "I4"])
def test_symmetrised_map_matches_relion_image_handler(tmp_path, group):
    """RELION's operators (axes included) for every family: cryorient's symmetrised map equals
    `relion_image_handler --sym` on an asymmetric map (correlation inside the sphere)."""
    from cryorient.symmetry import point_group, symmetrise
    from cryorient.volumes import soft_sphere_mask

    vol = blob_volume(48, n_blobs=30, sigma=2.0, seed=3)
    write_mrc(tmp_path / "vol.mrc", vol, 2.0)
    relion(["relion_image_handler", "--i", "vol.mrc", "--o", "sym.mrc", "--sym", group], tmp_path)
    theirs, _ = read_mrc(tmp_path / "sym.mrc")
    ours = symmetrise(vol, point_group(group)).numpy()
    mask = soft_sphere_mask(48, 18.0).numpy() > 0.5
    corr = np.corrcoef(ours[mask], theirs[mask])[0, 1]
    plain = np.corrcoef(vol.numpy()[mask], theirs[mask])[0, 1]
    assert corr > 0.99, (group, corr, plain)  # measured 1.0000 for every group
    assert plain < 0.9 or group == "C3", (group, plain)  # the test can tell a wrong group
