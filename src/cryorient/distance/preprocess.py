"""What the network sees: CTF phase-flipped, resampled to the network's pixel size and box,
standardised per image. The same function serves training images and a stack's particles."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ctf import CTFParams, ctf_rfft
from ..errors import CryorientError
from ..fourier import fourier_resize, irfft2_centered, rfft2_centered


def resampled_box(box: int, pixel_size: float, input_pixel_size: float) -> int:
    """Even box holding the same field of view at ``input_pixel_size``."""
    return max(2, 2 * round(box * pixel_size / input_pixel_size / 2))


def check_compatible(box: int, pixel_size: float, input_size: int, input_pixel_size: float) -> None:
    """Refuse stacks the model cannot see sensibly (more than 2x upsampling, or a field of view
    under half the network's)."""
    if pixel_size > 2 * input_pixel_size + 1e-6:
        raise CryorientError(
            f"images at {pixel_size} Å/px are too coarse for a model trained at {input_pixel_size} Å/px "
            "(more than 2x upsampling); train a model for this stack"
        )
    if box * pixel_size < 0.5 * input_size * input_pixel_size:
        raise CryorientError(
            f"the stack's field of view ({box * pixel_size:.0f} Å) is under half the model's "
            f"({input_size * input_pixel_size:.0f} Å); train a model for this stack"
        )


def _crop_or_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    box = images.shape[-1]
    if box == size:
        return images
    if box > size:
        lo = box // 2 - size // 2
        return images[..., lo:lo + size, lo:lo + size]
    p = size // 2 - box // 2
    return F.pad(images, [p, size - box - p, p, size - box - p])


def prepare_inputs(images: torch.Tensor, pixel_size: float, ctf: CTFParams | None, input_size: int,
                   input_pixel_size: float, phase_flip: bool = True) -> torch.Tensor:
    """Images ``(B, D, D)`` -> network inputs ``(B, input_size, input_size)``."""
    box = images.shape[-1]
    x = images.float()
    if phase_flip and ctf is not None:
        flip = ctf_rfft(ctf, box, pixel_size, phase_flip=True, device=x.device)
        x = irfft2_centered(rfft2_centered(x) * flip, box)
    x = fourier_resize(x, resampled_box(box, pixel_size, input_pixel_size))
    x = _crop_or_pad(x, input_size)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return x / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)


def default_input(box: int, pixel_size: float, max_size: int) -> tuple[int, float]:
    """Network input size and pixel size for a stack: the whole box, downsampled to at most
    ``max_size`` px (never upsampled)."""
    size = min(box, max_size)
    size -= size % 2
    return size, box * pixel_size / size if size < box else pixel_size
