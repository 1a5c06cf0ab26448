"""Failures leave nothing that gets in the way of the corrected retry: one line, exit code 2,
no half-written directory; SIGTERM ends cleanly; bad input caught before work starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import starfile

from .cli_helpers import SMALL, assert_one_line_error, run_cli


def test_run_without_reference_fails_before_simulating_where_one_is_needed(tmp_path):
    # the distance method trains on a reference; a symmetric refinement needs one in RELION's
    # symmetry frame (without a reference, the refinement starts from an ab initio map in C1)
    # and the ab initio start is C1 only; the distance method's group must be a rotation group
    # (its distances are modulo rotations) and it has no symmetry to relax
    for extra, what in ((["--method", "distances"], "--reference"), (["--symmetry", "C2"], "--reference"),
                        (["--reference", "1ake_adk_closed", "--symmetry", "C2", "--start", "particles"],
                         "--start reference"),
                        (["--reference", "1ake_adk_closed", "--symmetry", "Cs", "--method", "distances"],
                         "Cn, Dn, T, O or I"),
                        (["--reference", "1ake_adk_closed", "--symmetry", "C2", "--method", "distances",
                          "--relax-symmetry"], "--relax-symmetry")):
        code, _, err = run_cli("run", *SMALL, *extra, "--outdir", tmp_path / "r", "--quiet")
        assert_one_line_error(code, err, what)
        assert not (tmp_path / "r").exists()


def test_failed_run_leaves_nothing_and_the_retry_is_not_refused(tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli("run", "--particles", tmp_path / "missing.star", "--reference", "1ake_adk_closed",
                           "--outdir", out, "--quiet")
    assert_one_line_error(code, err, "not found")
    assert not out.exists()  # no config.yaml left to refuse the corrected retry
    # a failure inside a stage (the structure is too large for the box): nothing either
    code, _, err = run_cli("run", "--structure", "3kpr", "--box-size", "32", "--pixel-size", "4",
                           "--reference", "1ake_adk_closed", "--outdir", out, "--quiet")
    assert_one_line_error(code, err, "too large")
    assert not out.exists()


def test_unwritable_outdir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for args in (["simulate", *SMALL, "--n-particles", "10"],
                 ["run", *SMALL, "--n-particles", "10", "--reference", "1ake_adk_closed"]):
        code, _, err = run_cli(*args, "--outdir", blocker / "out", "--quiet")
        assert_one_line_error(code, err, "cannot read or write")


def test_relion30_star_without_pixel_size_and_snr_fractions(tmp_path):
    sim = tmp_path / "sim"
    code, _, err = run_cli("simulate", *SMALL, "--n-particles", "40", "--outdir", sim, "--quiet")
    assert code == 0, err
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    old = sim / "relion30.star"
    table = blocks["particles"].drop(columns=["rlnOpticsGroup"])
    starfile.write({"": table}, old)
    code, _, err = run_cli("run", "--particles", old, "--reference", "1ake_adk_closed", "--outdir",
                           tmp_path / "r", "--quiet")
    assert_one_line_error(code, err, "pass --pixel-size")
    # --pixel-size reaches the STAR reader (it used to go to the simulator): the run gets past it
    code, _, err = run_cli("run", "--particles", old, "--pixel-size", "4", "--reference", "3kpr", "--outdir",
                           tmp_path / "r", "--quiet")
    assert_one_line_error(code, err, "too large")  # the reference, read after the particles
    # the same SNR parser everywhere: a fraction for train as for simulate
    code, _, err = run_cli("train", "--reference", "1ake_adk_closed", "--particles", sim / "particles.star",
                           "--snr", "1/16", "--max-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8",
                           "--width", "8", "--input-size", "16", "--outdir", tmp_path / "t", "--quiet")
    assert code == 0, err


def _terminate_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def test_sigterm_ends_cleanly_and_the_run_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CRYORIENT_CACHE": str(tmp_path / "cache")}
    # an all-or-nothing command: no staging directory survives, the same command then runs
    sim = tmp_path / "sim"
    args = [sys.executable, "-m", "cryorient", "simulate", *map(str, SMALL), "--n-particles", "20000",
            "--outdir", str(sim), "--quiet"]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    _terminate_when(proc, lambda: any(tmp_path.glob(".sim.partial-*")))
    assert proc.returncode == 143 and "terminated" in proc.stderr.read()
    assert not sim.exists() and not list(tmp_path.glob(".sim.*"))
    # a resumable run, stopped during training: the finished stage stays, the partial goes,
    # and the same command resumes
    out = tmp_path / "run"
    run = [sys.executable, "-m", "cryorient", "run", "--method", "distances", *map(str, SMALL), "--n-particles",
           "200", "--reference", "1ake_adk_closed", "--max-epochs", "50", "--steps-per-epoch", "4",
           "--train-batch-size", "16", "--width", "8", "--input-size", "16", "--restarts", "1",
           "--refine-rounds", "0", "--ambiguity-images", "200", "--outdir", str(out), "--quiet"]
    proc = subprocess.Popen(run, env=env, stderr=subprocess.PIPE, text=True)
    _terminate_when(proc, lambda: (out / "train" / "checkpoint.pt").is_file())
    assert proc.returncode == 143
    assert (out / "simulate" / "stage.json").is_file() and not list(out.glob(".*.partial-*"))
    done = subprocess.run([*run, "--max-epochs", "2"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "other options" in done.stderr  # a changed run is refused ...
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]  # ... the same one resumes
    assert (out / "summary.json").is_file()
