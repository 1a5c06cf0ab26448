"""Gold-standard refinement from the references users have (issue 16), beside RELION 3.1's
auto-refine on the same stacks from the same low-passed references.

    python bench/refine.py --only 3kpr_single:exact 3kpr_single:moved15 3kpr_single:noise
    python bench/refine.py --only 3kpr_single:exact --relion        # + relion_refine_mpi, same stack
    python bench/refine.py --only --scaling                         # network vs search, N = 2k/20k/100k
    python bench/refine.py --start particles --only 3kpr_single:lowpass60 ...  # round 0 from the ab initio map
    python bench/refine.py --box 32 --only 3kpr_single:exact --relion  # both on the stack binned by 2

Stacks: SNR 1/16, CTF (defocus 1-2.5 µm), shifts up to 4 px, box 64, N=5000 (``--n``).
Structures: 3kpr_single (~100 kDa, 2.5 Å/px), 3kpr chains A,B (~45 kDa, 2.0 Å/px),
1ake_adk_closed (~25 kDa, 1.5 Å/px). References (each low-passed to ``--initial-lowpass`` by the
loop): the exact structure; chains D,E (or the smaller domain) moved by 15 and 30 degrees;
the structure low-passed to 20 and 60 Å (the 60 Å one starts at 60 Å); a chain missing; extra
density (a sphere of 5% of the mass added); and the controls: pure-noise images, and particles
of another protein (1a28) with this reference. Judged by the median pose error after the
physical alignment (the hand must be the reference's), the map (truth-aligned poses) against
the true map at FSC 0.5 beside the true-orientation map, and FSC(map, reference) beyond the
start resolution for the controls. RELION: ``relion_preprocess --norm`` extraction-style
normalisation, then ``relion_refine_mpi --auto_refine --split_random_halves`` (3 MPI ranks,
1 thread each) from the same low-passed reference; its poses judged the same way.

``--start particles``: as ``cryorient run``'s default in C1, round 0 starts from the ab initio
map (made once per stack, its time counted in every case that uses it) put in the reference's
frame and hand. ``--box 32``: the same simulated particles Fourier-cropped to 32 px (twice the
pixel size, shifts the same in Å), references and truth likewise, for both tools; RELION then
starts local searches at 7.5° (``--auto_local_healpix_order 3``; 4 at box 64), or its 3.75°
global search runs an hour per iteration on two cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import starfile

from common import print_table, run_isolated, write_results
from cryorient.config import DEFAULT_HYPOTHESES, RefineConfig

STRUCTURES = {
    "3kpr_single": {"structure": "3kpr_single", "chains": None, "px": 2.5, "moving": ("D", "E"), "missing": "E"},
    "3kpr_AB": {"structure": "3kpr", "chains": ("A", "B"), "px": 2.0, "moving": ("B",), "missing": "B"},
    # the whole entry: two TCR-peptide-MHC complexes (~200 kDa, 198 Å across) related by a
    # 2-fold screw (22 Å along the axis): no point group; for issue 14's third structure
    "3kpr_full": {"structure": "3kpr", "chains": None, "px": 4.0, "moving": None, "missing": None},
    "1ake": {"structure": "1ake_adk_closed", "chains": None, "px": 1.5, "moving": None, "missing": None},
    # exact oligomers of a library chain (3q4oA) by the group's operators, in RELION's frame
    "C2": {"structure": "oligomer:C2", "chains": None, "px": 2.0, "moving": None, "missing": None, "sym": "C2"},
    "C4": {"structure": "oligomer:C4", "chains": None, "px": 2.0, "moving": None, "missing": None, "sym": "C4"},
    "D2": {"structure": "oligomer:D2", "chains": None, "px": 2.0, "moving": None, "missing": None, "sym": "D2"},
    # a homodimer (pseudo-C2, 0.85 Å between its chains) turned into RELION's C2 frame
    "1a28": {"structure": "pseudo:1a28", "chains": None, "px": 2.5, "moving": None, "missing": None, "sym": "C2"},
}

BUILD = """
import json
from cryorient.structure import make_oligomer, pseudo_twofold_frame, read_atoms, resolve_structure, write_structure
from cryorient.symmetry import point_group
kind, arg, out = "{kind}", "{arg}", "{out}"
if kind == "oligomer":
    st = make_oligomer(read_atoms(resolve_structure("3q4oA")), point_group(arg).operators.numpy())
