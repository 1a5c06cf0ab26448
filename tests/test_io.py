import math

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryorient.config import SimulationConfig
from cryorient.errors import CryorientError
from cryorient.io import StackWriter, load_checkpoint, read_mrc, save_checkpoint, write_mrc
from cryorient.particles import ImageStack, read_particles, write_particles
from cryorient.simulate.simulator import simulate_stack


@pytest.fixture
def small_stack(adk_volume_32, tmp_path):
    g = torch.Generator().manual_seed(2)
    stack, truth = simulate_stack(adk_volume_32, 4.0, SimulationConfig(n_particles=12, ctf=True), g)
    path = tmp_path / "stack.mrcs"
    write_mrc(path, stack.images.read(), 4.0)
    from dataclasses import replace

    stack = replace(stack, images=ImageStack.from_array(stack.images.read().numpy(), path))
    star = tmp_path / "particles.star"
    write_particles(stack, star)
    return stack, truth, star


def test_star_round_trip_with_starfile(small_stack):
    stack, truth, star = small_stack
    blocks = starfile.read(star, always_dict=True)
    assert set(blocks) == {"optics", "particles"}
    p = blocks["particles"]
    np.testing.assert_allclose(p["rlnAngleTilt"], stack.particles["rlnAngleTilt"], atol=1e-5)
    np.testing.assert_allclose(p["rlnOriginXAngst"], -truth.shifts_px[:, 0].numpy() * 4.0, atol=1e-5)
    np.testing.assert_allclose(p["rlnDefocusU"], truth.ctf.defocus_u_angstrom.numpy(), rtol=1e-6)
    assert p["rlnImageName"].iloc[0] == "000001@stack.mrcs"
    assert float(blocks["optics"]["rlnImagePixelSize"].iloc[0]) == 4.0
    back = read_particles(star)
    assert back.n == 12 and back.box == 32 and back.pixel_size == 4.0
    assert torch.allclose(back.rotations(), truth.rotations, atol=1e-5)
    assert torch.equal(back.images.read(), stack.images.read())


def test_relion_30_star_is_read(small_stack, tmp_path):
    stack, truth, star = small_stack
    p = starfile.read(star, always_dict=True)["particles"].copy()
    p["rlnOriginX"] = p.pop("rlnOriginXAngst") / 4.0
    p["rlnOriginY"] = p.pop("rlnOriginYAngst") / 4.0
    p = p.drop(columns=["rlnOpticsGroup"])
    p["rlnDetectorPixelSize"] = 4.0
    p["rlnMagnification"] = 10000.0
    p["rlnVoltage"] = 300.0
    old = tmp_path / "old.star"
    starfile.write(p, old)
    back = read_particles(old)
    assert back.pixel_size == pytest.approx(4.0)
    assert torch.allclose(back.shifts_angstrom(), stack.shifts_angstrom(), atol=1e-4)
    assert torch.allclose(back.rotations(), truth.rotations, atol=1e-5)
    assert back.ctf() is not None


def test_mixed_optics_groups_rejected(small_stack, tmp_path):
    _stack, _, star = small_stack
    blocks = starfile.read(star, always_dict=True)
    optics = pd.concat([blocks["optics"], blocks["optics"]], ignore_index=True)
    optics.loc[1, "rlnOpticsGroup"] = 2
    optics.loc[1, "rlnImagePixelSize"] = 2.0
    parts = blocks["particles"].copy()
    parts.loc[6:, "rlnOpticsGroup"] = 2
    mixed = tmp_path / "mixed.star"
    starfile.write({"optics": optics, "particles": parts}, mixed)
    with pytest.raises(CryorientError, match="pixel sizes"):
        read_particles(mixed)


def test_missing_stack_missing_columns_nan_images(small_stack, tmp_path):
    stack, _, star = small_stack
    blocks = starfile.read(star, always_dict=True)
    parts = blocks["particles"].copy()
    parts["rlnImageName"] = parts["rlnImageName"].str.replace("stack.mrcs", "gone.mrcs")
    bad = tmp_path / "bad.star"
    starfile.write({"optics": blocks["optics"], "particles": parts}, bad)
    with pytest.raises(CryorientError, match="gone.mrcs .*not found"):
        read_particles(bad)
    noname = tmp_path / "noname.star"
    starfile.write({"optics": blocks["optics"],
                    "particles": blocks["particles"].drop(columns=["rlnImageName"])}, noname)
    with pytest.raises(CryorientError, match="lacks column.*rlnImageName"):
        read_particles(noname)
    noangles = tmp_path / "noangles.star"
    starfile.write({"optics": blocks["optics"],
                    "particles": blocks["particles"].drop(columns=["rlnAngleRot"])}, noangles)
    with pytest.raises(CryorientError, match="lacks column.*rlnAngleRot"):
        read_particles(noangles).rotations()
    data = stack.images.read().numpy().copy()
    data[3, 5, 5] = np.nan
    write_mrc(tmp_path / "stack.mrcs", data, 4.0)
    with pytest.raises(CryorientError, match="particle image 4 contains NaN"):
        read_particles(star).images.read()


def test_stack_writer_streams_and_is_atomic(tmp_path):
    path = tmp_path / "s.mrcs"
    data = np.random.default_rng(0).normal(size=(10, 16, 16)).astype(np.float32)
    with StackWriter(path, 10, 16, 1.5) as w:
        w.write(data[:6])
        assert not path.exists()
        w.write(data[6:])
    with mrcfile.open(path) as m:
        assert m.is_image_stack() and m.voxel_size.x == pytest.approx(1.5)
        np.testing.assert_array_equal(m.data, data)
        assert m.header.dmax == pytest.approx(data.max())
    with pytest.raises(ValueError):
        with StackWriter(tmp_path / "t.mrcs", 10, 16, 1.5) as w:
            w.write(data[:3])
    assert not (tmp_path / "t.mrcs").exists()
    assert not list(tmp_path.glob(".t.mrcs*"))


def test_mrc_errors_and_checkpoints(tmp_path):
    (tmp_path / "x.mrc").write_bytes(b"junk" * 100)
    with pytest.raises(CryorientError, match="cannot read"):
        read_mrc(tmp_path / "x.mrc")
    with pytest.raises(CryorientError, match="not found"):
        read_mrc(tmp_path / "missing.mrc")
    save_checkpoint(tmp_path / "c.pt", {"kind": "test", "w": torch.ones(3), "n": 3})
    assert load_checkpoint(tmp_path / "c.pt", "test")["n"] == 3
    with pytest.raises(CryorientError, match="expected 'model'"):
        load_checkpoint(tmp_path / "c.pt", "model")
    torch.save({"w": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CryorientError, match="not a cryorient checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(CryorientError, match="corrupt"):
        load_checkpoint(tmp_path / "corrupt.pt")
    assert math.isfinite(1.0)
