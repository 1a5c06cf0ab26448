"""The user-facing error type.

Every problem a user can fix (a missing file, a bad option value, a STAR file without
the needed columns, ...) is raised as :class:`CryorientError` with a one-line message
saying what is wrong and what to do. The CLI prints it and exits with code 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path


class CryorientError(Exception):
    """A problem with the user's input, reported as one line (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def require(condition: bool, message: str) -> None:
    """Raise :class:`CryorientError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CryorientError(message)


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path if it is an existing regular file, else raise."""
    p = Path(path)
    if not p.exists():
        raise CryorientError(f"{what} not found: {p} (check the path)")
    if not p.is_file():
        raise CryorientError(f"{what} is not a regular file: {p}")
    return p


def require_positive(value: float, name: str, allow_inf: bool = False) -> float:
    """Check that ``value`` is a finite (or, if allowed, infinite) number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CryorientError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        extra = " or inf" if allow_inf else ""
        raise CryorientError(f"{name} must be > 0{extra}, got {value!r}")
    return v


def require_columns(present: Iterable[str], needed: Iterable[str], where: str, hint: str) -> None:
    """Raise if any of ``needed`` is missing from ``present``."""
    have = set(present)
    missing = [c for c in needed if c not in have]
    if missing:
        raise CryorientError(f"{where} lacks column(s) {', '.join(missing)}; {hint}")
