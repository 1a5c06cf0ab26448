"""Map alignment (``volumes.align_maps``: rotation, hand and shift of one map onto another) —
speed and accuracy.

    python bench/align.py

Each case turns, shifts (up to 2.5 px) and, every other trial, mirrors a library structure's
map, adds a little noise (2% of its standard deviation per voxel), and aligns it back at the
case's resolution, as the pipeline does when it puts a map in a reference's frame and hand, as
the refinement's hand check does (15 Å) and as the ab initio starts are compared (25 Å). It
reports the wall time per alignment, whether the hand was found, the rotation's and the
shift's errors, and the hand margin. Each case runs in a fresh process.
"""

from __future__ import annotations

import argparse

from common import print_table, run_isolated, write_results

CASE = """
import json, math, time, torch
from cryorient.config import DensityConfig
from cryorient.density import load_volume
from cryorient.so3 import rotmat_angle, sample_rotations
from cryorient.conventions import hand_matrix
from cryorient.volumes import align_maps, rotate_volume
vol = load_volume("{structure}", DensityConfig(box={box}, pixel_size={px}))
g = torch.Generator().manual_seed(1)
J = hand_matrix(torch.float32)
rows = []
for trial in range({trials}):
    q = sample_rotations(1, g)[0]
    shift = (torch.rand(3, generator=g) * 2 - 1) * 2.5 / math.sqrt(3)
    mirror = trial % 2 == 1
    moving = rotate_volume(vol, q, mirror, shift)
    moving = moving + 0.02 * float(vol.std()) * torch.randn(moving.shape, generator=g)
    t0 = time.perf_counter()
    al = align_maps(moving, vol, {px}, {resolution})
    dt = time.perf_counter() - t0
    # orientations R of vol are q R (q J R J mirrored) of moving, then al.rotation (J .. J) of those
    turned = J @ q @ J if mirror else q
    err = math.degrees(float(rotmat_angle(al.rotation @ turned))) if al.mirror == mirror else float("nan")
    # the shift that undoes the applied one, in the aligned frame
    back = -(al.rotation @ (J @ shift if mirror else shift)) if al.mirror == mirror else None
    shift_err = float((al.shift_px - back).norm()) if back is not None else float("nan")
    rows.append(dict(seconds=dt, hand=al.mirror == mirror, rotation_deg=err, shift_px=shift_err,
                     margin=al.hand_margin))
med = lambda k: sorted(r[k] for r in rows)[len(rows) // 2]
print(json.dumps(dict(seconds=round(sum(r["seconds"] for r in rows) / len(rows), 2),
                      hands=sum(r["hand"] for r in rows), trials=len(rows),
                      rotation_deg=round(med("rotation_deg"), 3),
                      max_rotation_deg=round(max(r["rotation_deg"] for r in rows), 3),
                      shift_px=round(med("shift_px"), 3), margin=round(min(r["margin"] for r in rows), 4),
                      per_trial=rows)))
"""

# (structure, box, pixel size, resolution): the pipeline's placement at box 64 and 128, the
# hand check at 15 Å, and a small map at 25 Å (the ab initio starts' comparison on 32 px)
CASES = [("3kpr_single", 64, 2.5, 20.0), ("3kpr_single", 64, 2.5, 15.0), ("3kpr_single", 128, 1.25, 20.0),
         ("1ake_adk_closed", 32, 4.0, 25.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = ap.parse_args()
    rows = []
    for structure, box, px, resolution in CASES:
        r = run_isolated(CASE.format(structure=structure, box=box, px=px, resolution=resolution, trials=args.trials))
        r.update(structure=structure, box=box, pixel_size=px, resolution=resolution)
        print(f"{structure} box {box} at {resolution} Å: {r['seconds']} s, hand {r['hands']}/{r['trials']}, "
              f"{r['rotation_deg']}°", flush=True)
        rows.append(r)
    print_table(rows, [("structure", "map"), ("box", "box"), ("resolution", "Å"), ("seconds", "s per alignment"),
                       ("hands", "hands right"), ("rotation_deg", "median rotation error °"),
                       ("max_rotation_deg", "max °"), ("shift_px", "median shift error px"),
                       ("margin", "lowest hand margin"), ("peak_rss_gib", "GiB")],
                "Map alignment (align_maps): turned, shifted, every other one mirrored")
    write_results("align" + (f"_{args.tag}" if args.tag else ""), {"align": rows})


if __name__ == "__main__":
    main()
