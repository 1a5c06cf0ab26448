import json

import numpy as np
import pytest
import starfile

from cryorient.io import load_npz

from .cli_helpers import SMALL, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("recover") / "sim"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 300,
                           "--snr", "4", "--max-shift-px", 2, "--outdir", out, "--quiet")
    assert code == 0, err
    return out


def test_recover_cli_true_distances(sim, tmp_path):
    out = tmp_path / "rec"
    code, stdout, err = run_cli("recover", "--particles", sim / "particles.star", "--distances", "true",
                                "--restarts", "1", "--refine-rounds", "0", "--outdir", out, "--quiet")
    assert code == 0, err
    assert "median error" in stdout
    for name in ("orientations.star", "orientations.npz", "orientations_aligned.star", "loss.csv",
                 "ambiguity.json", "metrics.json", "figures/loss.png", "figures/errors.png",
                 "figures/viewing_directions.png", "figures/distances.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation"]["rotation_error"]["median_deg"] < 1.0
    assert metrics["final_loss"] < 1e-8
    assert metrics["evaluation"]["shift_error_px"]["median"] < 0.5
    rec = starfile.read(out / "orientations.star", always_dict=True)["particles"]
    orig = starfile.read(sim / "particles.star", always_dict=True)["particles"]
    assert len(rec) == 300 and list(rec.columns) == [*orig.columns, "rlnRandomSubset"]
    assert sorted(set(rec["rlnRandomSubset"])) == [1, 2] and (rec["rlnRandomSubset"] == 1).sum() == 150
    # the recovered angles are in the recovery's own frame: not the input's numbers
    assert not np.allclose(rec["rlnAngleRot"], orig["rlnAngleRot"], atol=1.0)
    aligned = starfile.read(out / "orientations_aligned.star", always_dict=True)["particles"]
    assert float(np.median(np.abs(aligned["rlnAngleTilt"] - orig["rlnAngleTilt"]))) < 1.0
    npz = load_npz(out / "orientations.npz", required=("quaternions", "raw_quaternions"))
    assert npz["quaternions"].shape == (300, 4)
    # the output STAR is a valid cryorient input again (image paths rewritten)
    code, _, err = run_cli("reconstruct", "--particles", out / "orientations.star", "--outdir",
                           tmp_path / "recon", "--quiet", "--no-halves")
    assert code == 0, err


def test_recover_cli_perturbed_and_euclidean(sim, tmp_path):
    code, _, err = run_cli("recover", "--particles", sim / "particles.star", "--distances",
                           "perturbed:0.2", "--restarts", "1", "--refine-rounds", "0",
                           "--outdir", tmp_path / "p", "--quiet")
    assert code == 0, err
    m = json.loads((tmp_path / "p/metrics.json").read_text())
    assert 0.1 < m["distance_error"]["rmse_rad"] < 0.3
    assert m["evaluation"]["rotation_error"]["median_deg"] < 15
    code, _, err = run_cli("recover", "--particles", sim / "particles.star", "--distances", "euclidean",
                           "--restarts", "1", "--refine-rounds", "0", "--outdir", tmp_path / "e", "--quiet")
    assert code == 0, err
    assert (tmp_path / "e/metrics.json").is_file()


def test_recover_bad_inputs(sim, tmp_path):
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    noangle = sim / "noangle_recover.star"
    starfile.write({"optics": blocks["optics"],
                    "particles": blocks["particles"].drop(columns=["rlnAngleTilt"])}, noangle)
    cases = [
        (["--particles", noangle, "--distances", "true"], "need the true orientations"),
        (["--particles", sim / "particles.star", "--distances", "bogus"], "unknown distance source"),
        (["--particles", sim / "particles.star", "--distances", "perturbed:x"], "noise level"),
        (["--particles", sim / "particles.star", "--pairs-per-particle", "0"], "must be an integer >= 1"),
        (["--particles", sim / "particles.star", "--restarts", "0"], "restarts must be an integer >= 1"),
        (["--particles", sim / "particles.star", "--cutoff", "5"], "cutoff must be in (0, pi]"),
        # the default needs no truth: a model, which the user must name
        (["--particles", sim / "particles.star"], "needs a model file"),
        (["--particles", sim / "particles.star", "--distances", "model"], "needs a model file"),
        (["--particles", sim / "particles.star", "--distances", "euclidean", "--pixel-size", "-4"],
         "must be a number > 0"),
        (["--particles", sim / "particles.star", "--distances", "euclidean", "--pixel-size", "3"],
         "only for RELION 3.0"),
    ]
    for args, fragment in cases:
        code, _, err = run_cli("recover", *args, "--outdir", tmp_path / "out", "--quiet")
        assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "out").exists()
