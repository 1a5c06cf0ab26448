import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryorient import so3


def test_euler_matches_scipy_and_relion_rule(generator):
    ang = torch.rand(50, 3, generator=generator, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0]) \
        - torch.tensor([180.0, 0.0, 180.0])
    r = so3.euler_to_rotmat(ang[:, 0], ang[:, 1], ang[:, 2])
    ref = Rotation.from_euler("ZYZ", ang.numpy(), degrees=True).as_matrix()
    np.testing.assert_allclose(r.numpy(), ref, atol=1e-12)


def test_euler_round_trip(generator):
    r = so3.sample_rotations(200, generator, dtype=torch.float64)
    ang = so3.rotmat_to_euler(r)
    r2 = so3.euler_to_rotmat(ang[:, 0], ang[:, 1], ang[:, 2])
    assert torch.allclose(r, r2, atol=1e-10)
    assert (ang[:, 1] >= 0).all() and (ang[:, 1] <= 180).all()


def test_quat_round_trip_and_scipy(generator):
    q = so3.sample_uniform_quats(100, generator, dtype=torch.float64)
    assert torch.allclose(q.norm(dim=-1), torch.ones(100, dtype=torch.float64))
    assert (q[:, 3] >= 0).all()
    r = so3.quat_to_rotmat(q)
    np.testing.assert_allclose(r.numpy(), Rotation.from_quat(q.numpy()).as_matrix(), atol=1e-12)
    assert torch.allclose(so3.rotmat_to_quat(r), q, atol=1e-10)


def test_uniform_sampling_statistics(generator):
    r = so3.sample_rotations(20000, generator, dtype=torch.float64)
    # Haar measure: E[R] = 0 and the rotation angle has density (1 - cos a) / pi.
    assert r.mean(0).abs().max() < 0.02
    angle = so3.rotmat_angle(r)
    assert abs(float(angle.mean()) - (math.pi / 2 + 2 / math.pi)) < 0.02
    tilt = so3.rotmat_to_euler(r)[:, 1]
    cos_t = torch.cos(torch.deg2rad(tilt))
    hist = torch.histc(cos_t, bins=10, min=-1, max=1) / 20000
    assert (hist - 0.1).abs().max() < 0.01


def test_restricted_ranges_and_euler_mode(generator):
    r = so3.sample_rotations(5000, generator, tilt_range_deg=(0.0, 72.0), psi_range_deg=(0.0, 90.0),
                             dtype=torch.float64)
    ang = so3.rotmat_to_euler(r)
    assert ang[:, 1].max() <= 72.0 + 1e-6
    assert ang[:, 2].min() >= -1e-6 and ang[:, 2].max() <= 90.0 + 1e-6
    e = so3.sample_rotations(5000, generator, tilt_range_deg=(0.0, 72.0), mode="euler",
                             dtype=torch.float64)
    tilt = so3.rotmat_to_euler(e)[:, 1]
    # "uniform in Euler angles": tilt itself uniform (mean 36 deg), unlike the Haar restriction
    assert abs(float(tilt.mean()) - 36.0) < 1.0
    assert float(ang[:, 1].mean()) > 40.0


def test_geodesic_distance_matches_rotation_angle(generator):
    q1 = so3.sample_uniform_quats(500, generator, dtype=torch.float64)
    q2 = so3.sample_uniform_quats(500, generator, dtype=torch.float64)
    d = so3.geodesic_distance(q1, q2)
    ref = so3.rotmat_distance(so3.quat_to_rotmat(q1), so3.quat_to_rotmat(q2))
    assert torch.allclose(d, ref, atol=1e-9)
    assert torch.allclose(d, 2 * torch.arccos((q1 * q2).sum(-1).abs().clamp(max=1)), atol=1e-6)
    assert torch.allclose(so3.geodesic_distance(q1, -q2), d)  # double cover
    assert d.min() >= 0 and d.max() <= math.pi


def test_geodesic_distance_finite_gradient_at_zero(generator):
    q = so3.sample_uniform_quats(4, generator)
    p = q.clone().requires_grad_(True)
    d = so3.geodesic_distance(p, q.clone())
    d.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert d.abs().max() < 1e-3


def test_pairwise_distances(generator):
    q = so3.sample_uniform_quats(10, generator)
    i = torch.tensor([0, 1, 2, 3])
    j = torch.tensor([4, 5, 6, 3])
    d = so3.pairwise_distances(q, i, j)
    assert d.shape == (4,)
    assert d[3] < 1e-3
    assert torch.allclose(d[0], so3.geodesic_distance(q[0], q[4]))


def test_the_dense_distance_matrix_is_the_pairwise_distance(generator):
    a = so3.sample_rotations(40, generator, dtype=torch.float64)
    b = torch.cat([a[:5], so3.sample_rotations(30, generator, dtype=torch.float64)])  # 5 zero distances
    dense = so3.rotmat_distance_matrix(a, b)
    assert dense.shape == (40, 35)
    assert torch.allclose(dense, so3.rotmat_distance(a[:, None], b[None]), atol=1e-9)
    assert float(dense[:5, :5].diagonal().max()) < 1e-5  # accurate at 0 (atan2, not arccos)


def test_bad_sampling_arguments(generator):
    from cryorient.errors import CryorientError

    with pytest.raises(CryorientError):
        so3.sample_rotations(5, generator, tilt_range_deg=(10.0, 5.0))
    with pytest.raises(CryorientError):
        so3.sample_rotations(5, generator, mode="spiral")
