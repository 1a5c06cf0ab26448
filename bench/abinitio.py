"""An initial map from the particles alone (issue 14), then the gold-standard loop from it,
beside RELION 3.1's SGD initial model on the same stacks.

    python bench/abinitio.py --only 3kpr_single 1ake noise
    python bench/abinitio.py --only 3kpr_single --relion      # + relion_refine --denovo_3dref --sgd

Stacks as bench/refine.py (SNR 1/16, CTF, shifts up to 4 px, box 64; ``--n``): the structures
are never seen by cryorient (there is no training). Judged by: the initial map's FSC 0.5
against the truth after aligning rotation and hand (``volumes.align_maps``); the three random
starts' pairwise agreement (FSC 0.5 after alignment; 25 Å needed); after the loop (from the
initial map low-passed to 40 Å) the median pose error modulo the hand and the map against the
truth. ``noise``: pure-noise images: the starts must disagree and the loop must report no
resolution. RELION: ``relion_preprocess --norm``, then ``relion_refine --denovo_3dref --sgd``
with the InitialModel job's defaults (one MPI-less process, ``--j 2``); every map it writes
judged the same way, with the wall time at which it was written. ``--relion-minutes M`` stops
RELION after M minutes and judges the maps it wrote by then.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import print_table, run_isolated, write_results
from refine import BLIND_STACK, STRUCTURES, relion_inputs, stack_for

CRYORIENT = """
import json, time, torch
from cryorient.abinitio.em import ab_initio
from cryorient.config import AbInitioConfig, RefineConfig
from cryorient.density import load_reference
from cryorient.evaluation import evaluate_poses
from cryorient.refine.loop import refine
from cryorient.volumes import aligned_fsc, resolution_at
{blind_stack}px, box = blind.pixel_size, blind.box
truth_map = load_reference("{truth}", box, px)
def vs_truth(v):
    c, al = aligned_fsc(v, truth_map, px, resolution=20.0)
    return round(resolution_at(c, box, px, 0.5).angstrom, 2), al.mirror
t = time.perf_counter()
init = ab_initio(blind, AbInitioConfig(seeds={seeds}), seed={seed})
t_init = time.perf_counter() - t
out = {{"abinitio_seconds": round(t_init), "seeds_agree": init.agree,
        "agreement_A": [a[2] for a in init.agreement_angstrom], "chosen": init.chosen}}
if not {noise}:
    out["initial_vs_truth_A"], out["initial_mirrored"] = vs_truth(init.map)
t = time.perf_counter()
result = refine(blind, init.map, RefineConfig())
out.update(refine_seconds=round(time.perf_counter() - t), rounds=len(result.rounds), signal=result.signal,
           resolution_A=round(result.resolution.angstrom, 2) if result.signal else None)
if not {noise}:
    ev = evaluate_poses(result.rotations, result.origins_angstrom, truth, px)
    out.update(median_deg=round(ev.median_deg, 2), hand=ev.metrics()["hand"],
               map_vs_truth_A=vs_truth(result.map)[0])
print(json.dumps(out))
"""

# RELION 3.1's InitialModel job (GUI defaults), one process
RELION_SGD = ["--denovo_3dref", "--sgd", "--sgd_ini_iter", "50", "--sgd_inbetween_iter", "200", "--sgd_fin_iter", "50",
              "--sgd_write_iter", "20", "--sgd_ini_resol", "35", "--sgd_fin_resol", "15", "--sgd_ini_subset", "100",
              "--sgd_fin_subset", "500", "--sgd_sigma2fudge_halflife", "-1", "--K", "1", "--sym", "C1",
              "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "1",
              "--skip_gridding", "--ctf", "--oversampling", "1", "--healpix_order", "1", "--offset_range", "6",
              "--offset_step", "2", "--j", "2"]

RELION_JUDGE = """
import json
from cryorient.density import load_reference
from cryorient.volumes import aligned_fsc, resolution_at
truth = load_reference("{truth}", 64, {px})
out = []
for path in {maps}:
    c, al = aligned_fsc(load_reference(path, 64, {px}), truth, {px}, resolution=20.0)
    out.append({{"initial_vs_truth_A": round(resolution_at(c, 64, {px}, 0.5).angstrom, 2),
                "initial_mirrored": al.mirror}})
