"""The contrast transfer function, in RELION's parameterisation.

Per particle: ``rlnDefocusU``, ``rlnDefocusV`` (Å, positive = underfocus) and
``rlnDefocusAngle`` (degrees, from the x axis to the U direction); per optics group:
voltage (kV), spherical aberration Cs (mm) and amplitude contrast. Evaluation uses
torch-ctf; :func:`ctf_rfft` converts RELION's parameters to its conventions (checked
against ``relion_project --ctf`` in the oracle tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_ctf import calculate_ctf_2d

from .config import CTFSampling
from .fourier import rfft_freqs_2d


@dataclass(frozen=True)
class CTFParams:
    """CTF parameters of N particles (all fields are ``(N,)`` float tensors)."""

    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    defocus_angle_deg: torch.Tensor
    voltage_kv: torch.Tensor
    cs_mm: torch.Tensor
    amplitude_contrast: torch.Tensor

    def __len__(self) -> int:
        return int(self.defocus_u_angstrom.shape[0])

    def subset(self, index) -> CTFParams:
        """The parameters of the particles selected by ``index`` (a slice, indices or a mask)."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return CTFParams(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def to(self, device) -> CTFParams:
        return CTFParams(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def subset(ctf: CTFParams | None, index) -> CTFParams | None:
    """``ctf.subset(index)``, or None for a stack without CTF parameters."""
    return None if ctf is None else ctf.subset(index)


def sample_ctf(n: int, cfg: CTFSampling, generator: torch.Generator) -> CTFParams:
    """Draw defocus uniformly in the range, astigmatism and its angle uniformly."""
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    mean = cfg.defocus_min_angstrom + (cfg.defocus_max_angstrom - cfg.defocus_min_angstrom) * u[:, 0]
    astig = cfg.astigmatism_angstrom * u[:, 1]
    angle = -180.0 + 360.0 * u[:, 2]
    full = torch.ones(n, dtype=torch.float64)
    return CTFParams(
        defocus_u_angstrom=(mean + astig).float(),
        defocus_v_angstrom=(mean - astig).float(),
        defocus_angle_deg=angle.float(),
        voltage_kv=(cfg.voltage_kv * full).float(),
        cs_mm=(cfg.cs_mm * full).float(),
        amplitude_contrast=(cfg.amplitude_contrast * full).float(),
    )


def ctf_rfft(params: CTFParams, box: int, pixel_size: float, phase_flip: bool = False,
             full_centred: bool = False, device=None) -> torch.Tensor:
    """CTF of each particle on the unshifted rfft grid: ``(N, box, box // 2 + 1)`` (or, with
    ``full_centred``, on the full fftshifted grid ``(N, box, box)``).

    Sign as RELION: ``CTF = sin(pi lambda df k^2 - pi/2 Cs lambda^3 k^4 + asin(Q))``, i.e.
    ``+Q`` at the origin and positive at low frequency for underfocus (``df > 0``).
    ``phase_flip`` returns ``sign(CTF)`` instead. Computed on ``device`` (default: where the
    parameters are).
    """
    if device is not None:
        params = params.to(device)
    du = params.defocus_u_angstrom.double()
    dv = params.defocus_v_angstrom.double()
    # torch-ctf's defocus is in micrometres as mean and half-difference; its astigmatism
    # angle on our grids equals rlnDefocusAngle (pinned against relion_project --ctf in
    # tests/test_relion_oracle.py).
    ctf = calculate_ctf_2d(
        defocus=(du + dv) / 2e4,
        astigmatism=(du - dv) / 2e4,
        astigmatism_angle=params.defocus_angle_deg.double(),
        voltage=params.voltage_kv.double(),
        spherical_aberration=params.cs_mm.double(),
        amplitude_contrast=params.amplitude_contrast.double(),
        phase_shift=0.0,
        pixel_size=pixel_size,
        image_shape=(box, box),
        rfft=not full_centred,
        fftshift=full_centred,
    ).float()
    return torch.sign(ctf) if phase_flip else ctf


def first_zero_frequency(params: CTFParams, pixel_size: float) -> float:
    """Lowest spatial frequency (cycles/px) of a CTF zero over the stack (the most-underfocused
    particle along its U direction). Below it the CTF has no zero for any particle."""
    box = 512
    ky, kx = rfft_freqs_2d(box, dtype=torch.float64)
    worst = int(torch.argmax(params.defocus_u_angstrom))
    single = params.subset(slice(worst, worst + 1))
    ctf = ctf_rfft(single, box, pixel_size)[0].double()
    freq = torch.sqrt(kx**2 + ky**2)
    sign0 = torch.sign(ctf[0, 0])
    crossed = torch.sign(ctf) != sign0
    return float(freq[crossed].min()) if bool(crossed.any()) else 0.5