else:
    st, _ = pseudo_twofold_frame(read_atoms(resolve_structure(arg)), ("A", "B"))
write_structure(st, out)
print(json.dumps({{}}))
"""


def structure_path(tmp: Path, name: str) -> str:
    """The structure of a case: a library name, or a built oligomer / symmetry-framed dimer."""
    s = STRUCTURES[name]["structure"]
    if ":" not in s:
        return s
    kind, arg = s.split(":")
    out = tmp / f"{kind}_{arg}.cif"
    if not out.is_file():
        run_isolated(BUILD.format(kind=kind, arg=arg, out=out))
    return str(out)
BOX = 64  # --box 32: both tools on the same particles binned by 2 (Fourier crop), for RELION to finish


def _box_tag() -> str:
    return "" if BOX == 64 else f"_b{BOX}"


REFERENCES = ["exact", "moved15", "moved30", "lowpass20", "lowpass60", "missing", "extra", "noise", "other"]

SIMULATE = """
import json, torch
from pathlib import Path
from cryorient.config import DensityConfig, SimulationConfig
from cryorient.simulate.run import run_simulation
out = Path("{out}"); (out / "figures").mkdir(parents=True, exist_ok=True)
r = run_simulation("{structure}", DensityConfig(box=64, pixel_size={px}, chains={chains}),
                   SimulationConfig(n_particles={n}, snr=1/16, max_shift_px=4.0, ctf=True), out,
                   torch.Generator().manual_seed(11))
if {box} != 64:  # the same particles binned: Fourier-cropped images, twice the pixel size
    import mrcfile
    from cryorient.fourier import fourier_resize, fourier_resize_volume
    from cryorient.io import read_mrc, write_mrc
    from cryorient.particles import read_particles, write_particles
    full = read_particles(out / "particles.star")
    px = full.pixel_size * 64 / {box}
    mrcfile.new(out / "particles.mrcs", fourier_resize(full.images.read(), {box}).numpy(), overwrite=True
                ).voxel_size = px
    optics = full.optics.copy(); optics["rlnImagePixelSize"] = px; optics["rlnImageSize"] = {box}
    binned = read_particles(out / "particles.star")  # same file names, new images
    from dataclasses import replace
    write_particles(replace(binned, optics=optics, pixel_size=px), out / "particles.star")
    vol, _ = read_mrc(out / "volume.mrc")
    write_mrc(out / "volume.mrc", fourier_resize_volume(torch.as_tensor(vol), {box}), px)
print(json.dumps({{"snr": r.truth.measured_snr}}))
"""

MAKE_REFERENCE = """
import json, numpy as np, torch
from pathlib import Path
from cryorient.config import DensityConfig
from cryorient.density import load_volume
from cryorient.io import write_mrc
from cryorient.structure import move_domain, read_atoms, resolve_structure, write_structure
from cryorient.volumes import lowpass_to_resolution
kind, out = "{kind}", Path("{out}")
density = DensityConfig(box=64, pixel_size={px}, chains={chains})
if kind.startswith("moved"):
    st = move_domain(read_atoms(resolve_structure("{structure}"), chains={chains}), {moving}, float(kind[5:]))
    write_structure(st, str(out.with_suffix(".cif"))); vol = load_volume(out.with_suffix(".cif"), density)
elif kind == "missing":
    # the structure without one chain, in the whole structure's frame (density is centred on
    # the centre of mass, which the missing chain moves: computed in a larger box, shifted
    # back by the difference of the two centres and cropped)
    from cryorient.volumes import rotate_volume
    full = read_atoms(resolve_structure("{structure}"), chains={chains})
    keep = tuple(ch.name for ch in full[0] if ch.name != "{missing}")
    part = read_atoms(resolve_structure("{structure}"), chains=keep)
    big = load_volume("{structure}", DensityConfig(box=96, pixel_size={px}, chains=keep))
    moved = (np.asarray(part[0].calculate_center_of_mass().tolist())
             - np.asarray(full[0].calculate_center_of_mass().tolist())) / {px}
    vol = rotate_volume(big, torch.eye(3), shift_px=torch.as_tensor(moved, dtype=torch.float32))[16:80, 16:80, 16:80]
