import json

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from scipy import ndimage

from cryorient.imaging.projector import project_real_space

from .cli_helpers import SMALL, assert_one_line_error, run_cli
from .test_conventions import relion_A


def test_simulate_cli_outputs(tmp_path):
    out = tmp_path / "sim"
    code, stdout, err = run_cli("simulate", "--structure", "1ake_adk_closed", "--n-particles", 300,
                                "--box-size", 32, "--pixel-size", 4.0, "--snr", "1/4",
                                "--max-shift-px", 2, "--ctf", "--seed", 3, "--outdir", out, "--quiet")
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and "simulated 300 particles" in lines[0]
    for name in ("particles.mrcs", "particles.star", "volume.mrc", "config.yaml", "run.json",
                 "cryorient.log", "metrics.json", "figures/montage.png",
                 "figures/viewing_directions.png"):
        assert (out / name).is_file(), name
    with mrcfile.open(out / "particles.mrcs") as m:
        assert m.data.shape == (300, 32, 32) and m.data.dtype == np.float32
        assert m.voxel_size.x == pytest.approx(4.0)
    blocks = starfile.read(out / "particles.star", always_dict=True)
    assert len(blocks["particles"]) == 300
    for col in ("rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"):
        assert col in blocks["particles"].columns
    for col in ("rlnImagePixelSize", "rlnImageSize", "rlnVoltage", "rlnSphericalAberration",
                "rlnAmplitudeContrast"):
        assert col in blocks["optics"].columns
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["measured_snr"] / 0.25 - 1) < 0.05
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 3 and run["command"] == "simulate"
    assert (out / "figures/montage.png").read_bytes()[:4] == b"\x89PNG"


def test_simulated_image_equals_independent_projection_from_star(tmp_path):
    """Read volume.mrc and the STAR with mrcfile/starfile, project with RELION's own Euler
    formula and origin rule in real space, compare with particles.mrcs."""
    out = tmp_path / "sim"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", 6,
                           "--snr", "inf", "--max-shift-px", 3, "--outdir", out, "--quiet")
    assert code == 0, err
    with mrcfile.open(out / "volume.mrc") as m:
        vol = torch.from_numpy(m.data.astype(np.float64))
        px = float(m.voxel_size.x)
    with mrcfile.open(out / "particles.mrcs") as m:
        images = m.data.copy()
    p = starfile.read(out / "particles.star", always_dict=True)["particles"]
    for k, row in p.iterrows():
        a = relion_A(row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi)
        ref = project_real_space(vol, torch.from_numpy(a.T)[None])[0].numpy()
        # the particle is drawn at centre - origin / pixel size
        ref = ndimage.shift(ref, (-row.rlnOriginYAngst / px, -row.rlnOriginXAngst / px), order=3,
                            mode="wrap")
        corr = np.corrcoef(ref.ravel(), images[k].ravel())[0, 1]
        assert corr > 0.99, (k, corr)


def test_help_has_examples():
    code, out, _ = run_cli("simulate", "--help")
    assert code == 0 and "examples:" in out and "--snr" in out


@pytest.mark.parametrize("args,fragment", [
    (["--n-particles", "0"], "integer >= 1"),
    (["--snr", "0"], "SNR must be > 0"),
    (["--snr", "-1"], "SNR must be > 0"),
    (["--structure", "no_such_protein"], "unknown structure"),
    (["--structure", "missing.pdb"], "not found"),
    (["--structure", "3kpr"], "use --box-size"),
    (["--box-size", "31"], "even"),
    (["--n-particles", "ten"], "invalid int value"),
    (["--bogus-option"], "unrecognized arguments"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, fragment):
    out = tmp_path / "sim"
    code, _, err = run_cli("simulate", "--outdir", out, "--quiet", "--box-size", "64", "--pixel-size", "2",
                           *args)
    assert_one_line_error(code, err, fragment)
    assert not out.exists()
    assert not list(tmp_path.iterdir())


def test_corrupt_files_and_existing_outdir(tmp_path):
    bad = tmp_path / "bad.pdb"
    bad.write_text("HEADER garbage\nnothing here\n")
    code, _, err = run_cli("simulate", "--structure", bad, "--outdir", tmp_path / "a", "--quiet")
    assert_one_line_error(code, err, "bad.pdb")
    badmap = tmp_path / "bad.mrc"
    badmap.write_bytes(b"\x00" * 100)
    code, _, err = run_cli("simulate", "--structure", badmap, "--outdir", tmp_path / "b", "--quiet")
    assert_one_line_error(code, err, "bad.mrc")
    out = tmp_path / "c"
    args = ["simulate", *SMALL, "--n-particles", 10, "--outdir", out,
            "--quiet"]
    assert run_cli(*args)[0] == 0
    before = (out / "particles.star").read_bytes()
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, "exists", "--overwrite")
    assert (out / "particles.star").read_bytes() == before
    assert run_cli(*args, "--overwrite", "--seed", 5)[0] == 0
    assert (out / "particles.star").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mrc", "bad.pdb", "c"]


def test_structures_and_inspect(tmp_path):
    code, out, _ = run_cli("structures")
    assert code == 0 and "3kpr_single" in out and "(default)" in out and len(out.splitlines()) == 58
    sim = tmp_path / "sim"
    assert run_cli("simulate", *SMALL, "--n-particles", 20,
                   "--outdir", sim, "--quiet")[0] == 0
    code, out, err = run_cli("inspect", "--particles", sim / "particles.star", "--outdir",
                             tmp_path / "insp", "--quiet")
    assert code == 0, err
    assert "particles: 20" in out and "has_orientations: True" in out
    assert json.loads((tmp_path / "insp/summary.json").read_text())["box"] == 32
    code, _, err = run_cli("inspect", "--particles", tmp_path / "none.star")
    assert_one_line_error(code, err, "not found")
