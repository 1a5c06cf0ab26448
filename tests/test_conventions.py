"""The conventions of cryorient.conventions, pinned: where a point lands, RELION's Euler and
origin rules, and the two physical ambiguities (global rotation, hand)."""

import numpy as np
import torch

from cryorient import so3
from cryorient.conventions import hand_matrix, quarter_turn, quarter_turn_matrix
from cryorient.fourier import shift_images
from cryorient.imaging.projector import project, project_real_space

from .conftest import blob_volume


def point_volume(box: int, xyz: tuple[float, float, float], sigma: float = 1.2) -> torch.Tensor:
    c = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return torch.exp(-((x - xyz[0]) ** 2 + (y - xyz[1]) ** 2 + (z - xyz[2]) ** 2) / (2 * sigma**2))


def peak(img: torch.Tensor) -> tuple[int, int]:
    """(x, y) = (column, row) of the maximum, relative to the centre."""
    box = img.shape[-1]
    row, col = divmod(int(img.argmax()), box)
    return col - box // 2, row - box // 2


def relion_A(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix, written out independently (volume -> detector)."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def test_our_rotation_is_relion_A_transposed(generator):
    ang = torch.rand(20, 3, generator=generator, dtype=torch.float64) * 180
    for rot, tilt, psi in ang.tolist():
        r = so3.euler_to_rotmat(*(torch.tensor(v, dtype=torch.float64) for v in (rot, tilt, psi)))
        np.testing.assert_allclose(r.numpy(), relion_A(rot, tilt, psi).T, atol=1e-12)


def test_point_mass_lands_where_the_convention_says():
    box = 48
    p = (9.0, -5.0, 3.0)
    vol = point_volume(box, p)
    for rot, tilt, psi in [(0, 0, 0), (90, 0, 0), (30, 60, -40), (-120, 135, 75)]:
        r = so3.euler_to_rotmat(torch.tensor(float(rot)), torch.tensor(float(tilt)),
                                torch.tensor(float(psi)))
        img = project(vol, r[None])[0]
        # image(x, y) = int V(R (x, y, z)) dz  =>  the point appears at (R^T p)_xy
        expect = r.T @ torch.tensor(p)
        x, y = peak(img)
        assert abs(x - float(expect[0])) <= 0.5 and abs(y - float(expect[1])) <= 0.5, (rot, tilt, psi)


def test_origin_rule_particle_drawn_at_centre_minus_origin():
    box, px = 48, 2.0
    vol = point_volume(box, (0.0, 0.0, 0.0))
    img = project(vol, torch.eye(3)[None])[0]
    origin_angstrom = torch.tensor([6.0, -10.0])  # rlnOriginXAngst, rlnOriginYAngst
    drawn = shift_images(img, -origin_angstrom / px)
    assert peak(drawn) == (-3, 5)  # (centre - originX/px, centre - originY/px)


def test_global_rotation_ambiguity(generator):
    """Images of V along {R_i} equal images of V rotated by G along {G R_i}."""
    box = 40
    g_rot = so3.sample_rotations(1, generator, dtype=torch.float64)[0]
    centres = torch.randn(12, 3, generator=generator, dtype=torch.float64) * 4

    def blobs(pts):
        c = torch.arange(box, dtype=torch.float64) - box // 2
        z, y, x = torch.meshgrid(c, c, c, indexing="ij")
        return sum(torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / 8.0)
                   for p in pts).float()

    v = blobs(centres)
    v_rot = blobs(centres @ g_rot.T)  # V_G(u) = V(G^T u): blob p moves to G p
    r = so3.sample_rotations(6, generator)
    a = project(v, r)
    b = project(v_rot, g_rot.float() @ r)
    wrong = project(v_rot, r @ g_rot.float())  # a common right factor is not physical
    assert ((a - b).norm() / a.norm()) < 0.03  # the projector's own interpolation error
    assert ((a - wrong).norm() / a.norm()) > 0.3


def test_hand_ambiguity(generator):
    """Images of V along {R_i} equal images of the mirror V(J u) along {J R_i J}."""
    box = 40
    v = blob_volume(box, seed=3)
    v_mirror = torch.roll(torch.flip(v, dims=[0]), shifts=1, dims=0)  # V(x, y, -z) about D//2
    j = hand_matrix()
    r = so3.sample_rotations(6, generator)
    a = project(v, r)
    b = project(v_mirror, j @ r @ j)
    assert ((a - b).norm() / a.norm()) < 1e-4


def test_fourier_projector_agrees_with_real_space(generator):
    vol = blob_volume(48)
    r = so3.sample_rotations(6, generator)
    a = project(vol, r)
    b = project_real_space(vol, r)
    rel = (a - b).norm(dim=(-2, -1)) / b.norm(dim=(-2, -1))
    assert rel.max() < 0.02


def test_a_quarter_turned_image_is_the_view_turned_about_the_optical_axis(generator):
    """quarter_turn(project(V, R), k) == project(V, R Rz(90° k)), even and odd boxes; the plain
    rot90 (about (D - 1) / 2) is a pixel off on even boxes."""
    for box in (40, 41):
        v = blob_volume(box, seed=3)
        r = so3.sample_rotations(6, generator)
        a = project(v, r)
        for k in range(4):
            b = project(v, r @ quarter_turn_matrix(k))
            assert ((quarter_turn(a, k) - b).norm() / b.norm()) < 1e-5  # measured 2.4e-7
            if k and box % 2 == 0:
                assert ((torch.rot90(a, k, dims=(-2, -1)) - b).norm() / b.norm()) > 0.05
