"""Reconstruction speed, memory and accuracy.

    python bench/reconstruct.py           # N=5000 at box 64 and 128, N=100,000 at 128 (streamed)
    python bench/reconstruct.py --quick   # without N=100,000
    python bench/reconstruct.py --large-only   # only N=100,000

Each case reconstructs half maps and the full map (`reconstruct`, CTF and shifts applied) from
a simulated stack on disk, in a fresh process (peak RSS is the case's own). The accuracy rows
reconstruct the same stack (box 64, SNR 1/16, CTF) with the true orientations and with
orientations recovered from exact and from perturbed distances (shifts estimated, no ground
truth), and give the FSC against the true map (0.5) and between half maps (0.143).
Goal: < 30 s for N=5000 at 128 px on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import print_table, run_isolated, write_results

SIMULATE = """
import json, torch
from pathlib import Path
from cryorient.config import DensityConfig, SimulationConfig
from cryorient.simulate.run import run_simulation
out = Path("{out}"); (out / "figures").mkdir(parents=True, exist_ok=True)
run_simulation("{structure}", DensityConfig(box={box}, pixel_size={px}),
               SimulationConfig(n_particles={n}, snr=1/16, max_shift_px=4.0, ctf=True), out,
               torch.Generator().manual_seed(0))
print(json.dumps({{"ok": True}}))
"""

TIME = """
import json, time, torch
from cryorient.particles import read_particles
from cryorient.config import ReconstructConfig
from cryorient.density import load_reference
from cryorient.reconstruct.run import reconstruct
stack = read_particles("{star}")
ref = load_reference("{volume}", stack.box, stack.pixel_size)
t = time.perf_counter()
res = reconstruct(stack, stack.rotations(), ReconstructConfig(), ref, generator=torch.Generator().manual_seed(0))
dt = time.perf_counter() - t
print(json.dumps({{"n": stack.n, "box": stack.box, "seconds": round(dt, 2),
                  "images_per_s": round(stack.n / dt, 1),
                  "fsc_halves_A": round(res.resolution_halves.angstrom, 2),
                  "fsc_truth_A": round(res.resolution_reference.angstrom, 2)}}))
"""

ACCURACY = """
import json, time, torch
from cryorient.config import RecoverConfig
from cryorient.evaluation import evaluate_poses, truth_of
from cryorient.orientation.run import run_recovery
from cryorient.orientation.sources import make_source
from cryorient.particles import read_particles
from cryorient.config import ReconstructConfig
from cryorient.density import load_reference
from cryorient.reconstruct.run import reconstruct
full = read_particles("{star}")
truth = truth_of(full)
g = torch.Generator().manual_seed(0)
stack = full.blind().with_half_sets(g)
ref = load_reference("{volume}", stack.box, stack.pixel_size)
rows = []
def score(label, rot, origins, median):
    s = stack.with_orientations(rot, origins)
    r = reconstruct(s, rot, ReconstructConfig(), ref)
    rows.append({{"orientations": label, "median_error_deg": median,
                 "fsc_halves_A": round(r.resolution_halves.angstrom, 2),
                 "fsc_truth_A": round(r.resolution_reference.angstrom, 2)}})
score("true (true shifts)", truth.rotations, truth.origins_angstrom, 0.0)
for spec in ("true", "perturbed:0.4"):
    out = run_recovery(stack, make_source(spec, stack, g, truth), RecoverConfig(pairs_per_particle=128), g)
    ev = evaluate_poses(out.rotations, out.origins_angstrom, truth, stack.pixel_size)
    score(f"recovered from {{spec}} distances (estimated shifts)", ev.evaluation.aligned.float(),
          out.origins_angstrom, round(ev.median_deg, 2))
print(json.dumps({{"rows": rows}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--large-only", action="store_true", help="only N=100,000 at box 128")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cryorient-bench-rec-"))
    cases = [(64, 2.5, 5000), (128, 1.25, 5000)] + ([] if args.quick else [(128, 1.25, 100_000)])
    if args.large_only:
        cases = [(128, 1.25, 100_000)]
    rows = []
    for box, px, n in cases:
        out = tmp / f"b{box}_n{n}"
        run_isolated(SIMULATE.format(out=out, structure="3kpr_single", box=box, px=px, n=n))
        r = run_isolated(TIME.format(star=out / "particles.star", volume=out / "volume.mrc"))
        rows.append(r)
        print(f"box {box} N {n}: {r['seconds']} s, {r['peak_rss_gib']} GiB", flush=True)
    print_table(rows, [("box", "box"), ("n", "N"), ("seconds", "wall s"), ("images_per_s", "images/s"),
                       ("peak_rss_gib", "peak GiB"), ("fsc_halves_A", "half maps Å @0.143"),
                       ("fsc_truth_A", "vs truth Å @0.5")],
                "cryorient reconstruct, true orientations, CTF, 3kpr_single, SNR 1/16 "
                "(goal: < 30 s at 128 px)")
    if args.large_only:
        write_results("reconstruct_large", {"speed": rows})
        return
    acc = run_isolated(ACCURACY.format(star=tmp / "b64_n5000" / "particles.star",
                                       volume=tmp / "b64_n5000" / "volume.mrc"))["rows"]
    print_table(acc, [("orientations", "orientations"), ("median_error_deg", "median error °"),
                      ("fsc_halves_A", "half maps Å @0.143"), ("fsc_truth_A", "vs truth Å @0.5")],
                "Same stack (box 64, SNR 1/16, CTF): true vs recovered orientations")
    write_results("reconstruct", {"speed": rows, "accuracy": acc})


if __name__ == "__main__":
    main()
