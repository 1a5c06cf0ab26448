"""Helpers shared by the benchmark scripts: timing in a fresh process (so that peak memory is
that of the case alone), table printing and JSON results in bench/results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def run_isolated(code: str, timeout: float | None = None, usage: bool = True) -> dict:
    """Run Python ``code`` in a fresh interpreter; it must print one JSON object on its last
    line. Adds ``peak_rss_gib`` (the child's maximum resident set size) and ``cpu_seconds`` (its
    CPU time over all threads) unless ``usage`` is False (a judge of another program's output,
    whose own usage must not stand in for that program's)."""
    wrapper = code + (
        "\nimport resource as _r, json as _j, sys as _s\n"
        "_u = _r.getrusage(_r.RUSAGE_SELF)\n"
        "_s.stdout.write('\\n' + _j.dumps({'__rss_kib': _u.ru_maxrss, '__cpu_s': _u.ru_utime + _u.ru_stime}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case failed:\n{proc.stderr[-2000:]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    result = json.loads(lines[-2])
    if usage:
        used = json.loads(lines[-1])
        result["peak_rss_gib"] = round(used["__rss_kib"] / 2**20, 3)
        result["cpu_seconds"] = round(used["__cpu_s"])  # all threads: comparable when the cores were shared
    return result


def print_table(rows: list[dict], columns: list[tuple[str, str]], title: str) -> None:
    """Print rows as a Markdown table; ``columns`` are (key, header)."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(h for _, h in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        cells = []
        for k, _ in columns:
            v = r.get(k, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        print("| " + " | ".join(cells) + " |")


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
