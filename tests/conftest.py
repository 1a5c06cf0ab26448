"""Shared fixtures: small volumes and stacks that keep the suite fast."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from cryorient.config import DensityConfig
from cryorient.density import load_volume


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers, one per core) each worker computes on
    one thread, and so do the command-line runs it starts: two workers of two threads each on
    two cores would contend."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# The files that take longest (seconds of one worker, measured on the 2-core VM of stop 45),
# run first: `make test` hands whole files to its two workers in the order collected
# (--dist loadfile --no-loadscope-reorder), and a long file left for the end idles the other
# worker (measured 712 s against an even split of 641 s when xdist ordered files by test count).
LONGEST_FIRST = ("test_pipeline.py", "test_refine.py", "test_symmetry.py", "test_truth_blind.py", "test_learned.py",
                 "test_distance.py", "test_cli_recover.py", "test_failures.py", "test_cli_train.py",
                 "test_relion_oracle.py", "test_recover.py", "test_abinitio.py")


def pytest_collection_modifyitems(config, items):
    """Collect the longest files first (:data:`LONGEST_FIRST`), the others after them in their order."""
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def own_model_cache(tmp_path_factory):
    """Trained models are cached in a directory of this session, never in the user's cache: a
    model cached by an earlier run must not change what a test measures."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CRYORIENT_CACHE", str(tmp_path_factory.mktemp("model-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def adk_volume_32() -> torch.Tensor:
    """ADK density at box 32, 4 Å/px (band-limited at 10 Å)."""
    return load_volume("1ake_adk_closed", DensityConfig(box=32, pixel_size=4.0))


@pytest.fixture(scope="session")
def adk_volume_64() -> torch.Tensor:
    """ADK density at box 64, 2 Å/px (the simulator default)."""
    return load_volume("1ake_adk_closed", DensityConfig(box=64, pixel_size=2.0))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def blob_volume(box: int, n_blobs: int = 24, sigma: float = 2.0, seed: int = 0,
                dtype=torch.float32) -> torch.Tensor:
    """Sum of Gaussian blobs (effectively band-limited) well inside the inscribed sphere."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    centres = torch.randn(n_blobs, 3, generator=g, dtype=torch.float64) * box / 10
    for p in centres:
        vol += torch.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * sigma**2))
    return vol.to(dtype)


def relion_available() -> bool:
    return shutil.which("relion_project") is not None


def run(cmd: list[str], cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
