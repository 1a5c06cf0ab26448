"""Aligning recovered orientations to a reference (evaluation only; recovery never calls this).

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

from ..conventions import hand_matrix
from ..so3 import project_to_so3, rotmat_angle, rotmat_distance


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


def align_physical(estimated: torch.Tensor, reference: torch.Tensor, allow_hand: bool = True
                   ) -> Alignment:
    """The global rotation (and hand) that best maps ``estimated`` onto ``reference``."""
    est, ref = estimated.double(), reference.double()
    best = None
    for flip in (False, True) if allow_hand else (False,):
        e = est
        if flip:
            j = hand_matrix(torch.float64)
            e = j @ est @ j
        g = _robust_left(ref, e)
        med = float(rotmat_distance(ref, g @ e).median())
        if best is None or med < best[0]:
            best = (med, Alignment(g, flip))
    return best[1]


def align_o4(estimated: torch.Tensor, reference: torch.Tensor, iterations: int = 60,
             starts: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Diagnostic O(4) alignment: ``A R B`` or ``A R^T B`` closest to the reference.

    Alternating Procrustes from several starts; returns ``(A, B, transposed)``."""
    est, ref = estimated.double(), reference.double()
    g = torch.Generator().manual_seed(seed)
    best = None
    ones = torch.ones(est.shape[0], dtype=torch.float64)
    for transposed in (False, True):
        e = est.transpose(-1, -2) if transposed else est
        for _ in range(starts):
            b = project_to_so3(torch.randn(3, 3, generator=g, dtype=torch.float64))
            for _ in range(iterations):
                a = _procrustes_left(ref, e @ b, ones)
                # argmin_B sum ||ref - A e B||^2 = Procrustes of sum (A e)^T ref
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


def evaluate(estimated: torch.Tensor, reference: torch.Tensor) -> Evaluation:
    """Physical alignment + per-particle errors + the O(4) diagnostic."""
    al = align_physical(estimated, reference)
    aligned = al.apply(estimated)
    a, b, transposed = align_o4(estimated, reference)
    e = estimated.double().transpose(-1, -2) if transposed else estimated.double()
    o4 = rotmat_distance(reference.double(), a @ e @ b)
    return Evaluation(al, aligned, angular_errors(aligned, reference), o4, transposed)
