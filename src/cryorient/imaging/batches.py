"""A particle stack read in batches: the images of each batch with their CTF parameters,
optionally resampled to a smaller box (the pixel size grows by ``box / size``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..ctf import CTFParams, subset
from ..fourier import fourier_resize
from ..particles import ParticleStack


@dataclass(frozen=True)
class Batch:
    indices: np.ndarray  # (B,) indices into the stack
    images: torch.Tensor  # (B, S, S)
    ctf: CTFParams | None  # the CTF parameters of these particles (None: no CTF)


def stack_batches(stack: ParticleStack, batch_size: int = 256, indices: np.ndarray | None = None,
                  size: int | None = None, device=None) -> Iterator[Batch]:
    """Batches of ``stack`` (the particles ``indices``, default all, in that order), resampled
    to ``size`` px when given, on ``device``."""
    ctf = stack.ctf()
    for idx, images in stack.images.batches(batch_size, indices):
        if size is not None and size != stack.box:
            images = fourier_resize(images, size)
        yield Batch(idx, images.to(device), subset(ctf, idx))


def tensor_batches(images: torch.Tensor, ctf: CTFParams | None, batch_size: int = 256,
                   indices: np.ndarray | None = None) -> Iterator[Batch]:
    """The same for images already in memory ``(N, S, S)`` with their CTF parameters."""
    idx_all = np.arange(images.shape[0]) if indices is None else np.asarray(indices)
    for start in range(0, len(idx_all), batch_size):
        idx = idx_all[start:start + batch_size]
        t = torch.as_tensor(idx, device=images.device)
        yield Batch(idx, images[t], subset(ctf, idx))
