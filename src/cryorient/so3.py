"""Rotations: quaternions (xyzw) <-> rotation matrices <-> RELION Euler angles, sampling on
SO(3), and the geodesic distance. See :mod:`cryorient.conventions` for the frame.

Euler angles are for I/O only (RELION's rot, tilt, psi in degrees); everything inside the
package uses rotation matrices or unit quaternions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import roma
import torch

from .errors import CryorientError

_EULER = "ZYZ"  # intrinsic: R = Rz(rot) Ry(tilt) Rz(psi) = RELION's A(rot, tilt, psi)^T


def normalize_quat(q: torch.Tensor) -> torch.Tensor:
    """Scale quaternions ``(..., 4)`` to unit norm."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny)


def canonical_quat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions with ``w >= 0`` (q and -q are the same rotation)."""
    q = normalize_quat(q)
    return torch.where(q[..., 3:4] < 0, -q, q)


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` xyzw -> rotation matrices ``(..., 3, 3)``."""
    return roma.unitquat_to_rotmat(normalize_quat(q))


def rotmat_to_quat(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> canonical unit quaternions ``(..., 4)`` xyzw."""
    return canonical_quat(roma.rotmat_to_unitquat(rotmat))


def euler_to_rotmat(rot_deg, tilt_deg, psi_deg) -> torch.Tensor:
    """RELION Euler angles (degrees) -> our rotation matrices ``R = A(rot, tilt, psi)^T``.

    Accepts tensors of a common shape ``(...)`` and returns ``(..., 3, 3)``; the dtype is
    that of ``rot_deg``.
    """
    rot = torch.as_tensor(rot_deg)
    angles = torch.stack(
        [rot, torch.as_tensor(tilt_deg, dtype=rot.dtype), torch.as_tensor(psi_deg, dtype=rot.dtype)],
        dim=-1,
    )
    if not torch.is_floating_point(angles):
        angles = angles.to(torch.get_default_dtype())
    return roma.euler_to_rotmat(_EULER, angles, degrees=True)


def rotmat_to_euler(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> RELION ``(rot, tilt, psi)`` in degrees ``(..., 3)``.

    ``tilt`` is in ``[0, 180]``; ``rot`` and ``psi`` in ``(-180, 180]``.
    """
    # roma's Euler extraction is accurate to ~1e-6 rad in float32; do it in float64.
    angles = roma.rotmat_to_euler(_EULER, rotmat.to(torch.float64), degrees=True)
    return angles.to(rotmat.dtype)


def sample_uniform_quats(n: int, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """``n`` unit quaternions drawn from the Haar (uniform) measure on SO(3)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    return canonical_quat(q).to(dtype)


def sample_rotations(
    n: int,
    generator: torch.Generator,
    rot_range_deg: tuple[float, float] = (-180.0, 180.0),
    tilt_range_deg: tuple[float, float] = (0.0, 180.0),
    psi_range_deg: tuple[float, float] = (-180.0, 180.0),
    mode: str = "so3",
    dtype=torch.float32,
) -> torch.Tensor:
    """Sample ``n`` rotation matrices with RELION angles inside the given ranges.

    ``mode="so3"`` draws from the Haar measure restricted to the box (rot and psi uniform,
    cos(tilt) uniform), which is exactly uniform on SO(3) for the full ranges.
    ``mode="euler"`` draws each angle uniformly (the seed's "uniform_angles"; not uniform
    on SO(3): it over-samples the poles).
    """
    if mode not in ("so3", "euler"):
        raise CryorientError(f"unknown orientation sampling mode {mode!r}; use 'so3' or 'euler'")
    lo_t, hi_t = tilt_range_deg
    if not (0.0 <= lo_t < hi_t <= 180.0):
        raise CryorientError(f"tilt range must satisfy 0 <= min < max <= 180, got {tilt_range_deg}")
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    rot = rot_range_deg[0] + (rot_range_deg[1] - rot_range_deg[0]) * u[:, 0]
    psi = psi_range_deg[0] + (psi_range_deg[1] - psi_range_deg[0]) * u[:, 2]
    if mode == "so3":
        c_hi, c_lo = math.cos(math.radians(lo_t)), math.cos(math.radians(hi_t))
        tilt = torch.rad2deg(torch.arccos((c_lo + (c_hi - c_lo) * u[:, 1]).clamp(-1.0, 1.0)))
    else:
        tilt = lo_t + (hi_t - lo_t) * u[:, 1]
    return euler_to_rotmat(rot, tilt, psi).to(dtype)


def fibonacci_directions(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` near-uniform viewing directions (a Fibonacci sphere) as RELION angles
    ``(rot, tilt)`` in degrees, float64: ``euler_to_rotmat(rot, tilt, 0)`` has them as
    :func:`viewing_direction`."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    tilt = torch.rad2deg(torch.arccos(1 - 2 * k / n))
    rot = torch.remainder(k * 180.0 * (3 - math.sqrt(5)), 360.0) - 180.0  # golden angle (deg)
    return rot, tilt


def grid(step_deg: float, dtype=torch.float32) -> torch.Tensor:
    """A deterministic, near-uniform grid of rotations ``(M, 3, 3)`` about ``step_deg`` apart:
    viewing directions on a Fibonacci sphere (one per ``step^2`` steradians) times in-plane
    angles every ``step`` (RELION angles rot, tilt from the direction, psi in-plane).
    ``M ~ 8 pi^2 / step^3``: 15 deg -> ~4.4k, 7.5 deg -> ~35k."""
    step = math.radians(step_deg)
    n_dir = max(2, round(4 * math.pi / step**2))
    n_psi = max(1, round(2 * math.pi / step))
    rot, tilt = fibonacci_directions(n_dir)
    psi = torch.arange(n_psi, dtype=torch.float64) * (360.0 / n_psi) - 180.0
    r, t, p = (rot[:, None].expand(n_dir, n_psi), tilt[:, None].expand(n_dir, n_psi),
               psi[None, :].expand(n_dir, n_psi))
    return euler_to_rotmat(r.reshape(-1), t.reshape(-1), p.reshape(-1)).to(dtype)


def pattern_search(score: Callable[[torch.Tensor], torch.Tensor], rot: torch.Tensor, start_deg: float,
                   stop_deg: float, left: bool = False) -> tuple[torch.Tensor, float]:
    """Local maximisation of ``score`` (rotations ``(B, 3, 3)`` -> scores ``(B,)``) about ``rot``:
    the six turns by ``step`` about the axes (``rot @ exp(w)``, or ``exp(w) @ rot`` with
    ``left``) scored at once, the best taken if it beats the current rotation, else the step
    halved, from ``start_deg`` until it is at most ``stop_deg``. Returns the rotation and its
    score."""
    best = float(score(rot[None])[0])
    step = math.radians(start_deg)
    axes = torch.cat([torch.eye(3), -torch.eye(3)]).to(rot)
    while step > math.radians(stop_deg):
        turns = roma.rotvec_to_rotmat(axes * step)
        trials = turns @ rot if left else rot @ turns
        scores = score(trials)
        k = int(scores.argmax())
        if float(scores[k]) > best:
            best, rot = float(scores[k]), trials[k]
        else:
            step /= 2
    return rot, best


def geodesic_distance(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """``d(q1, q2) = 2 arccos |<q1, q2>|`` in ``[0, pi]`` with finite gradients at 0.

    Computed as ``4 asin(min(|q1 - q2|, |q1 + q2|) / 2)`` on normalised quaternions.
    """
    q1 = normalize_quat(q1)
    q2 = normalize_quat(q2)
    chord = torch.minimum((q1 - q2).norm(dim=-1), (q1 + q2).norm(dim=-1))
    return 4.0 * torch.asin((0.5 * chord).clamp(max=1.0))


def pairwise_distances(q: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Geodesic distances between quaternions ``q[i]`` and ``q[j]`` for index pairs."""
    return geodesic_distance(q[i], q[j])


def rotmat_angle(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation angle in ``[0, pi]`` of rotation matrices ``(..., 3, 3)``.

    ``atan2(|skew| / 2, (trace - 1) / 2)``: accurate near 0 and pi where arccos is not, with
    finite gradients at 0 (a 1e-12 under the square root)."""
    cos = 0.5 * (rotmat.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    skew = torch.stack(
        [
            rotmat[..., 2, 1] - rotmat[..., 1, 2],
            rotmat[..., 0, 2] - rotmat[..., 2, 0],
            rotmat[..., 1, 0] - rotmat[..., 0, 1],
        ],
        dim=-1,
    )
    return torch.atan2(0.5 * torch.sqrt((skew * skew).sum(-1) + 1e-12), cos)


def rotmat_distance(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Geodesic distance between rotation matrices: the angle of ``r1^T r2``."""
    return rotmat_angle(r1.transpose(-1, -2) @ r2)


def rotmat_distance_matrix(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` geodesic distances between every ``r1 (n, 3, 3)`` and every ``r2 (m, 3, 3)``:
    :func:`rotmat_distance` of all pairs, as four ``(n, k) @ (k, m)`` products (the entries of
    ``M = r1^T r2`` that :func:`rotmat_angle` needs are bilinear forms of the columns) instead
    of ``n m`` gathered 3x3 products: 2048 x 2048 in milliseconds instead of a third of a second."""
    def col(r: torch.Tensor, c: int) -> torch.Tensor:
        return r[:, :, c]

    trace = r1.reshape(-1, 9) @ r2.reshape(-1, 9).T  # sum_ab r1_ab r2_ab = tr(r1^T r2)
    skew = [torch.cat([col(r1, a), -col(r1, b)], 1) @ torch.cat([col(r2, b), col(r2, a)], 1).T
            for a, b in ((2, 1), (0, 2), (1, 0))]  # M_ab - M_ba, M_ab = <r1[:, a], r2[:, b]>
    sin2 = sum(x * x for x in skew)
    return torch.atan2(0.5 * torch.sqrt(sin2 + 1e-12), 0.5 * (trace - 1.0))


def viewing_direction(rotmat: torch.Tensor) -> torch.Tensor:
    """Unit viewing direction (the projection axis ``R e_z``) in the volume frame."""
    return rotmat[..., :, 2]


def project_to_so3(m: torch.Tensor) -> torch.Tensor:
    """Nearest rotation matrix (special Procrustes) to each ``(..., 3, 3)`` matrix."""
    return roma.special_procrustes(m)
