"""The conventions of cryorient, stated once (pinned by tests/test_conventions.py).

Arrays
    Volumes are ``(D, D, D)`` indexed ``[z, y, x]``; images ``(..., D, D)`` indexed ``[y, x]``.
    The centre (rotation centre, FFT origin) is index ``D // 2`` on every axis.

Rotations
    ``rotmat (..., 3, 3)`` acts on column vectors and maps detector-frame xyz to volume-frame
    xyz: ``image(x, y) = ∫ V(R · (x, y, z)) dz`` (torch-fourier-slice's convention).

RELION
    RELION's ``A(rot, tilt, psi)`` maps volume to detector, so ``R = A^T``, which equals
    scipy ``Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix()``.
    ``rlnOriginXAngst/YAngst`` is the shift that moves the particle back to the centre: the
    particle is drawn at ``(D//2 - originX / pixel_size, D//2 - originY / pixel_size)`` (x is
    the column, y the row).

In-plane quarter turns
    :func:`quarter_turn` turns images by ``k`` quarter turns about the centre pixel; the turned
    image of a view ``R`` is exactly the view ``R · Rz(90° k)`` (:func:`quarter_turn_matrix`).

Quaternions
    ``(..., 4)`` scalar-last ``xyzw`` (roma, scipy), unit norm, written with ``w >= 0``.

Distance
    ``d(q1, q2) = 2 arccos |<q1, q2>|`` in ``[0, pi]``, computed as
    ``4 asin(min(|q1 - q2|, |q1 + q2|) / 2)`` which has finite gradients at ``d = 0``.

Hand
    ``J = diag(1, 1, -1)``. The orientations ``{J R_i J}`` with the mirrored volume
    ``V(J u)`` give exactly the same images as ``{R_i}`` with ``V``.

Units
    Radians inside; degrees only in names ending ``_deg`` and in reports. Lengths in Å
    (``_angstrom``), pixels ``_px``; pixel size in Å/px.

SNR
    ``var(clean image) / var(noise)``, both over the whole box, averaged over the stack;
    reported in dB as ``10 log10(SNR)``. The seed's absolute noise variance ``sigma^2``
    corresponds to ``SNR = mean var(clean) / sigma^2`` (≈ 1/sigma^2 for the seed's 5j0n
    projections, whose per-pixel variance was ≈ 1).
"""

from __future__ import annotations

import torch

QUATERNION_ORDER = "xyzw"
EULER_CONVENTION = "ZYZ"  # intrinsic rot, tilt, psi (RELION), R = A^T


def centre_index(size: int) -> int:
    """Index of the centre (rotation centre and FFT origin) along an axis of ``size``."""
    return size // 2


def hand_matrix(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``J = diag(1, 1, -1)``: the mirror that maps one hand to the other."""
    return torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=dtype, device=device))


def quarter_turn(images: torch.Tensor, k: int) -> torch.Tensor:
    """Images ``(..., D, D)`` turned by ``k`` quarter turns about the centre pixel ``D // 2``
    (exact: no interpolation). The turned projection of ``R`` is the projection of
    ``R @ quarter_turn_matrix(k)``."""
    k %= 4
    out = torch.rot90(images, k, dims=(-2, -1))  # about (D - 1) / 2: move the centre back to D // 2
    if images.shape[-1] % 2 == 0:
        if k in (1, 2):
            out = torch.roll(out, 1, dims=-2)
        if k in (2, 3):
            out = torch.roll(out, 1, dims=-1)
    return out


def quarter_turn_matrix(k: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``Rz(90° k)``: the rotation taking a view to its image turned by :func:`quarter_turn`."""
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=dtype, device=device)
