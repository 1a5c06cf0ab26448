"""cryorient beside RELION 3.1 (Debian's relion): reconstruction, initial model, refinement.

    python bench/vs_relion.py                         # all three tables
    python bench/vs_relion.py --only reconstruction   # or: initial refine

1. Reconstruction: the same stack and true orientations through `cryorient reconstruct` and
   `relion_reconstruct` (with and without --ctf), N=5000 at box 64 and 128: wall time, ratio,
   FSC of each map against the ground truth (0.5 threshold; unmasked, same FSC code for both).
2. Initial model: RELION's ab initio (`relion_refine --denovo_3dref --sgd`, the InitialModel
   job's defaults scaled to the box) against `cryorient run` (reference-trained from scratch,
   training time included), on stacks of 1a28 (a library structure nothing was tuned on),
   N=2000, box 64, SNR 1/16, with and without CTF: wall time and FSC against the truth after
   aligning each map to the truth
   (rotation and hand searched over; the only blind map alignment in cryorient, used here to
   judge RELION's map, which comes without orientations we could align).
3. Handoff: `relion_refine --auto_refine` started from cryorient's angles and initial map
   (low-passed to 30 Å), beside auto-refine started from a featureless sphere: final
   resolution (gold-standard FSC 0.143) and FSC against the truth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, run_isolated, write_results

PEER = "1a28"  # initial model and refinement: a library structure nobody tuned on (96.6 Å across)
PEER_SIZE = 100  # Å, the sphere baseline's diameter
DIAMETER = 130  # Å, RELION's --particle_diameter (mask) in the 160 Å box

SIMULATE = """
import json, torch
from pathlib import Path
from cryorient.config import DensityConfig, SimulationConfig
from cryorient.simulate.run import run_simulation
out = Path("{out}"); (out / "figures").mkdir(parents=True, exist_ok=True)
r = run_simulation("{structure}", DensityConfig(box={box}, pixel_size={px}),
                   SimulationConfig(n_particles={n}, snr={snr}, max_shift_px=4.0, ctf={ctf}), out,
                   torch.Generator().manual_seed(2))
print(json.dumps({{"snr": r.truth.measured_snr}}))
"""

CRYO_RECON = """
import json, time, torch
from cryorient.particles import read_particles
from cryorient.config import ReconstructConfig
from cryorient.reconstruct.run import reconstruct
from cryorient.io import write_mrc
s = read_particles("{star}")
t = time.perf_counter()
r = reconstruct(s, s.rotations(), ReconstructConfig(halves=False, use_ctf={ctf}))
dt = time.perf_counter() - t
write_mrc("{out}", r.volume, s.pixel_size)
print(json.dumps({{"seconds": round(dt, 2)}}))
"""

FSC = """
import json, torch
from cryorient.io import read_mrc
from cryorient.volumes import fsc, resolution_at
from cryorient.density import load_reference
a, px = read_mrc("{map}")
ref = load_reference("{truth}", a.shape[0], px)
c = fsc(torch.from_numpy(a), ref)
print(json.dumps({{"fsc05_A": round(resolution_at(c, a.shape[0], px, 0.5).angstrom, 2)}}))
"""

ALIGNED_FSC = """
import json, torch
from cryorient.density import load_reference
from cryorient.io import read_mrc
from cryorient.volumes import aligned_fsc, resolution_at
a, px = read_mrc("{map}")
vol = torch.from_numpy(a).float()
box = a.shape[0]
ref = load_reference("{truth}", box, px)
curve, al = aligned_fsc(vol, ref, px)  # rotation and both hands searched, then the translation
print(json.dumps({{"fsc05_A": round(resolution_at(curve, box, px, 0.5).angstrom, 2), "mirror": al.mirror,
                  "corr": round(al.score, 3)}}))