else:
    vol = load_volume("{structure}", density)
    if kind.startswith("lowpass"):
        vol = lowpass_to_resolution(vol, {px}, float(kind[7:]))
    elif kind == "extra":
        c = torch.arange(64, dtype=torch.float32) - 32
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        blob = torch.exp(-((xx - 14) ** 2 + (yy - 4) ** 2 + zz ** 2) / (2 * 3.0 ** 2))
        vol = vol + blob * (0.05 * float(vol.clamp_min(0).sum()) / float(blob.sum()))
if {box} != 64:
    from cryorient.fourier import fourier_resize_volume
    vol = fourier_resize_volume(vol, {box})
write_mrc(out, vol, {px} * 64 / {box})
print(json.dumps({{}}))
"""

# the stack without its pose columns, half sets drawn; with noise: pure-noise images of the
# particles' standard deviation in their place (the truth stays for the judge)
BLIND_STACK = """
from dataclasses import replace
from cryorient.evaluation import truth_of
from cryorient.particles import ImageStack, read_particles
full = read_particles("{star}"); truth = truth_of(full)
blind = full.blind().with_half_sets(torch.Generator().manual_seed(0))
if {noise}:
    g = torch.Generator().manual_seed(7)
    blind = replace(blind, images=ImageStack.from_array(torch.randn(blind.n, blind.box, blind.box, generator=g)
                                                        * float(blind.images.read(slice(0, 500)).std())))
"""

CRYORIENT = """
import json, math, time, torch
from pathlib import Path
from cryorient.config import RefineConfig, ReconstructConfig
from cryorient.density import load_reference
from cryorient.distance.data import imaging_from_stack
from cryorient.distance.proposer import NetworkProposer
from cryorient.evaluation import evaluate, evaluate_poses, modulo_pseudo_symmetry
from cryorient.reconstruct.run import reconstruct
from cryorient.refine.loop import refine
from cryorient.volumes import shell_frequencies
{blind_stack}px = blind.pixel_size
reference = load_reference("{reference}", blind.box, px)
cfg = RefineConfig(initial_lowpass={lowpass}, poses="{poses}", symmetry="{symmetry}", relax_symmetry={relax},
                   converged_deg={converged})
from cryorient.symmetry import nearest_mates, point_group
judge_group = point_group("C1" if cfg.relax_symmetry else cfg.symmetry)
t = time.perf_counter()
start, extra = None, {{}}
if "{start}" == "particles":  # as the pipeline's --start particles: ab initio (once per stack), placed
    from cryorient.abinitio.em import ab_initio
    from cryorient.config import AbInitioConfig
    from cryorient.io import read_mrc, write_mrc
    from cryorient.refine.loop import place_in_reference_frame
    cached = Path("{initial}")
    if not cached.is_file():
        a = ab_initio(blind, AbInitioConfig(), 0)
        write_mrc(cached, a.map, px)
        cached.with_suffix(".json").write_text(json.dumps({{"seconds": round(a.seconds), "agree": a.agree}}))
    extra = json.loads(cached.with_suffix(".json").read_text())
    start, placed = place_in_reference_frame(torch.as_tensor(read_mrc(cached)[0]), reference, px)
    extra = {{"abinitio_seconds": extra["seconds"], "abinitio_seeds_agree": extra["agree"],
              "hand_margin": round(placed.hand_margin, 4)}}
proposer = None
if cfg.poses == "network":
    from cryorient.refine.loop import first_map
    first, lp = first_map(reference, start, px, cfg)
    proposer = NetworkProposer(imaging_from_stack(blind, first, lp), Path("{work}"), hypotheses={hypotheses},
                               symmetry=cfg.symmetry)
per_round = []
def judge(r, rot):
    per_round.append(round(evaluate_poses(nearest_mates(rot, truth.rotations, judge_group), None, truth,
                                          px).median_deg, 2))
