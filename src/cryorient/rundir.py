"""Run directories: every command writes into ``--outdir``, and a failure leaves nothing that
gets in the way of the corrected retry.

Two lifecycles, one module:

- :func:`run_directory` (simulate, recover, reconstruct, ...): work happens in a hidden
  staging directory next to the target, renamed into place only when the command succeeds;
- :func:`resumable_directory` (run, train): the directory fills stage by stage (each stage
  staged the same way) so that an interrupted run resumes; a failure before anything worth
  resuming was written removes the directory, and partial stages are always removed.

Each holds the resolved ``config.yaml``, ``run.json`` (version, argv, seed, torch),
``cryorient.log``, metrics, artefacts and ``figures/``. SIGTERM is turned into the same clean
exit as Ctrl-C (see :func:`cryorient.cli.main.main`).
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
PARTIAL_PREFIX = "."


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
    stage = final.parent / f"{PARTIAL_PREFIX}{final.name}.partial-{os.getpid()}"
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


def remove_partials(directory: Path) -> None:
    """Remove staging leftovers (``.NAME.partial-PID``, ``.NAME.tmp-PID``, ``.NAME.old-PID``)
    of processes that are gone, in ``directory`` and its stage directories."""
    for path in [*directory.glob(".*.partial-*"), *directory.glob("*/.*.partial-*"),
                 *directory.glob(".*.tmp-*"), *directory.glob("*/.*.tmp-*"), *directory.glob(".*.old-*")]:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worth_resuming(directory: Path) -> bool:
    """A finished stage or a training checkpoint: what a rerun would reuse."""
    return any(directory.glob("*/stage.json")) or any(directory.rglob("checkpoint.pt"))


@contextlib.contextmanager
def _log_to(directory: Path) -> Iterator[None]:
    handler = logging.FileHandler(directory / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("cryorient")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def resumable_directory(outdir: str | Path, command: str, options: dict, *, overwrite: bool = False,
                        seed: int | None = None) -> Iterator[Path]:
    """A run directory that resumes: the same ``options`` in an existing directory continue the
    run there; other options are refused; see the module docstring for failures."""
    outdir = Path(outdir)
    plain = yaml.safe_load(yaml.safe_dump(to_plain(options)))
    if outdir.exists() and overwrite:
        shutil.rmtree(outdir)
    if outdir.exists():
        config = outdir / "config.yaml"
        if not config.is_file():
            raise CryorientError(f"output directory {outdir} exists and is not a cryorient run; use "
                                 "--overwrite or another --outdir")
        if yaml.safe_load(config.read_text()) != plain:
            raise CryorientError(f"{outdir} holds a run with other options; rerun it with --config "
                                 f"{config}, or use --overwrite or another --outdir")
    created = not outdir.exists()
    outdir.mkdir(parents=True, exist_ok=True)
    remove_partials(outdir)
    write_yaml(outdir / "config.yaml", plain)
    info = run_info(command, None, seed)
    t0 = time.perf_counter()
    try:
        with _log_to(outdir):
            yield outdir
    except BaseException:
        if created and not _worth_resuming(outdir):
            shutil.rmtree(outdir, ignore_errors=True)
        else:
            remove_partials(outdir)
        raise
    info["wall_time_s"] = round(time.perf_counter() - t0, 3)
    write_json(outdir / "run.json", info)


@contextlib.contextmanager
def run_directory(outdir: str | Path, command: str, config: Any, *, overwrite: bool = False,
                  seed: int | None = None, argv: list[str] | None = None) -> Iterator[Path]:
    """A staged run directory with config, run info and a log file attached to the logger."""
    with staged_directory(Path(outdir), overwrite) as stage:
        (stage / "figures").mkdir()
        write_yaml(stage / "config.yaml", config)
        info = run_info(command, argv, seed)
        t0 = time.perf_counter()
        with _log_to(stage):
            yield stage
        info["wall_time_s"] = round(time.perf_counter() - t0, 3)
        write_json(stage / "run.json", info)