"""


def relion(args: list[str], cwd: Path, log: Path, timeout: float | None = None) -> float:
    """Run a RELION program; its wall time. A time limit raises subprocess.TimeoutExpired."""
    t = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run(args, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, check=True, timeout=timeout)
    return time.perf_counter() - t


def reconstruction(tmp: Path) -> list[dict]:
    rows = []
    for box, px in ((64, 2.5), (128, 1.25)):
        out = tmp / f"recon_{box}"
        run_isolated(SIMULATE.format(out=out, structure="3kpr_single", box=box, px=px, n=5000, snr="1/16",
                                         ctf=True))
        for ctf in (False, True):
            cr = run_isolated(CRYO_RECON.format(star=out / "particles.star", ctf=ctf,
                                                out=out / f"cryo_{ctf}.mrc"))
            args = ["relion_reconstruct", "--i", "particles.star", "--o", f"relion_{ctf}.mrc"]
            rt = relion(args + (["--ctf"] if ctf else []), out, out / f"relion_{ctf}.log")
            fc = run_isolated(FSC.format(map=out / f"cryo_{ctf}.mrc", truth=out / "volume.mrc"))
            fr = run_isolated(FSC.format(map=out / f"relion_{ctf}.mrc", truth=out / "volume.mrc"))
            rows.append({"box": box, "ctf": ctf, "cryorient_s": cr["seconds"], "relion_s": round(rt, 1),
                         "speedup": round(rt / cr["seconds"], 1), "cryorient_fsc05_A": fc["fsc05_A"],
                         "relion_fsc05_A": fr["fsc05_A"]})
            print(rows[-1], flush=True)
    return rows


def initial_model(tmp: Path, n: int, minutes: float, ctf_cases: tuple[bool, ...],
                  relion_minutes: float | None) -> list[dict]:
    """RELION's SGD initial model (stopped at ``relion_minutes``: its last written map is
    judged) and ``cryorient run`` on the same stack. A finished RELION run in the work
    directory (``relion_initial.json``) is reused."""
    rows = []
    for ctf in ctf_cases:
        out = tmp / f"init_{ctf}"
        if not (out / "particles.star").is_file():
            run_isolated(SIMULATE.format(out=out, structure=PEER, box=64, px=2.5, n=n, snr="1/16", ctf=ctf))
        marker = out / "relion_initial.json"
        if not marker.is_file():
            shutil.rmtree(out / "InitialModel", ignore_errors=True)
            (out / "InitialModel").mkdir()
            args = ["relion_refine", "--o", "InitialModel/run", "--i", "particles.star", "--sgd",
                    "--denovo_3dref",
                    "--sgd_ini_iter", "50", "--sgd_inbetween_iter", "200", "--sgd_fin_iter", "50",
                    "--sgd_write_iter", "20", "--sgd_ini_resol", "35", "--sgd_fin_resol", "15",
                    "--sgd_ini_subset", "100", "--sgd_fin_subset", "500", "--K", "1", "--sym", "C1",
                    "--flatten_solvent", "--zero_mask", "--dont_combine_weights_via_disc", "--pool", "3",
                    "--pad", "1", "--skip_gridding", "--particle_diameter", str(DIAMETER),
                    "--oversampling", "1", "--healpix_order", "1", "--offset_range", "6",
                    "--offset_step", "2", "--j", "2"]
            t = time.perf_counter()
            try:
                relion(args + (["--ctf"] if ctf else []), out, out / "relion_initial.log",
                       None if relion_minutes is None else relion_minutes * 60)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            rmap = sorted((out / "InitialModel").glob("run_it*_class001.mrc"))[-1]
            marker.write_text(json.dumps({"seconds": round(time.perf_counter() - t), "finished": finished,
                                          "map": str(rmap)}))
        info = json.loads(marker.read_text())
        rt, rmap = info["seconds"], Path(info["map"])
        fr = run_isolated(ALIGNED_FSC.format(map=rmap, truth=out / "volume.mrc"))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cryorient", "run", "--particles", str(out / "particles.star"),
                        "--reference", PEER, "--method", "distances", "--minutes", str(minutes),
                        "--outdir", str(out / "cryorient"),
                        "--truth-map", str(out / "volume.mrc"), "--quiet"], check=True,
                       env={**__import__("os").environ, "CRYORIENT_CACHE": str(tmp / "cache")})
        ct = time.perf_counter() - t
        s = json.loads((out / "cryorient" / "summary.json").read_text())
        iteration = int(rmap.name.split("_it")[1][:3])
        rows.append({"ctf": ctf, "relion_s": round(rt), "relion_fsc05_A": fr["fsc05_A"],
                     "relion_iterations": f"{iteration}/300" + ("" if info["finished"] else " (time limit)"),
                     "relion_hand": "mirrored" if fr["mirror"] else "as truth",
                     "cryorient_s": round(ct), "cryorient_fsc05_A": s.get("resolution_vs_truth_angstrom"),
                     "cryorient_median_deg": round(s.get("median_error_deg", float("nan")), 2),
                     "cryorient_hand": s.get("hand")})
        print(rows[-1], flush=True)
    return rows


def handoff(tmp: Path) -> list[dict]:
    with_ctf = (tmp / "init_True" / "cryorient" / "summary.json").is_file()
    out = tmp / f"init_{with_ctf}"
    rows = []
    for start in ("cryorient", "sphere"):
        work = out / f"refine_{start}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        if start == "cryorient":
            subprocess.run([sys.executable, "-m", "cryorient", "export-relion", "--run",
                            str(out / "cryorient"), "--outdir", str(work / "export"), "--lowpass", "30",
                            "--quiet"], check=True)
            star, ref = "export/particles.star", "export/initial_model.mrc"
            extra = ["--healpix_order", "3", "--auto_local_healpix_order", "3", "--sigma_ang", "5"]
        else:
            subprocess.run([sys.executable, "-m", "cryorient", "export-relion", "--sphere", "--particles",
                            str(out / "particles.star"), "--diameter", str(PEER_SIZE), "--outdir",
                            str(work / "export"), "--quiet"], check=True)
            star, ref = "export/particles.star", "export/initial_model.mrc"
            extra = ["--healpix_order", "2", "--auto_local_healpix_order", "4"]
        args = ["relion_refine", "--o", "run", "--auto_refine", "--split_random_halves", "--i", star,
                "--ref", ref, "--firstiter_cc", "--ini_high", "30", *(["--ctf"] if with_ctf else []),
                "--particle_diameter", str(DIAMETER),
                "--flatten_solvent", "--zero_mask", "--oversampling", "1", "--offset_range", "5",
                "--offset_step", "2", "--sym", "C1", "--low_resol_join_halves", "40", "--norm", "--scale",
                "--pad", "2", "--j", "2", "--dont_combine_weights_via_disc", "--pool", "3", *extra]
        rt = relion(args, work, work / "relion_refine.log")
        model = json.dumps(sorted(str(p) for p in work.glob("run_model.star")))
        final = work / "run_class001.mrc"
        res = _relion_final_resolution(work / "run_model.star")
        ft = run_isolated(ALIGNED_FSC.format(map=final, truth=out / "volume.mrc"))
        rows.append({"start": start, "ctf": with_ctf, "relion_s": round(rt), "gold_standard_A": res,
                     "vs_truth_A": ft["fsc05_A"], "hand": "mirrored" if ft["mirror"] else "as truth",
                     "files": model})
        print(rows[-1], flush=True)
    return rows


def _relion_final_resolution(model_star: Path) -> float | None:
    for line in model_star.read_text().splitlines():
        if line.startswith("_rlnCurrentResolution"):
            return round(float(line.split()[1]), 2)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None, help="reconstruction initial refine")
    ap.add_argument("--n", type=int, default=3000, help="particles for the initial-model comparison")
    ap.add_argument("--minutes", type=float, default=10.0, help="cryorient training budget")
    ap.add_argument("--initial-ctf", choices=("no", "yes", "both"), default="both",
                    help="initial-model stacks without CTF, with, or both (RELION's SGD takes ~40 min each)")
    ap.add_argument("--relion-minutes", type=float, default=None,
                    help="stop RELION's SGD after this long and judge its last map (default: no limit)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if shutil.which("relion_refine") is None:
        raise SystemExit("RELION is not installed (apt-get install relion)")
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="cryorient-bench-relion-"))
    tmp.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True).stdout.strip()
    results = {"relion_version": version.splitlines()[0] if version else "RELION 3.1 (Debian)"}

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    if wanted("reconstruction"):
        results["reconstruction"] = reconstruction(tmp)
        print_table(results["reconstruction"],
                    [("box", "box"), ("ctf", "CTF"), ("cryorient_s", "cryorient s"), ("relion_s", "relion s"),
                     ("speedup", "relion / cryorient"), ("cryorient_fsc05_A", "cryorient vs truth Å"),
                     ("relion_fsc05_A", "relion vs truth Å")],
                    "Reconstruction from true orientations, N=5000 (goal: as accurate, faster)")
    if wanted("initial"):
        cases = {"no": (False,), "yes": (True,), "both": (False, True)}[args.initial_ctf]
        results["initial_model"] = initial_model(tmp, args.n, args.minutes, cases, args.relion_minutes)
        print_table(results["initial_model"],
                    [("ctf", "CTF"), ("relion_s", "RELION SGD s"), ("relion_iterations", "iterations"),
                     ("relion_fsc05_A", "RELION vs truth Å"),
                     ("relion_hand", "RELION hand"), ("cryorient_s", "cryorient run s"),
                     ("cryorient_fsc05_A", "cryorient vs truth Å"),
                     ("cryorient_median_deg", "cryorient median °")],
                    f"Initial model, {PEER}, N={args.n}, box 64, SNR 1/16")
    if wanted("refine"):
        results["handoff"] = handoff(tmp)
        print_table(results["handoff"],
                    [("start", "auto-refine started from"), ("relion_s", "s"),
                     ("gold_standard_A", "gold-standard Å @0.143"), ("vs_truth_A", "vs truth Å @0.5"),
                     ("hand", "hand")], "RELION 3D auto-refine handoff (CTF, N as above)")
    write_results("vs_relion" if args.only is None else "vs_relion_" + "_".join(args.only), results)


if __name__ == "__main__":
    main()