result = refine(blind, reference, cfg, proposer, on_round=judge if not {noise} else None, start=start)
seconds = time.perf_counter() - t + extra.get("abinitio_seconds", 0)  # a cached ab initio counts too
truth_map = load_reference("{truth}", blind.box, px)
vs_ref_curve = result.fsc_reference  # FSC(map, reference), masked
vs_ref = vs_ref_curve[shell_frequencies(blind.box, px) > 1.0 / cfg.initial_lowpass]
out = {{"seconds": round(seconds), "rounds": len(result.rounds), "signal": result.signal, **extra,
        "matches_reference": result.matches_reference,
        "final_hand_margin": None if math.isnan(result.hand_margin) else round(result.hand_margin, 4),
        "hand_restarted": result.hand_restarted,
        "half_maps_poses_apart_deg": None if math.isnan(result.cross_half_deg) else round(result.cross_half_deg, 2),
        "cross_check_step_deg": None if math.isnan(result.cross_half_step_deg)
        else round(result.cross_half_step_deg, 2),
        "half_maps_poses_far_share": None if math.isnan(result.cross_half_far_share)
        else round(result.cross_half_far_share, 3),
        "resolution_A": round(result.resolution.angstrom, 2) if result.reportable else None,
        "half_maps_A": round(result.resolution.angstrom, 2),
        "fsc_vs_reference_beyond_start": round(float(vs_ref.max()), 3),
        "fsc_vs_reference_within_start": round(result.reference_agreement, 3),
        "fsc_vs_reference_shells": [round(float(x), 3) for x in vs_ref_curve[1:13]], "per_round_deg": per_round,
        "proposals": result.rounds[-1].proposals,
        "round_table": [{{"aligned_A": round(r.resolution_angstrom, 2),
                         "half_maps_A": round(r.fsc_resolution_angstrom, 2), "size_px": r.size_px,
                         "change_deg": round(r.angular_change_deg, 2),
                         "turned_back": "turned back" in r.proposals,
                         "seconds": round(r.seconds)}} for r in result.rounds]}}
if not {noise}:
    ev = evaluate_poses(nearest_mates(result.rotations, truth.rotations, judge_group), result.origins_angstrom,
                        truth, px)
    one = ReconstructConfig(halves=False, symmetry=judge_group.name)
    aligned = ev.in_truth_frame(blind, result.origins_angstrom)  # the map's global offset removed
    mine = reconstruct(aligned, aligned.rotations(), one, truth_map)
    ideal = reconstruct(blind.with_orientations(truth.rotations, truth.origins_angstrom), truth.rotations, one,
                        truth_map)
    if judge_group.order == 1 and "{pseudo}" != "C1":  # judged in C1: how many sit at a pseudo-mate
        med, share = modulo_pseudo_symmetry(result.rotations, truth.rotations, point_group("{pseudo}"))
        out.update(median_modulo_pseudo_deg=round(med, 2), share_at_pseudo_mate=round(share, 3))
    per_half = []  # each half on its own (its own alignment to the truth): one can hold a mixture
    for idx in blind.half_sets():
        t_idx = torch.as_tensor(idx)
        err = evaluate(nearest_mates(result.rotations[t_idx], truth.rotations[t_idx], judge_group),
                       truth.rotations[t_idx]).errors["rotation"]
        per_half.append({{"median_deg": round(math.degrees(float(err.median())), 2),
                          "share_above_20_deg": round(float((err > math.radians(20)).float().mean()), 3)}})
    out.update(per_half=per_half)
    out.update(median_deg=round(ev.median_deg, 2), hand=ev.metrics()["hand"],
               map_offset_A=round(ev.map_offset_angstrom, 2),
               vs_truth_A=round(mine.resolution_reference.angstrom, 2),
               true_poses_vs_truth_A=round(ideal.resolution_reference.angstrom, 2))
