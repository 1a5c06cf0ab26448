import gzip

import numpy as np
import pytest
import torch

from cryorient.config import DensityConfig
from cryorient.density import load_volume
from cryorient.errors import CryorientError
from cryorient.fourier import radial_frequency_3d
from cryorient.io import write_mrc
from cryorient.structure import bundled_structures, read_atoms, resolve_structure, structure_info


def centre_of_mass(vol: torch.Tensor) -> torch.Tensor:
    m = vol.clamp(min=0)
    idx = torch.stack(torch.meshgrid(*[torch.arange(vol.shape[0], dtype=torch.float32)] * 3,
                                     indexing="ij"))
    return (idx * m).sum((1, 2, 3)) / m.sum()


def test_atoms_to_volume_centred_and_band_limited(adk_volume_64):
    vol = adk_volume_64
    assert vol.shape == (64, 64, 64) and vol.dtype == torch.float32
    com = centre_of_mass(vol)
    assert (com - 32).abs().max() < 1.0  # mass-weighted vs scattering-weighted centre
    spec = torch.fft.rfftn(vol).abs() ** 2
    freq = radial_frequency_3d(64)
    cutoff = 2.0 / 5.0  # default resolution 2.5 px -> 0.4 cycles/px
    assert float(spec[freq > cutoff * 1.001].sum()) < 1e-10 * float(spec.sum())
    assert float(spec[(freq > 0.05) & (freq < 0.3)].sum()) > 0


def test_bundled_library_and_formats():
    names = bundled_structures()
    assert len(names) == 57 and "1ake_adk_closed" in names and "3kpr_single" in names
    info = structure_info("5pti", names["5pti"])  # mmCIF.gz
    assert info.n_residues == 58
    adk = structure_info("1ake_adk_closed", names["1ake_adk_closed"])
    assert adk.n_residues == 214 and 45 < adk.diameter_angstrom < 60


def test_plain_pdb_and_waters_hydrogens_dropped(tmp_path):
    src = resolve_structure("1ake_adk_closed")
    plain = tmp_path / "adk.pdb"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    st = read_atoms(plain)
    elements = {a.element.name for ch in st[0] for r in ch for a in r}
    names = {r.name for ch in st[0] for r in ch}
    assert "H" not in elements and "HOH" not in names
    assert load_volume(plain, DensityConfig(box=32, pixel_size=4.0)).shape == (32, 32, 32)


def test_too_large_structure_says_which_box_fits():
    with pytest.raises(CryorientError, match=r"use --box-size (\d+)") as info:
        load_volume("3kpr", DensityConfig(box=64, pixel_size=2.0))
    suggested = int(info.value.args[0].split("--box-size ")[1].split()[0])
    vol = load_volume("3kpr", DensityConfig(box=suggested, pixel_size=2.0, resolution=8.0))
    assert vol.shape[0] == suggested


def test_map_resampling_round_trip(tmp_path, adk_volume_64):
    path = tmp_path / "adk.mrc"
    write_mrc(path, adk_volume_64, 2.0)
    once = load_volume(path, DensityConfig(box=64, pixel_size=2.0))
    # re-centring on the map's own centre of mass moves it by < 1 px, then it is a fixed point
    assert np.corrcoef(once.flatten(), adk_volume_64.flatten())[0, 1] > 0.85
    again_path = tmp_path / "again.mrc"
    write_mrc(again_path, once, 2.0)
    twice = load_volume(again_path, DensityConfig(box=64, pixel_size=2.0))
    assert np.corrcoef(once.flatten(), twice.flatten())[0, 1] > 0.999
    coarse = load_volume(path, DensityConfig(box=32, pixel_size=4.0))
    assert coarse.shape == (32, 32, 32)
    assert (centre_of_mass(coarse) - 16).abs().max() < 0.5
    # density is kept per voxel: the total mass scales with the voxel volume ratio 1 : 1
    assert abs(float(coarse.sum()) / float(adk_volume_64.sum()) - 1) < 0.05


@pytest.mark.parametrize("content", [b"not a structure at all\n", b"\x00\x01\x02garbage"])
def test_corrupt_structure_is_a_clear_error(tmp_path, content):
    bad = tmp_path / "bad.pdb"
    bad.write_bytes(content)
    with pytest.raises(CryorientError, match="bad.pdb"):
        load_volume(bad, DensityConfig())


def test_corrupt_map_and_unknown_name(tmp_path):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"MRC?" * 10)
    with pytest.raises(CryorientError, match="cannot read map bad.mrc"):
        load_volume(bad, DensityConfig())
    with pytest.raises(CryorientError, match="unknown structure 'adk'.*1ake_adk_closed"):
        load_volume("adk", DensityConfig())
    with pytest.raises(CryorientError, match="not found"):
        load_volume(tmp_path / "missing.pdb", DensityConfig())


def test_bad_density_options():
    with pytest.raises(CryorientError, match="even"):
        load_volume("5pti", DensityConfig(box=33))
    with pytest.raises(CryorientError, match="Nyquist"):
        load_volume("5pti", DensityConfig(box=32, pixel_size=2.0, resolution=3.0))
