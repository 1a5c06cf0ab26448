"""Run directories: every command writes into ``--outdir`` all or nothing.

Work happens in a hidden staging directory next to the target; it is renamed into place
only when the command succeeds, so a failure or an interruption leaves no partial output.
The directory holds the resolved ``config.yaml``, ``run.json`` (version, argv, seed,
torch), ``cryorient.log``, metrics, artefacts and ``figures/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from . import __version__
from .errors import CryorientError
from .io import atomic_output

LOG_NAME = "cryorient.log"


def to_plain(obj: Any) -> Any:
    """Dataclasses, paths, tuples, tensors and numpy scalars -> YAML/JSON-friendly values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return to_plain(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj


def write_json(path: str | Path, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(to_plain(data), indent=2, allow_nan=True) + "\n")


def write_yaml(path: str | Path, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_plain(data), sort_keys=False))


@contextlib.contextmanager
def staged_directory(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging directory that becomes ``final`` on success (else is removed)."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise CryorientError(f"output directory {final} exists; use --overwrite or another --outdir")
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if final.exists():
        trash = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, trash)
        os.replace(stage, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, final)


def run_info(command: str, argv: list[str] | None, seed: int | None) -> dict[str, Any]:
    return {
        "command": command,
        "cryorient_version": __version__,
        "argv": list(sys.argv if argv is None else argv),
        "seed": seed,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def run_directory(outdir: str | Path, command: str, config: Any, *, overwrite: bool = False,
                  seed: int | None = None, argv: list[str] | None = None) -> Iterator[Path]:
    """A staged run directory with config, run info and a log file attached to the logger."""
    with staged_directory(Path(outdir), overwrite) as stage:
        (stage / "figures").mkdir()
        write_yaml(stage / "config.yaml", config)
        info = run_info(command, argv, seed)
        handler = logging.FileHandler(stage / LOG_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("cryorient")
        logger.addHandler(handler)
        t0 = time.perf_counter()
        try:
            yield stage
        finally:
            logger.removeHandler(handler)
            handler.close()
        info["wall_time_s"] = round(time.perf_counter() - t0, 3)
        write_json(stage / "run.json", info)
