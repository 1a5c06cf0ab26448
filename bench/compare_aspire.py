"""Head-to-head with ASPIRE's common-lines estimator (CLSyncVoting) on the same stacks.

    python3 -m venv .aspire && .aspire/bin/pip install aspire==0.14.3   # once; not a dependency
    python bench/compare_aspire.py --aspire-python .aspire/bin/python
    python bench/compare_aspire.py --aspire-python .aspire/bin/python --n 500 --snr inf 0.0625

Stacks: the default structure (3kpr_single), box 64, 2.5 Å/px, no CTF (ASPIRE's estimator
works on raw images; its users usually feed it phase-flipped class averages), shifts up to
2 px, SNR clean, 1, 1/4, 1/16; the N=500 stack is the first 500 particles of the N=1000 one.
Both methods get the same images and nothing else; errors are the median over particles of
the rotation error after the physical alignment (global rotation + hand) to the truth.

- ASPIRE: `CLSyncVoting(src, n_theta=360, max_shift=2/64)` (defaults otherwise) in its own
  environment, one process per case, wall time limited by --time-limit (reported as a
  time-out). Its voting step grows about as N^3.
- cryorient, reference-trained: `cryorient run --particles STAR --reference 3kpr_single`
  (a model trained for the stack's measured SNR, training time included and reported; the
  N=500 and N=1000 stacks of one SNR share the cached model).
- cryorient, no reference: `cryorient run --particles STAR` (the ab initio map from the
  particles alone, then the gold-standard refinement loop; docs/architecture.md): what
  the original work's library model set out to do. Its median error is judged after the
  physical alignment with the hand (an ab initio map has none of its own); the row also states
  whether the run reported a resolution (its half maps agreed beyond the start) or said it has
  no signal.

    python bench/compare_aspire.py --aspire-python .aspire/bin/python --methods aspire abinitio
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, run_isolated, write_results

# ASPIRE's rotations have the image axes as columns, as cryorient's R does: compared as they are
# (measured on a clean N=300 stack: 0.27 deg median error after the physical alignment).

ASPIRE = """
import json, sys, time
import mrcfile, numpy as np
from aspire.abinitio import CLSyncVoting
from aspire.source import ArrayImageSource
imgs = mrcfile.read(sys.argv[1]).astype(np.float64)[: int(sys.argv[3])]
src = ArrayImageSource(imgs, pixel_size=float(sys.argv[4]))
t = time.perf_counter()
est = CLSyncVoting(src, n_theta=360, max_shift=float(sys.argv[5]))
est.estimate_rotations()
np.save(sys.argv[2], np.asarray(est.rotations))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

SIMULATE = """
import json, torch
from pathlib import Path
from cryorient.config import DensityConfig, SimulationConfig
from cryorient.simulate.run import run_simulation
out = Path("{out}"); (out / "figures").mkdir(parents=True, exist_ok=True)
m = run_simulation("3kpr_single", DensityConfig(box=64, pixel_size=2.5),
                   SimulationConfig(n_particles={n}, snr={snr}, max_shift_px=2.0), out,
                   torch.Generator().manual_seed(0))
print(json.dumps({{"ok": True}}))
"""

SUBSET = """
import json, starfile
b = starfile.read("{src}", always_dict=True)
b["particles"] = b["particles"].iloc[:{n}]
starfile.write(b, "{dst}")
print(json.dumps({{"ok": True}}))
"""

EVALUATE = """
import json, numpy as np, torch
from cryorient.evaluation import evaluate
from cryorient.particles import read_particles
truth = read_particles("{star}").rotations()[:{n}]
m = evaluate(torch.from_numpy(np.load("{rots}")).float(), truth).metrics()
print(json.dumps({{"median_deg": m["rotation_error"]["median_deg"], "hand": m["hand"]}}))
"""


def run_aspire(python: str, stack: Path, n: int, out: Path, limit: float) -> dict:
    script = out.parent / "aspire_case.py"
    script.write_text(ASPIRE)
    t = time.perf_counter()
    try:
        proc = subprocess.run([python, str(script), str(stack), str(out), str(n), "2.5", str(2 / 64)],
                              capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"status": f"time-out (> {limit:.0f} s)", "wall_s": round(time.perf_counter() - t, 1)}
    if proc.returncode != 0:
        return {"status": "failed: " + proc.stderr.strip().splitlines()[-1][:120]}
    wall = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    return {"status": "ok", "wall_s": round(wall, 1)}


