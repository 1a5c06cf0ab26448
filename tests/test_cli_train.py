import json

import mrcfile
import numpy as np
import pytest
import torch

from cryorient.io import load_npz

from .cli_helpers import SMALL, assert_one_line_error, run_cli

TINY = ["--max-epochs", "1", "--steps-per-epoch", "3", "--batch-size", "16", "--width", "8",
        "--input-size", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    sim = root / "sim"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 200,
                           "--snr", "1", "--max-shift-px", 1, "--ctf", "--outdir", sim, "--quiet")
    assert code == 0, err
    out = root / "train"
    code, stdout, err = run_cli("train", "--reference", "1ake_adk_closed", "--particles",
                                sim / "particles.star", *TINY, "--outdir", out, "--quiet")
    assert code == 0, err
    assert "validation: median orientation error" in stdout
    assert "on a stack (the consensus of each image's 4 quarter-turned readings)" in stdout
    assert "WARNING: the distance model is too weak to trust" in stdout  # 3 steps cannot learn
    return sim, out


def test_train_outputs(trained):
    _, out = trained
    for name in ("model.pt", "checkpoint.pt", "metrics.jsonl", "config.yaml", "run.json",
                 "figures/loss.png", "figures/predicted_vs_true.png", "figures/error_by_distance.png",
                 "figures/pose_error.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 1
    payload = torch.load(out / "model.pt", weights_only=True)
    summary = payload["summary"]
    imaging = summary["imaging"]
    assert imaging["ctf"] is True and 0.6 < imaging["snr"] < 1.5  # SNR 1 estimated from the particles
    # shifts up to 1 px (uniform in the disc: per-axis sigma 0.5 px), measured from the images
    assert 0.5 <= imaging["max_shift_px"] < 2.5, imaging
    assert payload["config"]["phase_flip"] is True
    assert summary["weak"] is True and summary["stopped_by"] == "max_epochs"
    assert summary["val_median_deg"] > 30  # untrained: near-random orientations (~120°)
    assert summary["val_consensus_median_deg"] > 30  # its turned readings cannot agree on the truth either


def test_fine_tuning_from_a_model(trained, tmp_path):
    """``train --init``: the model's first two encoder stages (the default) are kept as trained."""
    sim, out = trained
    code, _, err = run_cli("train", "--reference", "1ake_adk_closed", "--particles", sim / "particles.star",
                           *TINY, "--init", out / "model.pt", "--outdir", tmp_path / "ft", "--quiet")
    assert code == 0, err
    start, tuned = (torch.load(p, weights_only=True)["state_dict"]
                    for p in (out / "model.pt", tmp_path / "ft" / "model.pt"))
    assert torch.equal(start["encoder.1.0.weight"], tuned["encoder.1.0.weight"])  # stage 2, frozen
    assert not torch.equal(start["encoder.2.0.weight"], tuned["encoder.2.0.weight"])  # stage 3, trained


def test_resume_continues_and_overwrite_rules(trained, tmp_path):
    sim, out = trained
    code, _, err = run_cli("train", "--reference", "1ake_adk_closed", "--particles", sim / "particles.star",
                           *TINY, "--outdir", out, "--quiet")
    assert_one_line_error(code, err, "exists", "--resume")
    code, _, err = run_cli("train", "--reference", "1ake_adk_closed", "--particles", sim / "particles.star",
                           *TINY[:1], "2", *TINY[2:], "--outdir", out, "--resume", "--quiet")  # longer
    assert code == 0, err
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and json.loads(rows[-1])["epoch"] == 2
    code, _, err = run_cli("train", "--reference", "1ake_adk_closed", "--particles", sim / "particles.star",
                           *TINY, "--outdir", tmp_path / "fresh", "--resume", "--quiet")
    assert_one_line_error(code, err, "no checkpoint.pt")


def test_distances_and_recover_with_model(trained, tmp_path):
    sim, out = trained
    code, _, err = run_cli("distances", "--particles", sim / "particles.star", "--model",
                           out / "model.pt", "--outdir", tmp_path / "d", "--quiet")
    assert code == 0, err
    emb = load_npz(tmp_path / "d/embeddings.npz", required=("embeddings", "neighbours"))
    assert emb["embeddings"].shape == (200, 9) and emb["neighbours"].shape == (200, 16)
    pairs = load_npz(tmp_path / "d/pairs.npz", required=("i", "j", "distance"))
    assert pairs["distance"].min() >= 0 and pairs["distance"].max() <= np.pi
    metrics = json.loads((tmp_path / "d/metrics.json").read_text())
    assert "vs_true" in metrics
    code, _, err = run_cli("recover", "--particles", sim / "particles.star", "--distances",
                           f"model:{out / 'model.pt'}", "--restarts", "1", "--refine-rounds", "0",
                           "--outdir", tmp_path / "r", "--quiet")
    assert code == 0, err
    m = json.loads((tmp_path / "r/metrics.json").read_text())
    assert m["n_pairs"] == 200 * 199 // 2  # all pairs below 1000 particles


def test_train_and_distances_bad_inputs(trained, tmp_path):
    sim, out = trained
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    torch.save({"weights": torch.ones(3)}, tmp_path / "foreign.pt")
    base = ["--particles", sim / "particles.star"]
    for args, fragment in [
        (["distances", *base, "--model", tmp_path / "bad.pt"], "corrupt"),
        (["distances", *base, "--model", tmp_path / "foreign.pt"], "not a cryorient checkpoint"),
        (["recover", *base, "--distances", f"model:{tmp_path / 'missing.pt'}"], "not found"),
        (["recover", *base, "--distances", "model"], "needs a model file"),
        (["train", "--reference", "3kpr", *base, *TINY], "too large"),
        (["train", "--reference", "1ake_adk_closed", *base, "--max-epochs", "0"], "must be an integer >= 1"),
        (["train", "--reference", "1ake_adk_closed", *base, "--snr", "1e-30"], "below 0.0001"),
        (["train", "--reference", "1ake_adk_closed", *base, *TINY, "--init", tmp_path / "none.pt"],
         "model file not found"),
        (["train", "--reference", "1ake_adk_closed", *base, "--objective", "pose", "--head", "cosine"],
         "pose objective needs the rotation head"),
        (["train", "--reference", "1ake_adk_closed", *base, "--hypotheses", "0"], "must be an integer >= 1"),
        (["train", "--reference", "1ake_adk_closed", *base, "--objective", "pairs", "--head", "cosine",
          "--hypotheses", "2"], "pose hypotheses need the rotation head"),
        (["train", "--reference", "1ake_adk_closed", *base, "--objective", "pairs", "--hypotheses", "2"],
         "pairs objective trains one pose hypothesis"),
        (["train", "--reference", "1ake_adk_closed", *base, "--symmetry", "C0"], "unknown symmetry"),
        (["train", "--reference", "1ake_adk_closed", *base, *TINY, "--init", out / "model.pt", "--frozen-stages",
          "5"], "has 4 stages"),
        (["recover", *base, "--distances", "true", "--symmetry", "Cs"], "Cn, Dn, T, O or I"),
    ]:
        code, _, err = run_cli(*args, "--outdir", tmp_path / "o", "--quiet")
        assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "o").exists()
    # NaN images: a copy of the stack with one image broken
    with mrcfile.open(sim / "particles.mrcs") as m:
        data = m.data.copy()
    data[5, 3, 3] = np.nan
    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    with mrcfile.new(nan_dir / "particles.mrcs") as m:
        m.set_data(data)
        m.voxel_size = 4.0
    (nan_dir / "particles.star").write_text((sim / "particles.star").read_text())
    code, _, err = run_cli("distances", "--particles", nan_dir / "particles.star", "--model",
                           out / "model.pt", "--outdir", tmp_path / "o", "--quiet")
    assert_one_line_error(code, err, "particle image 6 contains NaN")
