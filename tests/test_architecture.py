"""The layer picture of docs/architecture.md, enforced: stages call down into shared layers,
never sideways into a sibling stage; shared layers call no stage; the configuration and the
command line's start imports nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cryorient

ROOT = Path(cryorient.__file__).parent
STAGES = {"simulate", "distance", "orientation", "reconstruct", "refine", "abinitio"}
COMPOSERS = {"pipeline", "cli", "api", "__main__", "report"}  # put stages together


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        unit = parts[1] if len(parts) > 1 else parts[0]
        pkg = parts if f.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[: len(pkg) - node.level + 1]
                if node.module:
                    targets.append(".".join([*base, node.module]))
                else:
                    targets += [".".join([*base, a.name]) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cryorient"):
                targets.append(node.module)
            for t in targets:
                tparts = t.split(".")
                if len(tparts) > 1 and tparts[1] != unit:
                    graph[unit].add(tparts[1])
    return graph


def test_stages_do_not_import_sibling_stages():
    graph = _imports()
    for unit, deps in graph.items():
        if unit in STAGES:
            assert not (deps & (STAGES - {unit})), (unit, deps & STAGES)
        elif unit not in COMPOSERS:
            assert not (deps & STAGES), f"shared layer {unit} imports stage(s) {deps & STAGES}"
            assert not (deps & COMPOSERS), (unit, deps & COMPOSERS)
    assert graph["config"] <= {"errors"}


def test_cli_starts_fast_without_torch():
    code = ("import sys, time; t = time.perf_counter(); import cryorient.cli.main as m; "
            "p = m.build_parser(); print(time.perf_counter() - t, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False", "the CLI's start imports torch"
    assert float(out[0]) < 0.5, out  # measured 0.05 s
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cryorient", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - t < 1.0