print(json.dumps(out))
"""


def stack_for(tmp: Path, name: str, n: int) -> Path:
    s = STRUCTURES[name]
    sim = tmp / f"{name}_n{n}{_box_tag()}"
    if not (sim / "particles.star").is_file():
        run_isolated(SIMULATE.format(out=sim, structure=structure_path(tmp, name), px=s["px"], chains=s["chains"],
                                     n=n, box=BOX))
    return sim


def reference_for(tmp: Path, name: str, kind: str) -> Path:
    s = STRUCTURES[name]
    out = tmp / f"{name}_ref_{kind}{_box_tag()}.mrc"
    if kind in ("noise", "other"):
        kind = "exact"
        out = tmp / f"{name}_ref_exact{_box_tag()}.mrc"
    if not out.is_file():
        run_isolated(MAKE_REFERENCE.format(kind=kind, out=out, structure=structure_path(tmp, name), px=s["px"],
                                           chains=s["chains"], moving=s["moving"], missing=s["missing"],
                                           box=BOX))
    return out


def pseudo_group(name: str) -> str:
    """The pseudo-symmetry a C1 result is also judged modulo (1a28's two chains), else C1."""
    return STRUCTURES[name].get("sym", "C1") if name == "1a28" else "C1"


def cryorient_case(tmp: Path, name: str, kind: str, n: int, poses: str, symmetry: str = "C1",
                   relax: bool = False, start: str = "reference", hypotheses: int = DEFAULT_HYPOTHESES,
                   converged: float = RefineConfig().converged_deg) -> dict:
    sim = stack_for(tmp, "3kpr_single" if kind == "other" and name != "3kpr_single" else name, n)
    if kind == "other":  # particles of another protein, this reference
        other = tmp / f"other_{name}_n{n}{_box_tag()}"
        if not (other / "particles.star").is_file():
            run_isolated(SIMULATE.format(out=other, structure="1a28", px=STRUCTURES[name]["px"], chains=None, n=n,
                                         box=BOX))
        sim = other
    ref = reference_for(tmp, name, kind)
    lowpass = 60.0 if kind == "lowpass60" else 40.0
    work = tmp / f"work_{name}_{kind}_{poses}_{start}{_box_tag()}"
    shutil.rmtree(work, ignore_errors=True)
    blind = BLIND_STACK.format(star=sim / "particles.star", noise=kind == "noise")
    r = run_isolated(CRYORIENT.format(blind_stack=blind, reference=ref, truth=sim / "volume.mrc",
                                      lowpass=lowpass, poses=poses, work=work, noise=kind == "noise",
                                      symmetry=symmetry, relax=relax, start=start, hypotheses=hypotheses,
                                      converged=converged,
                                      pseudo=pseudo_group(name),
                                      initial=sim / ("abinitio_noise.mrc" if kind == "noise" else "abinitio.mrc")))
    label = (f"cryorient ({poses}" + (f", {symmetry}" if symmetry != "C1" else "") + (", relaxed" if relax else "")
             + (", from the particles" if start == "particles" else "")
             + (f", {hypotheses} hypothes{'is' if hypotheses == 1 else 'es'}" if poses == "network" else "")
             + (f", stop under {converged:g}°" if converged != RefineConfig().converged_deg else ""))
    return {"structure": name, "reference": kind, "method": label + ")", **r}


RELION_JUDGE = """
import json, numpy
from cryorient.config import ReconstructConfig
from cryorient.density import load_reference
from cryorient.evaluation import evaluate_poses, modulo_pseudo_symmetry, truth_of
from cryorient.particles import read_particles
from cryorient.reconstruct.run import reconstruct
from cryorient.symmetry import nearest_mates, point_group
truth = truth_of(read_particles("{sim}/particles.star"))
data = read_particles("{data_star}")
# RELION may write its particles in another order than it read them: put them back by image index
order = [int(name.split("@")[0]) - 1 for name in data.particles["rlnImageName"]]
data = data.subset(numpy.argsort(order))
group = point_group("{symmetry}")
ev = evaluate_poses(nearest_mates(data.rotations(), truth.rotations, group), data.shifts_angstrom(), truth,
                    data.pixel_size)
aligned = ev.in_truth_frame(data, data.shifts_angstrom())  # the map's global offset removed
mine = reconstruct(aligned, aligned.rotations(), ReconstructConfig(halves=False, symmetry="{symmetry}"),
                   load_reference("{sim}/volume.mrc", data.box, data.pixel_size))
res = None
for line in open("{model_star}"):
    if line.startswith("_rlnCurrentResolution"):
        res = float(line.split()[1])
out = {{"median_deg": round(ev.median_deg, 2), "hand": ev.metrics()["hand"],
       "map_offset_A": round(ev.map_offset_angstrom, 2),
       "vs_truth_A": round(mine.resolution_reference.angstrom, 2), "resolution_A": res}}
if group.order == 1 and "{pseudo}" != "C1":  # judged in C1: how many sit at a pseudo-mate
    med, share = modulo_pseudo_symmetry(data.rotations(), truth.rotations, point_group("{pseudo}"))
    out.update(median_modulo_pseudo_deg=round(med, 2), share_at_pseudo_mate=round(share, 3))
print(json.dumps(out))
"""


def judge_relion(sim: Path, data_star: Path, model_star: Path, symmetry: str, pseudo: str = "C1") -> dict:
    """RELION's poses (``run[_itNNN]_data.star``) judged as cryorient's are; its resolution from the
    model STAR (a half's ``run_itNNN_half1_model.star`` for an iteration of an unfinished run)."""
    return run_isolated(RELION_JUDGE.format(sim=sim, data_star=data_star, model_star=model_star, symmetry=symmetry,
                                            pseudo=pseudo), usage=False)


def relion_inputs(sim: Path, work: Path, box: int = 64) -> None:
    """``work/norm.star`` + ``norm.mrcs``: the stack normalised as RELION's Extract job does (zero
    mean, unit variance in the background ring; RELION 3.1's relion_preprocess does it on stacks
    only), in a STAR without the truth's pose columns."""
    subprocess.run(["relion_preprocess", "--operate_on", str(sim / "particles.mrcs"), "--operate_out",
                    str(work / "norm.mrcs"), "--norm", "--bg_radius", str(int(0.9 * box / 2))], cwd=work, check=True,
                   capture_output=True)
    blocks = starfile.read(sim / "particles.star", always_dict=True)
    table = blocks["particles"].drop(columns=[c for c in blocks["particles"].columns
                                              if c.startswith(("rlnAngle", "rlnOrigin"))])
    table["rlnImageName"] = [f"{k + 1:06d}@norm.mrcs" for k in range(len(table))]
    starfile.write({"optics": blocks["optics"], "particles": table}, work / "norm.star")


def relion_case(tmp: Path, name: str, n: int, kind: str = "exact", symmetry: str = "C1",
                minutes: float | None = None, resume: bool = False) -> dict:
    """relion_refine_mpi auto-refine from the same low-passed reference on the same stack; with
    ``minutes``, stopped after that much wall time and judged on its last finished iteration.
    ``resume``: a run that was killed (not finished) goes on from its last written iteration
    (``relion_refine --continue``); its time is the sum of its segments (``segments.json``)."""
    sim = stack_for(tmp, name, n)
    ref = reference_for(tmp, name, kind)
    work = tmp / f"relion_{name}_{kind}{_box_tag()}"
    segments_file = work / "segments.json"
    done_before = sorted((work / "out").glob("run_it*_optimiser.star")) if resume else []
    segments = json.loads(segments_file.read_text()) if done_before and segments_file.is_file() else []
    for seg in segments:  # a killed segment counts up to its last written iteration (the rest is redone)
        if seg["seconds"] is None:
            seg["seconds"] = round(done_before[-1].stat().st_mtime - seg["started_epoch"])
    if not done_before:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        relion_inputs(sim, work, BOX)
        (work / "out").mkdir()
    diameter = int(0.9 * 64 * STRUCTURES[name]["px"])
    t, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    first = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "3", "relion_refine_mpi", "--o", "out/run"]
    if done_before:  # RELION's own continuation: the optimiser STAR keeps every setting
        args = [*first, "--continue", str(done_before[-1].relative_to(work)), "--j", "1",
                "--dont_combine_weights_via_disc", "--pool", "3"]
    else:
        args = [*first, "--auto_refine", "--split_random_halves", "--i", "norm.star", "--ref", str(ref),
                "--ini_high", "60" if kind == "lowpass60" else "40", "--firstiter_cc", "--ctf",
                "--particle_diameter", str(diameter), "--flatten_solvent", "--zero_mask", "--oversampling", "1",
                "--healpix_order", "2", "--auto_local_healpix_order", "4" if BOX == 64 else "3",
                "--offset_range", str(5 * BOX // 64), "--offset_step", str(2 * BOX // 64), "--sym", symmetry,
                "--low_resol_join_halves", "40", "--norm", "--scale", "--pad", "2", "--j", "1",
                "--dont_combine_weights_via_disc", "--pool", "3"]
    stopped = False
    segments.append({"started_epoch": time.time(), "from": done_before[-1].name if done_before else None,
                     "seconds": None})
    segments_file.write_text(json.dumps(segments, indent=1))
    with open(work / "relion.log", "a") as fh:
        proc = subprocess.Popen(args, cwd=work, stdout=fh, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=None if minutes is None else 60 * minutes)
        except subprocess.TimeoutExpired:  # mpirun passes the signal on to its ranks
            proc.terminate()
            proc.wait()
            rc, stopped = 0, True
    if rc != 0:
        raise subprocess.CalledProcessError(rc, args)
    seconds = time.perf_counter() - t
    segments[-1]["seconds"] = round(seconds)
    segments_file.write_text(json.dumps(segments, indent=1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    out = work / "out"
    if stopped:  # the last iteration whose poses and half model were both written
        done = [p for p in sorted(out.glob("run_it*_data.star"))
                if (out / p.name.replace("_data.star", "_half1_model.star")).is_file()]
        data, model = done[-1], out / done[-1].name.replace("_data.star", "_half1_model.star")
    else:
        data, model = out / "run_data.star", out / "run_model.star"
    judged = judge_relion(sim, data, model, symmetry, pseudo_group(name))
    return {"structure": name, "reference": kind,
            "method": f"RELION 3.1 auto-refine ({symmetry})" + (f", stopped at {minutes:g} min" if stopped else ""),
            "seconds": sum(seg["seconds"] for seg in segments), "cpu_seconds_all_ranks": round(cpu_s),
            "stopped_by_budget": stopped, "judged_iteration": data.name,
            **({"segments_s": [seg["seconds"] for seg in segments],
                "cpu_seconds_of": "the last segment"} if len(segments) > 1 else {}), **judged}


SCALING = """
import json, time, torch
from pathlib import Path
from cryorient.config import DensityConfig
from cryorient.density import load_volume
from cryorient.distance.data import imaging_from_stack
from cryorient.distance.predict import embed_stack
from cryorient.distance.train import load_model
from cryorient.distance.proposer import NetworkProposer
from cryorient.evaluation import evaluate_poses, truth_of
from cryorient.fourier import fourier_resize, fourier_resize_volume
from cryorient.imaging.projector import prepare_volume
from cryorient.particles import read_particles
from cryorient.imaging.search import global_search
from cryorient.so3 import grid
from cryorient.volumes import lowpass_to_resolution
full = read_particles("{star}"); truth = truth_of(full); blind = full.blind()
px, res = blind.pixel_size, {res}
vol = lowpass_to_resolution(load_volume("3kpr_single", DensityConfig(box=64, pixel_size=px)), px, res)
# the network: trained once on projections of the map (a fixed cost), then one forward pass per particle
t = time.perf_counter()
prop = NetworkProposer(imaging_from_stack(blind, vol, res), Path("{work}"), train_minutes={minutes})
p = prop.propose(blind.subset(range(64)), vol, res, 0, 0)
train_s = time.perf_counter() - t
out = {{"network_train_s": round(train_s), "network_val_median_deg": round(p.val_median_deg, 2),
        "network_weak": p.weak}}
if not p.weak:
    net = load_model(prop.models[0])
    t = time.perf_counter()
    rot = embed_stack(net, blind).view(-1, 3, 3)
    out["network_predict_s"] = round(time.perf_counter() - t, 1)
    out["network_s"] = round(train_s + out["network_predict_s"])
    out["network_deg"] = round(evaluate_poses(rot, None, truth, px).median_deg, 2)
# the exhaustive search: every particle against every grid pose and shift
s = 2 * int(1.25 * 64 * px / res + 1); pxs = px * 64 / s
g = grid({step})
t = time.perf_counter()
found = global_search(fourier_resize(blind.images.read(), s), blind.ctf(), pxs,
                      prepare_volume(fourier_resize_volume(vol, s)), g, min(0.5, pxs / res), 0.1 * s)
out["search_s"] = round(time.perf_counter() - t)
out["search_grid"] = len(g)
out["search_deg"] = round(evaluate_poses(found.rotations, None, truth, px).median_deg, 2)
print(json.dumps(out))
"""


def scaling(tmp: Path, sizes: list[int], res: float, step: float, minutes: float) -> list[dict]:
    rows = []
    for n in sizes:
        sim = stack_for(tmp, "3kpr_single", n)
        r = run_isolated(SCALING.format(star=sim / "particles.star", res=res, step=step, minutes=minutes,
                                        work=tmp / f"scaling_{n}"))
        rows.append({"n": n, "resolution_A": res, "search_step_deg": step, **r})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=["3kpr_single:exact"], help="STRUCTURE:REFERENCE cases")
    ap.add_argument("--poses", nargs="*", default=["network", "search"])
    ap.add_argument("--hypotheses", type=int, default=DEFAULT_HYPOTHESES,
                    help="pose hypotheses of the networks (--poses network)")
    ap.add_argument("--start", choices=("reference", "particles"), default="reference",
                    help="particles: round 0 from the ab initio map placed in the reference's frame and hand")
    ap.add_argument("--relion", action="store_true", help="run RELION auto-refine on the exact-reference stacks")
    ap.add_argument("--relion-resume", action="store_true",
                    help="go on with a killed RELION run in --workdir from its last written iteration")
    ap.add_argument("--relion-minutes", type=float, default=None,
                    help="stop RELION after this much wall time and judge its last finished iteration")
    ap.add_argument("--scaling", action="store_true", help="network vs global search at 20 Å (use --only with no case)")
    ap.add_argument("--scaling-sizes", nargs="*", type=int, default=[2000, 20000, 100000])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--converged-deg", type=float, default=RefineConfig().converged_deg,
                    help="the loop's stop rule: poses moved less than this (median) in the last round")
    ap.add_argument("--box", type=int, default=64, choices=(32, 64),
                    help="32: the same particles binned by 2 (twice the pixel size), for RELION to finish")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--tag", default=None, help="name of the JSON in bench/results (default: from the cases)")
    ap.add_argument("--judge-relion", nargs=2, metavar=("STACK_DIR", "DATA_STAR"), default=None,
                    help="judge one iteration of a (stopped) RELION run: the stack's directory and its "
                         "run_itNNN_data.star (the half1 model STAR beside it gives the resolution)")
    ap.add_argument("--judge-pseudo", default="C1",
                    help="with --judge-relion: also judge modulo this pseudo-symmetry (1a28: C2)")
    ap.add_argument("--c1-too", action="store_true", help="symmetric structures: also refine them in C1")
    args = ap.parse_args()
    global BOX
    BOX = args.box
    if args.judge_relion:
        sim, data = map(Path, args.judge_relion)
        model = data.with_name(data.name.replace("_data.star", "_half1_model.star"))
        if not model.is_file():  # a finished run: run_data.star beside run_model.star
            model = data.with_name(data.name.replace("_data.star", "_model.star"))
        print(judge_relion(sim, data, model, "C1", args.judge_pseudo))
        return
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="cryorient-bench-refine-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results: dict = {"n": args.n, "cases": []}
    stem = f"refine_n{args.n}{_box_tag()}_" + (args.tag or "_".join(c.replace(":", "-") for c in args.only))
    for case in args.only:
        name, kind = case.split(":")
        sym = STRUCTURES[name].get("sym", "C1")
        for poses in args.poses:
            variants = [(sym, False)] if sym == "C1" or not args.c1_too else [(sym, False), ("C1", False)]
            if name == "1a28":  # pseudo-symmetric: C1, and the symmetric solution relaxed to C1
                variants = [("C1", False), (sym, True)]
            for symmetry, relax in variants:
                results["cases"].append(cryorient_case(tmp, name, kind, args.n, poses, symmetry, relax, args.start,
                                                       args.hypotheses, args.converged_deg))
                print(results["cases"][-1], flush=True)
                write_results(stem, results)  # after each case: a long run stopped keeps what it measured
        if args.relion and kind in ("exact", "moved15", "lowpass60") and shutil.which("relion_refine_mpi"):
            results["cases"].append(relion_case(tmp, name, args.n, kind, "C1" if name == "1a28" else sym,
                                                args.relion_minutes, args.relion_resume))
            print(results["cases"][-1], flush=True)
            write_results(stem, results)
    print_table(results["cases"], [("structure", "structure"), ("reference", "reference"), ("method", "method"),
                                   ("seconds", "s"), ("rounds", "rounds"), ("median_deg", "median °"),
                                   ("hand", "hand"), ("resolution_A", "half maps Å"), ("vs_truth_A", "vs truth Å"),
                                   ("true_poses_vs_truth_A", "true poses vs truth Å"),
                                   ("fsc_vs_reference_beyond_start", "FSC(map, ref) beyond start"),
                                   ("fsc_vs_reference_within_start", "FSC(map, ref) up to start"),
                                   ("matches_reference", "matches ref"),
                                   ("half_maps_poses_apart_deg", "half maps' poses apart °"),
                                   ("half_maps_poses_far_share", "share far apart")],
                f"Refinement, box {BOX}, N={args.n}, SNR 1/16, CTF")
    if args.scaling:
        results["scaling"] = scaling(tmp, args.scaling_sizes, 20.0, 7.5, 2.0)
        print_table(results["scaling"], [("n", "N"), ("network_train_s", "network: train s"),
                                         ("network_predict_s", "predict s"), ("network_deg", "network °"),
                                         ("search_s", "search s"), ("search_deg", "search °")],
                    "Pose proposals at 20 Å: network vs global search (7.5° grid)")
    write_results(stem, results)


if __name__ == "__main__":
    main()
