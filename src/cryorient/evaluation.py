"""Evaluation against the truth: the only reader of the particles' true poses.

Estimation stages see particle stacks without pose columns (:meth:`ParticleStack.blind`);
the true poses (:class:`Truth`) come here, after the estimate is final.

Physical alignment: the images cannot tell ``{R_i}`` from ``{G R_i}`` (a global rotation of
the object) nor from ``{J R_i J}`` (the mirrored object), so recovered orientations are
compared with the truth after the best ``G``, with and without the hand flip, found in closed
form (Procrustes on ``sum R_ref R_est^T``, then a few robust reweighting steps).

The O(4) alignment (``R -> A R B`` or ``A R^T B``, everything the distance objective cannot
see) is a diagnostic only: it is what the seed reported, and it hides a wrong common right
factor or a wrong transpose branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from roma import rotvec_to_rotmat

from .conventions import hand_matrix
from .so3 import project_to_so3, rotmat_angle, rotmat_distance
from .symmetry import PointGroup, nearest_mates, nearest_operator


@dataclass(frozen=True)
class Alignment:
    """``R_aligned = G @ (J R_est J if hand_flipped else R_est)``."""

    rotation: torch.Tensor  # G (3, 3)
    hand_flipped: bool

    def apply(self, rotmats: torch.Tensor) -> torch.Tensor:
        r = rotmats.double()
        if self.hand_flipped:
            j = hand_matrix(torch.float64)
            r = j @ r @ j
        return (self.rotation.double() @ r).to(rotmats.dtype)


def _procrustes_left(ref: torch.Tensor, est: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """argmin_G sum w_k ||ref_k - G est_k||^2 over rotations G."""
    m = (weights[:, None, None] * (ref @ est.transpose(-1, -2))).sum(0)
    return project_to_so3(m)


def _robust_left(ref: torch.Tensor, est: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """Procrustes, then reweighting by 1/error (an L1 / geodesic-median approximation) so
    that a few badly recovered particles do not pull the alignment."""
    w = torch.ones(ref.shape[0], dtype=ref.dtype)
    g = _procrustes_left(ref, est, w)
    for _ in range(iterations):
        err = rotmat_distance(ref, g @ est)
        w = 1.0 / err.clamp_min(np.deg2rad(0.5))
        g = _procrustes_left(ref, est, w)
    return g


def _mates_of_reference(aligned: torch.Tensor, ref: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """``S_i^T ref_i`` for each particle's nearest operator ``S_i`` (``S_i aligned_i`` nearest
    ``ref_i``)."""
    return ops[nearest_operator(aligned, ref, ops)].transpose(-1, -2) @ ref


def _robust_left_modulo(ref: torch.Tensor, est: torch.Tensor, ops: torch.Tensor, starts: int = 8,
                        iterations: int = 4) -> torch.Tensor:
    """The global rotation ``G`` best mapping ``est`` onto ``ref`` when each pose counts
    modulo the group of ``ops`` (``S G est_i`` against ``ref_i``): candidates ``S ref_k
    est_k^T`` from a few particles and every ``S``, the best by the median error, then
    alternately each particle's mate and a robust Procrustes."""
    picks = torch.linspace(0, ref.shape[0] - 1, min(starts, ref.shape[0])).long()
    cands = (ops[None] @ (ref[picks] @ est[picks].transpose(-1, -2))[:, None]).reshape(-1, 3, 3)

    def median(g: torch.Tensor) -> float:
        return float(rotmat_angle(ref.transpose(-1, -2)[:, None] @ ops @ (g @ est)[:, None]).amin(1).median())

    g = min(cands, key=median)
    for _ in range(iterations):
        g = _robust_left(_mates_of_reference(g @ est, ref, ops), est)
    return g


