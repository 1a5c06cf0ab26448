"""Simulator throughput and memory.

    python bench/simulate.py            # N=5000 at box 64 and 128, N=100,000 at box 128 to disk
    python bench/simulate.py --quick    # skip the 100,000-image case

Each case runs `run_simulation` (projection, shifts, CTF, noise, streaming to the MRCS file,
STAR and figures) in a fresh process; peak memory is that process's maximum RSS. The projector
is also compared with torch-fourier-slice's `project_3d_to_2d` (same 2x padding) on speed and
on accuracy against the independent real-space projector. Targets: >= 2000 images/s at 128 px;
N=100,000 at 128 px with memory < 4 GiB.
"""

from __future__ import annotations

import argparse

from common import print_table, run_isolated, write_results

CASE = """
import json, tempfile, time, torch
from pathlib import Path
from cryorient.density import DensityConfig
from cryorient.simulate.run import run_simulation
from cryorient.simulate.simulator import SimulationConfig
box, n, ctf = {box}, {n}, {ctf}
px = 128.0 / box  # same physical box (128 Å) for both sizes
with tempfile.TemporaryDirectory(dir="{tmp}") as d:
    (Path(d) / "figures").mkdir()
    t = time.perf_counter()
    r = run_simulation("1ake_adk_closed", DensityConfig(box=box, pixel_size=px),
                       SimulationConfig(n_particles=n, snr=1/16, max_shift_px=4, ctf=ctf),
                       Path(d), torch.Generator().manual_seed(0))
    dt = time.perf_counter() - t
    size = (Path(d) / "particles.mrcs").stat().st_size / 2**30
print(json.dumps({{"box": box, "n": n, "ctf": ctf, "seconds": round(dt, 2),
                  "images_per_s": round(n / dt, 1), "stack_gib": round(size, 2),
                  "measured_snr": round(r.truth.measured_snr, 5)}}))
"""

PROJECTORS = """
import json, time, torch
from cryorient import so3
from cryorient.density import DensityConfig, load_volume
from cryorient.imaging.projector import prepare_volume, project, project_real_space
from torch_fourier_slice import project_3d_to_2d
vol = load_volume("1ake_adk_closed", DensityConfig(box=128, pixel_size=1.0, resolution=2.5))
rot = so3.sample_rotations(512, torch.Generator().manual_seed(0))
ref = project_real_space(vol, rot[:8])
def err(img):
    return float(((img[:8] - ref).norm(dim=(-2, -1)) / ref.norm(dim=(-2, -1))).mean())
out = {{}}
t = time.perf_counter(); prep = prepare_volume(vol)
out["cryorient_prepare_s"] = round(time.perf_counter() - t, 3)
t = time.perf_counter(); ours = project(prep, rot)
out["cryorient_images_per_s"] = round(512 / (time.perf_counter() - t), 1)
out["cryorient_rel_err"] = round(err(ours), 5)
t = time.perf_counter(); tfs = torch.cat([project_3d_to_2d(vol, r, pad_factor=2.0) for r in rot.split(128)])
out["tfs_images_per_s"] = round(512 / (time.perf_counter() - t), 1)
out["tfs_rel_err"] = round(err(tfs), 5)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="skip N=100,000")
    ap.add_argument("--tmp", default="/tmp", help="where to write the temporary stacks")
    args = ap.parse_args()
    cases = [(64, 5000, False), (64, 5000, True), (128, 5000, False), (128, 5000, True)]
    if not args.quick:
        cases.append((128, 100_000, True))
    rows = []
    for box, n, ctf in cases:
        r = run_isolated(CASE.format(box=box, n=n, ctf=ctf, tmp=args.tmp))
        rows.append(r)
        print(f"box {box} N {n} ctf {ctf}: {r['images_per_s']} images/s, {r['peak_rss_gib']} GiB",
              flush=True)
    print_table(rows, [("box", "box"), ("n", "N"), ("ctf", "CTF"), ("seconds", "wall s"),
                       ("images_per_s", "images/s"), ("peak_rss_gib", "peak RSS GiB"),
                       ("stack_gib", "stack GiB"), ("measured_snr", "measured SNR")],
                "cryorient simulate (goal: >= 2000 images/s at 128 px; N=100k < 4 GiB)")
    proj = run_isolated(PROJECTORS.format())
    print_table([{"projector": f"cryorient (own Fourier slice, pad 2; +{proj['cryorient_prepare_s']} s "
                               "once per volume)",
                  "images_per_s": proj["cryorient_images_per_s"], "rel_err": proj["cryorient_rel_err"]},
                 {"projector": "torch-fourier-slice project_3d_to_2d (pad 2, batches of 128)",
                  "images_per_s": proj["tfs_images_per_s"], "rel_err": proj["tfs_rel_err"]}],
                [("projector", "projector"), ("images_per_s", "images/s (128 px)"),
                 ("rel_err", "rel. L2 error vs real-space")], "Projector choice (box 128, 512 images)")
    write_results("simulate", {"cases": rows, "projectors": proj})


if __name__ == "__main__":
    main()
