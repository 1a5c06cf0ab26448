"""Run the CLI in-process and capture what a user would see."""

from __future__ import annotations

import contextlib
import io

from cryorient.cli.main import main

# a small, fast simulation: adenylate kinase in a 32-px box at 4 Å/px
SMALL = ("--structure", "1ake_adk_closed", "--box-size", "32", "--pixel-size", "4")


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors and --help
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