def align_physical(estimated: torch.Tensor, reference: torch.Tensor, allow_hand: bool = True,
                   operators: torch.Tensor | None = None) -> Alignment:
    """The global rotation (and hand) that best maps ``estimated`` onto ``reference``; with a
    point group's ``operators`` ``(G, 3, 3)``, each pose modulo the group."""
    est, ref = estimated.double(), reference.double()
    ops = operators.double() if operators is not None and operators.shape[0] > 1 else None
    best = None
    for flip in (False, True) if allow_hand else (False,):
        e = est
        if flip:
            j = hand_matrix(torch.float64)
            e = j @ est @ j
        if ops is None:
            g = _robust_left(ref, e)
            med = float(rotmat_distance(ref, g @ e).median())
        else:
            g = _robust_left_modulo(ref, e, ops)
            med = float(rotmat_distance(_mates_of_reference(g @ e, ref, ops), g @ e).median())
        if best is None or med < best[0]:
            best = (med, Alignment(g, flip))
    return best[1]


def _nearest_kronecker(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` rotations with ``B^T kron A`` closest to the 9x9 ``k`` (Van Loan's
    rearrangement and a rank-1 SVD), for column-major ``vec(A R B) = (B^T kron A) vec(R)``."""
    blocks = k.reshape(3, 3, 3, 3).permute(0, 2, 1, 3).reshape(9, 9)  # rows: vec of each 3x3 block
    u, sv, vh = torch.linalg.svd(blocks)
    bt = u[:, 0].reshape(3, 3) * sv[0].sqrt()
    a = vh[0].reshape(3, 3) * sv[0].sqrt()
    if torch.det(a) < 0:  # the sign is shared between the factors
        a, bt = -a, -bt
    return project_to_so3(a), project_to_so3(bt.T)


def align_o4(estimated: torch.Tensor, reference: torch.Tensor, iterations: int = 30
             ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Diagnostic O(4) alignment: ``A R B`` or ``A R^T B`` closest to the reference.

    Closed-form start (``vec(A R B) = (B^T kron A) vec(R)``: a 9x9 least-squares map from the
    reference's to the estimate's vectorised rotations, factored into the nearest Kronecker
    product), then alternating Procrustes. Returns ``(A, B, transposed)`` such that
    ``A @ est @ B`` (``est`` transposed if so) approximates the reference."""
    est, ref = estimated.double(), reference.double()
    ones = torch.ones(est.shape[0], dtype=torch.float64)
    best = None
    for transposed in (False, True):
        e = est.transpose(-1, -2) if transposed else est
        # vec(e) ~ K vec(ref) with K = B'^T kron A' and e ~ A' ref B'; invert afterwards
        ve = e.transpose(-1, -2).reshape(-1, 9)
        vr = ref.transpose(-1, -2).reshape(-1, 9)
        k = torch.linalg.lstsq(vr, ve).solution.T
        a0, b0 = _nearest_kronecker(k)
        a, b = a0.T, b0.T  # ref ~ a0^T e b0^T
        for _ in range(iterations):
            a = _procrustes_left(ref, e @ b, ones)
            b = project_to_so3(((a @ e).transpose(-1, -2) @ ref).sum(0))
        med = float(rotmat_distance(ref, a @ e @ b).median())
        if best is None or med < best[0]:
            best = (med, a, b, transposed)
    return best[1], best[2], best[3]


def angular_errors(aligned: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-particle errors (radians): full rotation, viewing direction and in-plane angle.

    With ``D = R_ref^T R_aligned``: the viewing-direction error is the angle between ``D e_z``
    and ``e_z``; the in-plane error is the rotation left about the viewing axis once the
    directions are matched by the shortest rotation.
    """
    a, r = aligned.double(), reference.double()
    d = r.transpose(-1, -2) @ a
    full = rotmat_angle(d)
    v = d[..., :, 2]
    direction = torch.arccos(v[..., 2].clamp(-1, 1))
    # shortest rotation taking e_z to v, then the remainder is a rotation about z
    axis = torch.stack([-v[..., 1], v[..., 0], torch.zeros_like(v[..., 0])], dim=-1)
    s = axis.norm(dim=-1, keepdim=True)
    axis = torch.where(s > 1e-12, axis / s.clamp_min(1e-12),
                       torch.tensor([1.0, 0.0, 0.0], dtype=a.dtype))
    shortest = rotvec_to_rotmat(axis * direction[..., None])
    rest = shortest.transpose(-1, -2) @ d
    in_plane = torch.atan2(rest[..., 1, 0], rest[..., 0, 0]).abs()
    return {"rotation": full, "direction": direction, "in_plane": in_plane}


def summarize_deg(errors: torch.Tensor) -> dict[str, float]:
    e = np.rad2deg(errors.double().numpy())
    return {"mean_deg": float(e.mean()), "median_deg": float(np.median(e)),
            "p90_deg": float(np.percentile(e, 90)), "max_deg": float(e.max())}


@dataclass(frozen=True)
class Evaluation:
    """Recovered orientations judged against a reference (the truth)."""

    alignment: Alignment
    aligned: torch.Tensor  # (N, 3, 3) estimated orientations in the reference frame
    errors: dict[str, torch.Tensor]  # radians per particle: rotation, direction, in_plane
    o4_errors: torch.Tensor  # radians per particle after the O(4) diagnostic alignment
    o4_transposed: bool

    def metrics(self) -> dict:
        return {
            "n": int(self.aligned.shape[0]),
            "hand": "flipped" if self.alignment.hand_flipped else "as reference",
            "alignment_rotation": self.alignment.rotation.tolist(),
            "rotation_error": summarize_deg(self.errors["rotation"]),
            "viewing_direction_error": summarize_deg(self.errors["direction"]),
            "in_plane_error": summarize_deg(self.errors["in_plane"]),
            "o4_diagnostic": {**summarize_deg(self.o4_errors), "transposed": self.o4_transposed},
        }


def evaluate(estimated: torch.Tensor, reference: torch.Tensor, operators: torch.Tensor | None = None
             ) -> Evaluation:
    """Physical alignment + per-particle errors + the O(4) diagnostic. With a point group's
    ``operators`` ``(G, 3, 3)`` (the identity first) poses count modulo the group: the
    alignment searches the group's mates and each aligned pose is its mate nearest the truth
    (the O(4) diagnostic then sees those mates)."""
    al = align_physical(estimated, reference, operators=operators)
    aligned = al.apply(estimated)
    if operators is not None and operators.shape[0] > 1:
        ops = operators.to(aligned.dtype)
        aligned = ops[nearest_operator(aligned, reference.to(aligned.dtype), ops)] @ aligned
        estimated = aligned
    a, b, transposed = align_o4(estimated, reference)
    e = estimated.double().transpose(-1, -2) if transposed else estimated.double()
    o4 = rotmat_distance(reference.double(), a @ e @ b)
    return Evaluation(al, aligned, angular_errors(aligned, reference), o4, transposed)


def modulo_pseudo_symmetry(estimated: torch.Tensor, reference: torch.Tensor, group: PointGroup
                           ) -> tuple[float, float]:
    """A result judged in C1 also judged modulo a pseudo-symmetry ``group`` (a homodimer's
    near-twofold, say): the median rotation error (degrees, physical alignment) of each
    estimate's mate nearest the reference, and the share of estimates for which that mate is
    not the estimate itself (the particles that sit at a pseudo-mate)."""
    mates = nearest_mates(estimated, reference, group)
    at_mate = rotmat_distance(mates, estimated) > 1e-3
    median = float(np.rad2deg(evaluate(mates, reference).errors["rotation"].median().item()))
    return median, float(at_mate.float().mean())


@dataclass(frozen=True)
class Truth:
    """The true poses of a stack (its STAR's angles and origins), for evaluation."""

    rotations: torch.Tensor  # (N, 3, 3)
    origins_angstrom: torch.Tensor | None  # (N, 2), None when the STAR has no origins


def truth_of(stack) -> Truth | None:
    """The poses recorded in ``stack``'s STAR (None when it has no angles)."""
    from .particles import ORIGIN_COLUMNS

    if not stack.has_orientations():
        return None
    has_origins = all(c in stack.particles.columns for c in ORIGIN_COLUMNS)
    return Truth(stack.rotations(), stack.shifts_angstrom() if has_origins else None)


@dataclass(frozen=True)
class PoseEvaluation:
    """Estimated poses judged against the truth (see :func:`evaluate_poses`)."""

    evaluation: Evaluation
    shift_error_px: torch.Tensor | None  # (N,) |estimated - true origin| in pixels
    # the estimated origins (Å) less the map's global translation against the truth (fitted):
    # a map placed a pixel off the truth's centre is the same map; reconstructions judged
    # against the true map use these
    centred_origins_angstrom: torch.Tensor | None = None
    map_offset_angstrom: float | None = None  # the length of that translation

    def metrics(self) -> dict:
        out = self.evaluation.metrics()
        if self.shift_error_px is not None:
            out["shift_error_px"] = {"median": float(self.shift_error_px.median()),
                                     "mean": float(self.shift_error_px.mean())}
        return out

    @property
    def median_deg(self) -> float:
        return float(np.rad2deg(self.evaluation.errors["rotation"].median().item()))

    def in_truth_frame(self, stack, origins_angstrom: torch.Tensor | None):
        """``stack`` with the aligned rotations and the centred origins (``origins_angstrom``
        when there is no true origin to centre them on): what is reconstructed and compared
        with the true map."""
        origins = self.centred_origins_angstrom if self.centred_origins_angstrom is not None else origins_angstrom
        return stack.with_orientations(self.evaluation.aligned.float(), origins)


def evaluate_poses(rotations: torch.Tensor, origins_angstrom: torch.Tensor | None, truth: Truth,
                   pixel_size: float, operators: torch.Tensor | None = None) -> PoseEvaluation:
    """Rotations after the physical alignment (and the O(4) diagnostic), modulo the point
    group of ``operators`` if given; origins as given, and centred (the map's global
    translation fitted and removed)."""
    ev = evaluate(rotations, truth.rotations, operators)
    if origins_angstrom is None or truth.origins_angstrom is None:
        return PoseEvaluation(ev, None)
    shift_err = (origins_angstrom - truth.origins_angstrom).norm(dim=1) / pixel_size
    centred, offset = _centre_origins(origins_angstrom, truth)
    return PoseEvaluation(ev, shift_err, centred, offset)


def _centre_origins(origins: torch.Tensor, truth: Truth) -> tuple[torch.Tensor, float]:
    """A map translated by ``t`` (3D) shifts particle i's image by the in-plane part of its
    rotated ``t``: least squares for ``t`` from the origins' differences to the truth's (both
    conventions of applying ``R`` tried, the better fit kept), then removed."""
    d = (origins - truth.origins_angstrom).double().reshape(-1, 1)
    best = None
    for a in (truth.rotations[:, :2, :], truth.rotations.transpose(1, 2)[:, :2, :]):
        a = a.double().reshape(-1, 3)
        t = torch.linalg.lstsq(a, d).solution
        residual = float((a @ t - d).norm())
        if best is None or residual < best[0]:
            best = (residual, a @ t, t)
    _, fitted, t = best
    return (origins.double() - fitted.reshape(-1, 2)).to(origins.dtype), float(t.norm())


def write_evaluation_figures(ev: Evaluation, truth: Truth, figs, what: str = "recovered") -> None:
    """The error histogram and the viewing directions, estimated (aligned) vs true."""
    from . import plots

    errs = {k: np.rad2deg(v.numpy()) for k, v in ev.errors.items()}
    med = float(np.median(errs["rotation"]))
    plots.histogram([("rotation", errs["rotation"]), ("viewing direction", errs["direction"]),
                     ("in-plane", errs["in_plane"])], figs / "errors.png",
                    "angular error after physical alignment (degrees)",
                    title=f"{what.capitalize()} vs true orientations", markers=[(med, f"median {med:.2f}°")])
    plots.viewing_directions([("true", truth.rotations), (f"{what} (aligned)", ev.aligned.float())],
                             figs / "viewing_directions.png",
                             title=f"Viewing directions: {what} (aligned) vs true")