print(json.dumps({{"maps": out}}))
"""


def relion_case(tmp: Path, name: str, n: int, minutes: float | None = None) -> dict:
    """RELION's SGD initial model on the stack; with ``minutes``, stopped after that much wall
    time and judged on the maps it wrote by then."""
    sim = stack_for(tmp, name, n)
    work = tmp / f"relion_sgd_{name}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    relion_inputs(sim, work)
    t, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    args = ["relion_refine", "--o", "out/run", "--i", "norm.star",
            "--particle_diameter", str(int(0.9 * 64 * STRUCTURES[name]["px"])), *RELION_SGD]
    stopped = False
    with open(work / "relion.log", "w") as fh:
        proc = subprocess.Popen(args, cwd=work, stdout=fh, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=None if minutes is None else 60 * minutes)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
            rc, stopped = 0, True
    if rc != 0:
        raise subprocess.CalledProcessError(rc, args)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {**judge_relion(work, sim, name, started), "abinitio_seconds": round(seconds), "stopped_by_budget": stopped,
            "cpu_seconds": round(after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime)}


def judge_relion(work: Path, sim: Path, name: str, started: float) -> dict:
    """Every map a RELION SGD run wrote (each --sgd_write_iter iterations), judged against the
    truth, with the wall time at which it was written (from ``started``, a ``time.time()``):
    RELION's map at the moment cryorient's is done."""
    px = STRUCTURES[name]["px"]
    maps = sorted((work / "out").glob("run_it*_class001.mrc"))
    judged = run_isolated(RELION_JUDGE.format(truth=sim / "volume.mrc", maps=[str(m) for m in maps], px=px),
                          usage=False)["maps"]
    curve = [{"iteration": int(m.name[len("run_it"):][:3]), "seconds": round(m.stat().st_mtime - started),
              **j} for m, j in zip(maps, judged)]
    return {"structure": name, "method": "RELION 3.1 SGD initial model", **judged[-1],
            "last_iteration": curve[-1]["iteration"], "curve": curve}


def cryorient_case(tmp: Path, name: str, n: int, seeds: int, seed: int) -> dict:
    noise = name == "noise"
    sim = stack_for(tmp, "3kpr_single" if noise else name, n)
    blind = BLIND_STACK.format(star=sim / "particles.star", noise=noise)
    r = run_isolated(CRYORIENT.format(blind_stack=blind, truth=sim / "volume.mrc", noise=noise, seeds=seeds, seed=seed))
    return {"structure": name, "method": "cryorient (EM from random starts, then the loop)", **r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=["3kpr_single", "noise"])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relion", action="store_true")
    ap.add_argument("--relion-minutes", type=float, default=None,
                    help="stop RELION after this wall time, judge the maps it wrote by then (default: let it finish)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="cryorient-bench-abinitio-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results: dict = {"n": args.n, "cases": []}
    stem = f"abinitio_n{args.n}_" + (args.tag or "_".join(args.only))
    for name in args.only:
        results["cases"].append(cryorient_case(tmp, name, args.n, args.seeds, args.seed))
        print(results["cases"][-1], flush=True)
        write_results(stem, results)
        if args.relion and name != "noise" and shutil.which("relion_refine"):
            results["cases"].append(relion_case(tmp, name, args.n, args.relion_minutes))
            print(results["cases"][-1], flush=True)
            write_results(stem, results)
    print_table(results["cases"], [("structure", "structure"), ("method", "method"), ("abinitio_seconds", "initial s"),
                                   ("seeds_agree", "seeds agree"), ("initial_vs_truth_A", "initial vs truth Å"),
                                   ("refine_seconds", "loop s"), ("median_deg", "median ° (mod hand)"),
                                   ("resolution_A", "half maps Å"), ("map_vs_truth_A", "map vs truth Å")],
                f"Initial map from the particles alone, box 64, N={args.n}, SNR 1/16, CTF")
    for case in results["cases"]:
        if "curve" in case:
            print_table(case["curve"], [("iteration", "iteration"), ("seconds", "wall s"),
                                        ("initial_vs_truth_A", "map vs truth Å")],
                        f"RELION's SGD maps as they were written ({case['structure']})")
    write_results(stem, results)


if __name__ == "__main__":
    main()