def run_cryorient(star: Path, out: Path, cache: Path, minutes: float) -> dict:
    env = {**os.environ, "CRYORIENT_CACHE": str(cache)}
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "cryorient", "run", "--particles", str(star), "--reference", "3kpr_single",
           "--method", "distances", "--minutes", str(minutes), "--outdir", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"status": "failed: " + proc.stderr.strip()[-200:]}
    s = json.loads((out / "summary.json").read_text())
    train = json.loads((out / "train" / "stage.json").read_text())
    return {"status": "ok", "wall_s": round(wall, 1), "median_deg": round(s["median_error_deg"], 2),
            "train_s": round(train["seconds"], 1) if train.get("origin") == "trained" else "cached"}


def run_abinitio(star: Path, truth_map: Path, out: Path) -> dict:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "cryorient", "run", "--particles", str(star), "--truth-map", str(truth_map),
           "--outdir", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"status": "failed: " + proc.stderr.strip()[-200:]}
    s = json.loads((out / "summary.json").read_text())
    res = s.get("resolution_angstrom")
    return {"status": "ok" if res is not None else "no resolution claimed (no signal)", "wall_s": round(wall, 1),
            "median_deg": round(s["median_error_deg"], 2), "resolution_A": res,
            "vs_truth_A": s.get("resolution_vs_truth_angstrom"), "hand": s.get("hand_vs_truth")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aspire-python", required=True, help="python of an environment with aspire installed")
    ap.add_argument("--n", type=int, nargs="+", default=[500, 1000])
    ap.add_argument("--snr", nargs="+", default=["inf", "1", "0.25", "0.0625"])
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds per ASPIRE case")
    ap.add_argument("--minutes", type=float, default=5.0, help="cryorient training budget (wall time)")
    ap.add_argument("--aspire-max-n-after-timeout", action="store_true",
                    help="keep running ASPIRE at an N that already timed out at another SNR")
    ap.add_argument("--methods", nargs="+", choices=("aspire", "reference", "abinitio"),
                    default=["aspire", "reference", "abinitio"])
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cryorient-bench-aspire-"))
    cache = work / "model-cache"
    rows, timed_out = [], {}
    for snr in args.snr:
        full = work / f"snr{snr}" / "sim"
        if not (full / "particles.star").is_file():
            run_isolated(SIMULATE.format(out=full, n=max(args.n), snr=f"float('{snr}')"))
        for n in sorted(args.n):
            star = full / "particles.star" if n == max(args.n) else full / f"particles_{n}.star"
            if not star.is_file():
                run_isolated(SUBSET.format(src=full / "particles.star", dst=star, n=n))
            label = "clean" if snr == "inf" else f"1/{1 / float(snr):.0f}" if float(snr) < 1 else snr
            base = {"snr": label, "n": n}
            new = []
            if "aspire" in args.methods:
                if n in timed_out and not args.aspire_max_n_after_timeout:
                    a = {"status": f"not run: timed out at SNR {timed_out[n]} (cost does not depend on SNR)"}
                else:
                    rots = full.parent / f"aspire_{n}.npy"
                    a = run_aspire(args.aspire_python, full / "particles.mrcs", n, rots, args.time_limit)
                    if a["status"] == "ok":
                        judged = EVALUATE.format(star=full / "particles.star", n=n, rots=rots)
                        a.update(run_isolated(judged, usage=False))  # the judge's usage is not ASPIRE's
                    elif a["status"].startswith("time-out"):
                        timed_out[n] = label
                new.append({**base, "method": "ASPIRE CLSyncVoting", **a})
            if "reference" in args.methods:
                c = run_cryorient(star, full.parent / f"cryorient_{n}", cache, args.minutes)
                new.append({**base, "method": "cryorient, reference-trained", **c})
            if "abinitio" in args.methods:
                new.append({**base, "method": "cryorient, no reference",
                            **run_abinitio(star, full / "volume.mrc", full.parent / f"abinitio_{n}")})
            for r in new:
                print(json.dumps(r), flush=True)
            rows.extend(new)
    print_table(rows, [("snr", "SNR"), ("n", "N"), ("method", "method"), ("median_deg", "median error °"),
                       ("wall_s", "wall s"), ("train_s", "of which training s"), ("resolution_A", "half maps Å"),
                       ("vs_truth_A", "map vs truth Å"), ("status", "status")],
                "ASPIRE common lines vs cryorient, 3kpr_single, box 64, no CTF")
    write_results("compare_aspire" + ("" if len(args.methods) == 3 else "_" + "_".join(args.methods)),
                  {"rows": rows, "minutes": args.minutes, "time_limit_s": args.time_limit})


if __name__ == "__main__":
    main()
