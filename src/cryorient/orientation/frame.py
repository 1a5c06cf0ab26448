"""Recovered poses put into a reference's frame and hand, decided from the data.

Recovery from distances leaves a global rotation and the hand free (the images cannot tell
them); with a reference, the map reconstructed from the recovered poses is aligned onto the
low-passed reference (rotation, both hands and translation searched,
:func:`cryorient.volumes.align_maps`) and the poses are transformed accordingly:

    V_ref(x) = V(G^T (x - s))  (mirrored first if the hand differs)
    R' = G R   (G J R J)       origin' = origin + (R'^T s)_xy

so that the particles' images are explained by the reference in its own frame. The margin
between the two hands' scores is reported: a thin one means the data do not decide the hand
at this resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..conventions import hand_matrix
from ..imaging.accumulator import backproject
from ..imaging.batches import stack_batches
from ..particles import ParticleStack
from ..volumes import MapAlignment, align_maps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramedPoses:
    rotations: torch.Tensor  # (N, 3, 3) in the reference's frame
    origins_angstrom: torch.Tensor  # (N, 2)
    alignment: MapAlignment

    def metrics(self) -> dict:
        a = self.alignment
        return {"hand": "mirrored" if a.mirror else "kept", "map_correlation": round(a.score, 4),
                "other_hand_correlation": round(a.other_hand_score, 4),
                "hand_margin": round(a.hand_margin, 4),
                "shift_px": [round(float(v), 2) for v in a.shift_px]}


def transform_poses(rotations: torch.Tensor, origins_angstrom: torch.Tensor, alignment: MapAlignment,
                    pixel_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Poses of a map ``V`` as poses of ``V`` rotated/mirrored/shifted by ``alignment``."""
    r = rotations.double()
    if alignment.mirror:
        j = hand_matrix(torch.float64)
        r = j @ r @ j
    r = alignment.rotation.double() @ r
    t = (r.transpose(-1, -2) @ alignment.shift_px.double())[:, :2]
    return r.float(), (origins_angstrom.double() + t * pixel_size).float()


def to_reference_frame(stack: ParticleStack, rotations: torch.Tensor, origins_angstrom: torch.Tensor,
                       reference: torch.Tensor, resolution: float, generator: torch.Generator,
                       device=None) -> FramedPoses:
    """Align the map of ``stack`` at these poses onto ``reference`` (both low-passed at
    ``resolution`` Å) and return the poses in the reference's frame and hand."""
    box, px = stack.box, stack.pixel_size
    acc = backproject(stack_batches(stack, 512, device=device), rotations.to(device),
                      (origins_angstrom / px).to(device), px, box, device=device)
    alignment = align_maps(acc.finalize().cpu(), reference, px, resolution, generator=generator)
    log.info("frame: map aligned onto the reference (correlation %.3f, hand %s, other hand %.3f)",
             alignment.score, "mirrored" if alignment.mirror else "kept", alignment.other_hand_score)
    rot, origins = transform_poses(rotations, origins_angstrom, alignment, px)
    return FramedPoses(rot, origins, alignment)
