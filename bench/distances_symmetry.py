"""The distance method (the original work's pipeline: a network, distances, recovery, the
reference's frame, reconstruction) on symmetric particles (issue 13), with the point group and,
as before the group was known, in C1.

    python bench/distances_symmetry.py --only C2 C4 D2 --c1 C4 --workdir /tmp/c4

Stacks: those of bench/refine.py (the same simulation, cached in ``--workdir``): exact
oligomers of 3q4oA built by the group's operators in RELION's frame, box 64 at 2 Å/px, SNR
1/16, CTF, shifts up to 4 px, N = 5000. Each case is ``cryorient run --method distances`` with
the exact oligomer as the reference (the original work's setting: the network learns from the
particles' structure), its default budget (a fresh model cache: every case trains) and
``--symmetry`` the group (or C1). Both are judged alike from the run's final poses (in the
reference's frame): the median error modulo the group after the alignment that searches the
group's mates, and the map of the truth-aligned poses, symmetrised, against the true map at
FSC 0.5, beside the true poses' map.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import refine as rb  # the same stacks and structures as the refinement bench
from common import print_table, run_isolated, write_results

JUDGE = """
import json
from cryorient.config import ReconstructConfig
from cryorient.density import load_reference
from cryorient.evaluation import evaluate_poses, truth_of
from cryorient.particles import read_particles
from cryorient.reconstruct.run import reconstruct
from cryorient.symmetry import point_group
truth = truth_of(read_particles("{sim}/particles.star"))
data = read_particles("{run}/recover/orientations.star")
group = point_group("{group}")
ev = evaluate_poses(data.rotations(), data.shifts_angstrom(), truth, data.pixel_size, group.ops().double())
true_map = load_reference("{sim}/volume.mrc", data.box, data.pixel_size)
one = ReconstructConfig(halves=False, symmetry=group.name)
aligned = ev.in_truth_frame(data, data.shifts_angstrom())  # the map's global offset removed
mine = reconstruct(aligned, aligned.rotations(), one, true_map)
ideal = reconstruct(data.with_orientations(truth.rotations, truth.origins_angstrom), truth.rotations, one, true_map)
m = ev.metrics()
print(json.dumps({{"median_deg": round(m["rotation_error"]["median_deg"], 2),
                  "p90_deg": round(m["rotation_error"]["p90_deg"], 2), "hand": m["hand"],
                  "vs_truth_A": round(mine.resolution_reference.angstrom, 2),
                  "true_poses_vs_truth_A": round(ideal.resolution_reference.angstrom, 2)}}))
"""


def case(tmp: Path, name: str, symmetry: str) -> dict:
    sim = rb.stack_for(tmp, name, 5000)
    run = tmp / f"distances_{name}_{symmetry}"
    args = [sys.executable, "-m", "cryorient", "run", "--method", "distances", "--particles",
            str(sim / "particles.star"), "--reference", rb.structure_path(tmp, name), "--symmetry", symmetry,
            "--truth-map", str(sim / "volume.mrc"), "--outdir", str(run), "--overwrite", "--quiet"]
    t = time.perf_counter()
    # a cache of its own: every case trains its network (no model from an earlier run)
    env = {**os.environ, "CRYORIENT_CACHE": str(run) + "_cache"}
    shutil.rmtree(str(run) + "_cache", ignore_errors=True)
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    seconds = time.perf_counter() - t
    summary = json.loads((run / "summary.json").read_text())
    judged = run_isolated(JUDGE.format(sim=sim, run=run, group=rb.STRUCTURES[name]["sym"]), usage=False)
    out = {"structure": name, "method": f"cryorient distances ({symmetry})", "seconds": round(seconds),
           **{k: summary.get(k) for k in ("training_median_error_deg", "model_weak", "ambiguity_margin",
                                          "median_error_before_refinement_deg", "resolution_halves_angstrom",
                                          "wall_time_s")},
           **judged}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=["C2", "C4", "D2"])
    ap.add_argument("--c1", nargs="*", default=["C4"], help="these also in C1 (the method before it knew the group)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="cryorient-bench-distances-"))
    tmp.mkdir(parents=True, exist_ok=True)
    stem = "distances_symmetry_n5000" + (f"_{args.tag}" if args.tag else "")
    results: dict = {"n": 5000, "cases": []}
    for name in args.only:
        for symmetry in [rb.STRUCTURES[name]["sym"]] + (["C1"] if name in args.c1 else []):
            results["cases"].append(case(tmp, name, symmetry))
            print(results["cases"][-1], flush=True)
            write_results(stem, results)
    print_table(results["cases"], [("structure", "structure"), ("method", "method"), ("seconds", "s"),
                                   ("training_median_error_deg", "network validation °"),
                                   ("median_error_before_refinement_deg", "before local refinement °"),
                                   ("median_deg", "median ° (mod group)"), ("p90_deg", "90th pct °"),
                                   ("hand", "hand"), ("vs_truth_A", "vs truth Å"),
                                   ("true_poses_vs_truth_A", "true poses vs truth Å")],
                "The distance method on symmetric particles, box 64, N=5000, SNR 1/16, CTF")


if __name__ == "__main__":
    main()
