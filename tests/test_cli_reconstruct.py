import csv
import json

import mrcfile
import numpy as np
import pytest
import starfile

from cryorient.io import save_npz

from .cli_helpers import SMALL, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "sim"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 1500,
                           "--snr", "1", "--max-shift-px", 2, "--ctf", "--outdir", out, "--quiet")
    assert code == 0, err
    return out


def test_reconstruct_cli(sim, tmp_path):
    out = tmp_path / "rec"
    code, stdout, err = run_cli("reconstruct", "--particles", sim / "particles.star", "--reference",
                                sim / "volume.mrc", "--outdir", out, "--quiet")
    assert code == 0, err
    assert "half maps" in stdout and "vs reference" in stdout
    for name in ("reconstruction.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "metrics.json",
                 "figures/fsc.png", "figures/central_slices.png", "figures/projections.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    # band limit of the simulated density is 10 Å (2.5 px); SNR 1 with 1500 particles
    assert 9.0 < metrics["resolution_vs_reference_05_angstrom"] < 13.0
    assert 9.0 < metrics["resolution_halves_0143_angstrom"] < 13.0
    rows = list(csv.DictReader(open(out / "fsc.csv")))
    assert len(rows) == 17 and float(rows[2]["fsc_halves"]) > 0.9
    with mrcfile.open(out / "reconstruction.mrc") as m, mrcfile.open(sim / "volume.mrc") as t:
        assert m.voxel_size.x == pytest.approx(4.0)
        assert np.corrcoef(m.data.ravel(), t.data.ravel())[0, 1] > 0.8


def test_reference_on_another_grid_is_resampled(sim, tmp_path):
    with mrcfile.open(sim / "volume.mrc") as t:
        data = t.data.copy()
    big = np.zeros((48, 48, 48), np.float32)
    big[8:40, 8:40, 8:40] = data
    ref = tmp_path / "big.mrc"
    with mrcfile.new(ref) as m:
        m.set_data(big)
        m.voxel_size = 4.0
    code, _, err = run_cli("reconstruct", "--particles", sim / "particles.star", "--reference", ref,
                           "--no-halves", "--outdir", tmp_path / "r", "--quiet")
    assert code == 0, err
    assert "resampled" in err
    res = json.loads((tmp_path / "r/metrics.json").read_text())["resolution_vs_reference_05_angstrom"]
    assert res < 13.0


def test_orientations_from_npz_and_mismatch(sim, tmp_path):
    from cryorient.particles import read_particles
    from cryorient.so3 import rotmat_to_quat

    q = rotmat_to_quat(read_particles(sim / "particles.star").rotations())
    save_npz(tmp_path / "o.npz", quaternions=q)
    code, _, err = run_cli("reconstruct", "--particles", sim / "particles.star", "--orientations",
                           tmp_path / "o.npz", "--outdir", tmp_path / "ok", "--quiet")
    assert code == 0, err
    save_npz(tmp_path / "short.npz", quaternions=q[:100])
    code, _, err = run_cli("reconstruct", "--particles", sim / "particles.star", "--orientations",
                           tmp_path / "short.npz", "--outdir", tmp_path / "bad", "--quiet")
    assert_one_line_error(code, err, "100 orientations for 1500 images")
    assert not (tmp_path / "bad").exists()


def test_reconstruct_bad_inputs(sim, tmp_path):
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    noangle = sim / "noangle.star"  # next to the stack its image names point to
    starfile.write({"optics": blocks["optics"],
                    "particles": blocks["particles"].drop(columns=["rlnAnglePsi"])}, noangle)
    one = sim / "one.star"
    starfile.write({"optics": blocks["optics"], "particles": blocks["particles"].iloc[:1]}, one)
    cases = [
        (["--particles", noangle], "lacks column(s) rlnAnglePsi"),
        (["--particles", one], "half maps need at least 2 particles"),
        (["--particles", tmp_path / "nope.star"], "not found"),
        (["--particles", sim / "particles.star", "--reference", tmp_path / "nope.mrc"], "not found"),
        (["--particles", sim / "particles.star", "--wiener", "-1"], "must be a number > 0"),
    ]
    for args, fragment in cases:
        code, _, err = run_cli("reconstruct", *args, "--outdir", tmp_path / "out", "--quiet")
        assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "out").exists()
