"""Truth-blind by construction: the same particle STAR with and without its pose columns
(rlnAngle*, rlnOrigin*) gives bit-identical estimates in every command that estimates poses
(run: refinement and the distance method; train; recover with a model; reconstruct from a
recovery's poses). Only the evaluation may read them."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryorient.particles import POSE_COLUMNS

from .cli_helpers import SMALL, run_cli


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    root = tmp_path_factory.mktemp("blind")
    sim = root / "sim"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 200, "--snr", "1", "--max-shift-px", 2,
                           "--ctf", "--outdir", sim, "--quiet")
    assert code == 0, err
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    blind = sim / "blind.star"
    starfile.write({"optics": blocks["optics"],
                    "particles": blocks["particles"].drop(columns=[c for c in POSE_COLUMNS
                                                                   if c in blocks["particles"].columns])},
                   blind)
    return root, sim / "particles.star", blind


def _same_star_values(a, b, columns):
    ta = starfile.read(a, always_dict=True)["particles"]
    tb = starfile.read(b, always_dict=True)["particles"]
    for c in columns:
        np.testing.assert_array_equal(ta[c].to_numpy(), tb[c].to_numpy(), err_msg=c)


def _same_map(a, b):
    with mrcfile.open(a) as ma, mrcfile.open(b) as mb:
        np.testing.assert_array_equal(ma.data, mb.data)


TRAIN = ["--max-epochs", "1", "--steps-per-epoch", "4", "--batch-size", "16", "--width", "8", "--input-size", "16"]


def test_train_recover_reconstruct_are_blind(stars, tmp_path):
    _, full, blind = stars
    weights = {}
    for name, star in (("full", full), ("blind", blind)):
        out = tmp_path / f"train_{name}"
        code, _, err = run_cli("train", "--reference", "1ake_adk_closed", "--particles", star, *TRAIN,
                               "--outdir", out, "--quiet")
        assert code == 0, err
        weights[name] = torch.load(out / "model.pt", weights_only=True)
    # the imaging the training imitated (SNR, shift range measured from the images) and the weights
    assert weights["full"]["summary"]["imaging"] == weights["blind"]["summary"]["imaging"]
    for (k, a), b in zip(weights["full"]["state_dict"].items(), weights["blind"]["state_dict"].values()):
        assert torch.equal(a, b), k
    model = tmp_path / "train_full" / "model.pt"
    for name, star in (("full", full), ("blind", blind)):
        code, _, err = run_cli("recover", "--particles", star, "--distances", f"model:{model}", "--restarts", "1",
                               "--refine-rounds", "1", "--ambiguity-images", "200", "--outdir",
                               tmp_path / f"rec_{name}", "--quiet")
        assert code == 0, err
    _same_star_values(tmp_path / "rec_full" / "orientations.star", tmp_path / "rec_blind" / "orientations.star",
                      ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                       "rlnRandomSubset"])
    assert (tmp_path / "rec_full" / "orientations_aligned.star").is_file()  # the evaluation ran
    assert not (tmp_path / "rec_blind" / "orientations_aligned.star").exists()  # nothing to evaluate
    # reconstruct from the recovery's poses: origins come from them, not from the STAR's truth
    for name, star in (("full", full), ("blind", blind)):
        code, _, err = run_cli("reconstruct", "--particles", star, "--orientations",
                               tmp_path / "rec_full" / "orientations.npz", "--outdir", tmp_path / f"map_{name}",
                               "--quiet")
        assert code == 0, err
    _same_map(tmp_path / "map_full" / "reconstruction.mrc", tmp_path / "map_blind" / "reconstruction.mrc")


@pytest.mark.parametrize("method", ["refine", "distances"])
def test_run_is_blind(stars, tmp_path, method, monkeypatch):
    monkeypatch.setenv("CRYORIENT_CACHE", str(tmp_path / "cache"))
    _, full, blind = stars
    # refine: round 0 from the particles' own map (ab initio), put in the reference's frame
    extra = (["--poses", "search", "--max-rounds", "1", "--start", "particles", "--abinitio-seeds", "1",
              "--abinitio-iterations", "8"] if method == "refine"
             else [*TRAIN[:2], "--steps-per-epoch", "4", "--train-batch-size", "16", "--width", "8",
                   "--input-size", "16", "--restarts", "1", "--refine-rounds", "1", "--ambiguity-images", "200"])
    for name, star in (("full", full), ("blind", blind)):
        code, _, err = run_cli("run", "--method", method, "--particles", star, "--reference", "1ake_adk_closed",
                               *extra, "--outdir", tmp_path / name, "--quiet")
        assert code == 0, err
    _same_star_values(tmp_path / "full" / "particles.star", tmp_path / "blind" / "particles.star",
                      ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"])
    _same_map(tmp_path / "full" / "map.mrc", tmp_path / "blind" / "map.mrc")
    s_full = json.loads((tmp_path / "full" / "summary.json").read_text())
    s_blind = json.loads((tmp_path / "blind" / "summary.json").read_text())
    assert "median_error_deg" in s_full and "median_error_deg" not in s_blind
