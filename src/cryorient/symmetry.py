"""Point-group symmetry with RELION's names and axes.

A group is the set of 3x3 operators ``S`` under which a symmetric volume is invariant,
``V(S x) = V(x)``. An orientation ``R`` (detector -> volume) and ``S R`` then give the same
image, so poses are defined modulo the group acting on the left, and a symmetric
reconstruction inserts each image along every ``S R``.

Generators, exactly as RELION 3.1 defines them (``src/symmetries.cpp``; axes in the map's
x, y, z): Cn: n-fold about z; Ci: the inversion; Cs: the mirror z -> -z; Dn: n-fold about z
and 2-fold about x; T: 3-fold about z and 2-fold about (0, 0.816496, 0.577350); O: 3-fold about
(1, 1, 1)/sqrt(3) and 4-fold about z; I (= I2): 2-fold about z, 5-fold about
(0.525731114, 0, 0.850650807) and 3-fold about (0, 0.356822076, 0.934172364); I1, I3, I4: the
other icosahedral settings. The group is the closure of its generators (pinned against
``relion_image_handler --sym`` in tests/test_relion_oracle.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache

import torch

from .errors import CryorientError
from .so3 import geodesic_distance, rotmat_angle, rotmat_distance, rotmat_distance_matrix

_ICOSA = {
    "I": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807)), (3, (0, 0.356822076, 0.934172364))],
    "I1": [(2, (1, 0, 0)), (5, (0.85065080702670, 0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0))],
    "I3": [(2, (-0.5257311143, 0, 0.8506508070)), (5, (0, 0, 1)),
           (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
    "I4": [(2, (0.5257311143, 0, 0.8506508070)), (5, (0.8944271932547096, 0, 0.4472135909903704)),
           (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428))],
}
_ICOSA["I2"] = _ICOSA["I"]


def _axis_rotation(fold: int, axis) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    t = 2 * math.pi / fold
    k = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _generators(name: str) -> list[torch.Tensor]:
    m = re.fullmatch(r"(C|D)(\d+)", name)
    if m:
        n = int(m.group(2))
        if n < 1:
            raise CryorientError(f"symmetry {name}: the order must be >= 1")
        gens = [_axis_rotation(n, (0, 0, 1))] if n > 1 else []
        if m.group(1) == "D":
            gens.append(_axis_rotation(2, (1, 0, 0)))
        return gens
    if name == "CI":
        return [-torch.eye(3, dtype=torch.float64)]
    if name == "CS":
        return [torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))]
    if name == "T":
        return [_axis_rotation(3, (0, 0, 1)), _axis_rotation(2, (0, 0.816496, 0.577350))]
    if name == "O":
        return [_axis_rotation(3, (0.5773502, 0.5773502, 0.5773502)), _axis_rotation(4, (0, 0, 1))]
    if name in _ICOSA:
        return [_axis_rotation(f, a) for f, a in _ICOSA[name]]
    raise CryorientError(f"unknown symmetry {name!r}; use RELION's names: C1, Cn, Ci, Cs, Dn, T, O, I (I1-I4)")


@cache
def _closure(name: str) -> torch.Tensor:
    ops = [torch.eye(3, dtype=torch.float64)]
    frontier = list(ops)
    gens = _generators(name)
    while frontier:
        new = []
        for a in frontier:
            for g in gens:
                c = g @ a
                # RELION's axes carry 6-9 significant digits: operators equal to 1e-4
                if all(float((c - o).abs().max()) > 1e-4 for o in ops):
                    ops.append(c)
                    new.append(c)
        frontier = new
        if len(ops) > 120:
            raise CryorientError(f"symmetry {name}: the generators do not close into a point group")
    return torch.stack(ops)


@dataclass(frozen=True)
class PointGroup:
    name: str  # RELION's spelling, upper case (C1, C4, D2, T, O, I, ...)
    operators: torch.Tensor  # (G, 3, 3) float64; the identity first

    @property
    def order(self) -> int:
        return int(self.operators.shape[0])

    @property
    def proper(self) -> bool:
        """All operators are rotations (what a chiral molecule, a protein, can have)."""
        return bool((torch.linalg.det(self.operators) > 0).all())

    def ops(self, dtype=torch.float32, device=None) -> torch.Tensor:
        return self.operators.to(dtype=dtype, device=device)

    def quaternions(self, dtype=torch.float32) -> torch.Tensor:
        """The operators as unit quaternions ``(G, 4)`` xyzw (proper groups only): the mate
        ``S R`` of ``q`` is ``s * q``."""
        import roma

        if not self.proper:
            raise CryorientError(f"symmetry {self.name} has improper operators (a mirror or the inversion), "
                                 "which no rotation can express; a protein's group is Cn, Dn, T, O or I")
        return roma.rotmat_to_unitquat(self.operators).to(dtype)


def point_group(name: str) -> PointGroup:
    """The group named as RELION names it (case-insensitive): ``C1``, ``C7``, ``D2``, ``T``, ``O``,
    ``I``, ``Ci``, ``Cs``..."""
    key = name.strip().upper()
    return PointGroup(key, _closure(key))


def symmetric_distance(r1: torch.Tensor, r2: torch.Tensor, group: PointGroup) -> torch.Tensor:
    """The geodesic distance between orientations ``r1`` and ``r2`` ``(..., 3, 3)`` modulo the
    group: ``min_S angle(r1^T S r2)`` (the plain distance for C1)."""
    if group.order == 1:
        return rotmat_distance(r1, r2)
    ops = group.ops(r1.dtype, r1.device)
    m = r1.transpose(-1, -2)[..., None, :, :] @ ops @ r2[..., None, :, :]
    return rotmat_angle(m).min(dim=-1).values


def symmetric_distance_matrix(r1: torch.Tensor, r2: torch.Tensor, group: PointGroup) -> torch.Tensor:
    """``(n, m)`` :func:`symmetric_distance` between every ``r1 (n, 3, 3)`` and every
    ``r2 (m, 3, 3)`` (dense, :func:`~cryorient.so3.rotmat_distance_matrix` per operator)."""
    out = rotmat_distance_matrix(r1, r2)
    for op in group.ops(r1.dtype, r1.device)[1:]:  # the identity first
        out = torch.minimum(out, rotmat_distance_matrix(r1, op @ r2))
    return out


def left_matrices(group_quats: torch.Tensor) -> torch.Tensor:
    """``(G, 4, 4)`` matrices ``L_s`` with ``s * q = L_s q`` for the group's quaternions
    (:meth:`PointGroup.quaternions`)."""
    import roma

    eye = torch.eye(4, dtype=group_quats.dtype)
    return torch.stack([roma.quat_product(group_quats, eye[k].expand_as(group_quats)) for k in range(4)], dim=-1)


def group_left_matrices(group: PointGroup | None) -> torch.Tensor | None:
    """:func:`left_matrices` of a group, or None for no group or C1 (plain distances)."""
    return left_matrices(group.quaternions()) if group is not None and group.order > 1 else None


def mate_towards(qa: torch.Tensor, qb: torch.Tensor, left: torch.Tensor | None, chunk: int = 1_000_000
                 ) -> torch.Tensor:
    """For pairs ``(qa, qb)`` ``(P, 4)``, the mate ``s qb`` nearest ``qa`` (``qb`` itself
    without a group: ``left`` None)."""
    if left is None:
        return qb
    out = []
    for lo in range(0, qb.shape[0], chunk):
        a, b = qa[lo:lo + chunk], qb[lo:lo + chunk]
        mates = torch.einsum("gij,pj->pgi", left.to(b.dtype), b)  # (P, G, 4)
        k = (mates * a[:, None]).sum(-1).abs().argmax(1)
        out.append(mates[torch.arange(b.shape[0]), k])
    return torch.cat(out) if len(out) != 1 else out[0]


def distance_modulo(qa: torch.Tensor, qb: torch.Tensor, left: torch.Tensor | None) -> torch.Tensor:
    """Geodesic distances between pairs of quaternions ``(P, 4)``, modulo the group whose
    :func:`left_matrices` are ``left`` (plain distances when None)."""
    return geodesic_distance(qa, mate_towards(qa, qb, left))


def asymmetric_unit(rotations: torch.Tensor, operators: torch.Tensor, margin_rad: float = 0.0) -> torch.Tensor:
    """Which of ``rotations`` ``(M, 3, 3)`` lie in one asymmetric unit of SO(3) under the group
    of ``operators`` ``(G, 3, 3)`` (:meth:`PointGroup.ops`, the identity first; the mates
    ``S R`` of a pose give the same projection of a symmetric map): those no farther from the
    identity than any of their mates, plus ``margin_rad``. That is a Voronoi cell of the
    identity's orbit, widened: a grid cut at the cell's faces reaches the views near them from
    one side only; a margin of a quarter of the grid step gives back the full grid's reach
    (tests/test_symmetry.py). A uniform grid keeps about 1/order of its points."""
    angles = rotmat_angle(operators.to(rotations) @ rotations[:, None])  # (M, G); the identity first
    return angles[:, 0] <= angles.min(dim=1).values + margin_rad + 1e-6


def nearest_operator(estimated: torch.Tensor, reference: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """For each estimate ``(N, 3, 3)``, the index of the operator ``S`` of ``ops`` ``(G, 3, 3)``
    whose mate ``S R_est`` is closest to the reference ``(N, 3, 3)``."""
    return rotmat_angle(reference.transpose(-1, -2)[:, None] @ ops @ estimated[:, None]).argmin(1)


def nearest_mates(estimated: torch.Tensor, reference: torch.Tensor, group: PointGroup) -> torch.Tensor:
    """For each estimate, the symmetry mate ``S R_est`` closest to the reference ``(N, 3, 3)``."""
    ops = group.ops(estimated.dtype, estimated.device)
    return ops[nearest_operator(estimated, reference, ops)] @ estimated


def symmetrise(volume: torch.Tensor, group: PointGroup) -> torch.Tensor:
    """The average of ``V(S x)`` over the group (trilinear), about the centre ``D // 2``."""
    from .volumes import rotate_volume

    if group.order == 1:
        return volume
    out = torch.zeros_like(volume)
    for s in group.ops(volume.dtype, volume.device):
        # rotate_volume gives V(G^T x) for a rotation G; V(S x) is G = S^T (for the improper
        # operators too: the sampling takes any orthogonal matrix)
        out = out + rotate_volume(volume, s.T)
    return out / group.order
