"""Training speed and convergence (issue 15): today's code beside the code this bench ships
with, on the same machine in one run.

    python bench/train_speed.py                      # everything (about 2 h on 2 cores)
    python bench/train_speed.py --only demo          # or: inputs proteins finetune augment seed symmetric
    python bench/train_speed.py --only proteins --structures 3kpr 1ake_adk_closed --ctf yes

Cases (box 64, SNR 1/16, shifts up to 4 px):
- demo: the demo's setting (3kpr_single, 2.5 Å/px, CTF); the new training for ``--demo-minutes``
  and the previous commit's (``--old-commit``, run from a git worktree) for the same wall time:
  validation MAE (rad), median pose error, epochs, peak memory;
- inputs: the demo's setting trained for ``--demo-minutes`` with the network's input at each of
  ``--input-sizes`` px (the default 20 since 2026-12-03, 32 before): validation MAE and epochs;
- proteins: a medium protein (3kpr chains A, B: HLA heavy chain + beta-2 microglobulin, ~45 kDa)
  and two small ones (1ake_adk_closed, 3q4oA), 1.5 Å/px, N=2000, with and without CTF, the
  exact structure as reference, the default budget: the network's pose error, after a local
  search about each network pose against the reference, and an exhaustive projection-matching
  search against the same reference at the network's input sampling (20 px since 2026-12-03,
  32 px before; 5° grid) beside it;
- finetune: a model trained on 3kpr_single fine-tuned to the structure low-passed to 15 Å, and
  to a copy with chains D, E moved by 10°: seconds until its validation MAE is back at the
  trained model's (on the same seed's validation draw), with 0 and 2 encoder stages frozen
  (``--finetune-frozen``), for each of ``--finetune-seeds``; ``--finetune-scratch`` adds a model
  trained from scratch on each changed reference for the start model's 5 minutes (how low that
  reference's validation MAE gets);
- augment: the reference perturbed while training (deformation, low-pass, blobs) or not, 3
  minutes each on the demo setting, the network's poses on the exact particles and on particles
  whose chains D, E moved by 15 deg; and 1ake_adk_closed (1.5 A/px, CTF) with and without;
- seed: the original work's configuration (its encoder, cosine head, pairs objective) on its
  5j0n map, clean and sigma^2 = 16, trained with the same speed-ups for ``--seed-minutes``,
  recovered from its distances: median error beside the original's 11.4 / 14.6 deg. With
  ``--workdir`` a killed run resumes where it stopped (long budgets span several sittings);
  ``--seed-cases`` picks the cases.
- symmetric: a C4 ring (3q4oA x 4, 2 Å/px, CTF, N=2000) trained for ``--symmetric-minutes`` with the pose
  loss in C1 or modulo C4 (the nearest symmetry mate), one or four hypotheses: the network's pose
  error modulo C4.
The new code trains on ``--device`` (cpu, or cuda where there is a GPU). Writes
bench/results/train_speed*.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import print_table, run_isolated, write_results
from cryorient.config import DEFAULT_HYPOTHESES
from refine import structure_path

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "e4edf8d"  # the last commit before this bench's training changes

SIMULATE = """
import json, torch
from pathlib import Path
from cryorient.config import DensityConfig, SimulationConfig
from cryorient.simulate.run import run_simulation
out = Path("{out}"); (out / "figures").mkdir(parents=True, exist_ok=True)
r = run_simulation("{structure}", DensityConfig(box=64, pixel_size={px}, chains={chains}, resolution={resolution}),
                   SimulationConfig(n_particles={n}, snr={snr}, noise_variance={noise}, max_shift_px=4.0, ctf={ctf}),
                   out, torch.Generator().manual_seed(3))
print(json.dumps({{"snr": r.truth.measured_snr}}))
"""


def simulate(*, resolution: float | None = None, **fields) -> str:
    """SIMULATE's code; the map rendered at ``resolution`` Å (DensityConfig's default if None)."""
    return SIMULATE.format(resolution=resolution, **fields)


NEW_TRAIN = """
import json, time, torch
from pathlib import Path
from cryorient.config import AugmentationConfig, DensityConfig, ModelConfig, TrainConfig
from cryorient.density import load_volume
from cryorient.distance.data import imaging_from_stack
from cryorient.distance.preprocess import default_input
from cryorient.distance.train import train_on_reference
from cryorient.particles import read_particles
stack = read_particles("{star}").blind()
density = DensityConfig(box=64, pixel_size=stack.pixel_size, chains={chains})
volume = load_volume("{reference}", density)
if {lowpass}:  # the reference low-passed (Å)
    from cryorient.volumes import lowpass_to_resolution
    volume = lowpass_to_resolution(volume, stack.pixel_size, {lowpass})
imaging = imaging_from_stack(stack, volume, density.resolved_resolution())
size, px = default_input(64, stack.pixel_size, {input_size})
model = ModelConfig(input_size=size, input_pixel_size=px, phase_flip=stack.ctf() is not None, **{model})
cfg = TrainConfig(minutes={minutes}, model=model, **{train})
out = Path("{out}"); (out / "figures").mkdir(parents=True, exist_ok=True)
t = time.perf_counter()
r = train_on_reference(volume, imaging, cfg, out, init={init}, resume={resume}, seed={seed},
                       device=torch.device("{device}"))
print(json.dumps({{"seconds": round(time.perf_counter() - t, 1), "epochs": r.epochs, "stopped_by": r.stopped_by,
                  "val_mae": r.final["val_mae"], "val_median_deg": r.final["val_median_deg"],
                  "history": [(h["epoch"], h["val_mae"]) for h in r.history],
                  "elapsed": [sum(x["seconds"] for x in r.history[:k + 1]) for k in range(len(r.history))]}}))
"""


def new_train(*, device: str, init: str | None = None, resume: bool = False, lowpass: float | None = None,
              seed: int = 0, input_size: int | None = None, **fields) -> str:
    """NEW_TRAIN's code: from scratch unless ``init`` (a quoted model path), continuing its
    checkpoint with ``resume``, on the reference low-passed to ``lowpass`` Å if given, on
    ``device`` (cpu, cuda), the network's input at most ``input_size`` px (None: the default)."""
    return NEW_TRAIN.format(init=init, resume=resume, lowpass=lowpass, seed=seed, device=device,
                            input_size=input_size or "ModelConfig().input_size", **fields)


POSES = """
import json, math, torch
from cryorient.config import DensityConfig
from cryorient.density import load_volume
from cryorient.distance.predict import hypotheses_stack
from cryorient.distance.train import load_model
from cryorient.evaluation import evaluate, truth_of
from cryorient.fourier import fourier_resize, fourier_resize_volume
from cryorient.imaging.projector import prepare_volume
from cryorient.particles import read_particles
from cryorient.imaging.search import SearchResult, global_search, local_grid, local_search
from cryorient import so3
full = read_particles("{star}"); truth = truth_of(full); stack = full.blind()
volume = load_volume("{reference}", DensityConfig(box=64, pixel_size=stack.pixel_size, chains={chains}))
def med(r):
    return round(math.degrees(float(evaluate(r, truth.rotations).errors["rotation"].median())), 2)
model = load_model("{model}")
one_reading = hypotheses_stack(model, stack, turns=1)  # (N, 1 + K, 3, 3): their consensus, then best-scored first
net = one_reading[:, 1]
# the candidates: the consensus of the image's {turns} readings (it and its quarter turns, turned back),
# then their K hypotheses each, the most probable first
hyp = hypotheses_stack(model, stack, turns={turns})  # (N, 1 + turns K, 3, 3)
s = model.config.input_size; px = stack.pixel_size * 64 / s  # the network's input sampling
raw = stack.images.read()
images = fourier_resize(raw, s)
prepared = prepare_volume(fourier_resize_volume(volume, s))
rows = torch.arange(stack.n)
def best_of(runs):  # per particle, the best-scoring of several searches
    b = torch.stack([c.scores for c in runs]).argmax(0)  # the first of equal scores
    return SearchResult(*(torch.stack([getattr(c, f) for c in runs])[b, rows]
                          for f in ("rotations", "shifts_px", "scores", "confidence")))
# no search: of the candidates, the one that scores best against the reference (shifts searched)
one = best_of([local_search(images, stack.ctf(), px, prepared, hyp[:, k].contiguous(), torch.eye(3)[None],
                            cutoff=0.5, max_shift_px=3.0) for k in range(hyp.shape[1])])
scored = one.rotations
# the local refinement: a search of the {radius} deg about each candidate on a 10 deg lattice at the
# network's input sampling, the best-scoring kept, then of the 7.5 deg about it on a 2.5 deg lattice,
# then of the 5 deg about that (1.25 deg) at the stack's sampling. The exhaustive search (5 deg grid
# at the same input sampling) gets the same last stage, and "better" keeps per particle whichever of
# the two scores higher at the input sampling (truth-blind, as the refinement loop's candidates compete).
wide = best_of([local_search(images, stack.ctf(), px, prepared, hyp[:, k].contiguous(), local_grid({radius}, 10.0),
                             cutoff=0.5, max_shift_px=3.0) for k in range(hyp.shape[1])])
coarse = local_search(images, stack.ctf(), px, prepared, wide.rotations, local_grid(7.5, 2.5), cutoff=0.5,
                      max_shift_px=1.5, origins_px=-wide.shifts_px)
# the nearest candidate to the truth, all under the one reading's best-scored hypothesis's alignment
al = evaluate(net, truth.rotations).alignment
nearest = torch.stack([so3.rotmat_distance(al.apply(hyp[:, k].contiguous()), truth.rotations)
                       for k in range(hyp.shape[1])]).min(0).values
found = global_search(images, stack.ctf(), px, prepared, so3.grid(5.0), cutoff=0.5, max_shift_px=3.0)
full_prepared = prepare_volume(volume)
def fine(start):
    return local_search(raw, stack.ctf(), stack.pixel_size, full_prepared, start.rotations, local_grid(5.0, 1.25),
                        cutoff=0.5, max_shift_px=1.5, origins_px=-(64 / s) * start.shifts_px).rotations
net_fine, search_fine = fine(coarse), fine(found)
take = coarse.scores >= found.scores
better = torch.where(take[:, None, None], net_fine, search_fine)
print(json.dumps({{"network_deg": med(net), "network_turned_deg": med(hyp[:, 1]),
                  "network_consensus_deg": med(hyp[:, 0]), "network_refined_deg": med(net_fine),
                  "hypotheses": one_reading.shape[1] - 1, "candidates": hyp.shape[1],
                  "nearest_hypothesis_deg": round(math.degrees(float(nearest.median())), 2),
                  "scored_hypothesis_deg": med(scored),
                  "search_deg": med(found.rotations), "search_refined_deg": med(search_fine),
                  "better_deg": med(better), "better_network_share": round(float(take.float().mean()), 3),
                  "random_deg": med(so3.sample_rotations(stack.n, torch.Generator().manual_seed(0)))}}))
"""


def old_train(tmp: Path, star: Path, minutes: float) -> dict:
    """The previous commit's ``cryorient train`` for about ``minutes`` (its epochs are fixed: we
    give it the number it does in that time, measured from its first epoch)."""
    tree = tmp / "old"
    if not tree.exists():  # (run from a copy that is not a git checkout: make this worktree first)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), OLD_COMMIT], check=True,
                       capture_output=True)
    env = {**__import__("os").environ, "PYTHONPATH": str(tree / "src")}
    out = tmp / "old_train"
    shutil.rmtree(out, ignore_errors=True)
    probe = subprocess.run([sys.executable, "-m", "cryorient", "train", "--reference", "3kpr_single", "--particles",
                            str(star), "--epochs", "1", "--outdir", str(out), "--quiet"], env=env, check=True,
                           capture_output=True, text=True)
    del probe
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
    epochs = max(1, int(minutes * 60 // first))
    shutil.rmtree(out)
    code = (
        "import json, resource, subprocess, sys, time\n"
        f"t = time.perf_counter()\n"
        f"subprocess.run([sys.executable, '-m', 'cryorient', 'train', '--reference', '3kpr_single', '--particles', "
        f"'{star}', '--epochs', '{epochs}', '--outdir', '{out}', '--quiet'], check=True)\n"
        f"rows = [json.loads(x) for x in open('{out}/metrics.jsonl')]\n"
        "print(json.dumps({'seconds': round(time.perf_counter() - t, 1), 'epochs': len(rows), "
        "'val_mae': rows[-1]['val_mae'], 'history': [(r['epoch'], r['val_mae']) for r in rows]}))\n")
    r = run_isolated(code.replace("import json, resource", "import os; os.environ['PYTHONPATH'] = "
                                  f"'{tree / 'src'}'\nimport json, resource"))
    r["peak_rss_gib"] = None  # the child's child is the trainer; its memory is not measured here
    return r


def demo(tmp: Path, minutes: float, device: str, hypotheses: int = DEFAULT_HYPOTHESES) -> list[dict]:
    sim = demo_stack(tmp, fresh=True).parent
    rows = []
    new = run_isolated(new_train(star=sim / "particles.star", reference="3kpr_single", chains=None,
                                 model={"hypotheses": hypotheses},
                                 minutes=minutes, train={}, out=tmp / "demo_new", device=device))
    kept = ("seconds", "epochs", "val_mae", "val_median_deg", "peak_rss_gib")
    rows.append({"code": "this commit", "hypotheses": hypotheses, **{k: new[k] for k in kept}})
    reached = [t for t, (_, mae) in zip(new["elapsed"], new["history"]) if mae <= 0.21]
    rows[-1]["minutes_to_0.21"] = round(reached[0] / 60, 1) if reached else None
    old = old_train(tmp, sim / "particles.star", minutes)
    rows.append({"code": f"previous ({OLD_COMMIT})", "seconds": old["seconds"], "epochs": old["epochs"],
                 "val_mae": old["val_mae"], "val_median_deg": None, "peak_rss_gib": None, "minutes_to_0.21": None})
    for r in rows:
        print(r, flush=True)
    return rows


PROTEINS = [("medium", "3kpr", "('A', 'B')"), ("small", "1ake_adk_closed", "None"), ("small", "3q4oA", "None")]


def trained_before(train: Path) -> dict:
    """A training run's figures from its metrics.jsonl (``--trained``: the model is evaluated again)."""
    rows = [json.loads(x) for x in (train / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": sum(r["seconds"] for r in rows), "epochs": rows[-1]["epoch"],
            "val_median_deg": rows[-1]["val_median_deg"]}


def proteins(tmp: Path, minutes: float, structures: list[str] | None, ctfs: tuple[bool, ...], device: str,
             radius: float = 30.0, hypotheses: int = DEFAULT_HYPOTHESES, turns: int = 4,
             trained: Path | None = None) -> list[dict]:
    rows = []
    for size, structure, chains in PROTEINS:
        if structures and structure not in structures:
            continue
        for ctf in ctfs:
            name = f"{structure}_{'ctf' if ctf else 'noctf'}"
            if trained is not None:  # the stack and model of an earlier run of this bench
                sim = trained / name
                tr = trained_before(sim / "train")
            else:
                sim = tmp / name
                run_isolated(simulate(out=sim, structure=structure, px=1.5, chains=chains, n=2000,
                                      snr="1/16", noise=None, ctf=ctf))
                tr = run_isolated(new_train(star=sim / "particles.star", reference=structure, chains=chains,
                                            model={"hypotheses": hypotheses}, minutes=minutes, train={},
                                            out=sim / "train", device=device))
            poses = run_isolated(POSES.format(star=sim / "particles.star", reference=structure, chains=chains,
                                              radius=radius, turns=turns, model=sim / "train" / "model.pt"))
            rows.append({"protein": f"{structure} ({size})", "ctf": ctf, "train_min": round(tr["seconds"] / 60, 1),
                         "epochs": tr["epochs"], "val_median_deg": round(tr["val_median_deg"], 1),
                         "local_radius_deg": radius, "trained_in": None if trained is None else str(sim), **poses})
            print(rows[-1], flush=True)
    return rows


SYMMETRIC_POSES = """
import json, math, torch
from cryorient.distance.predict import hypotheses_stack
from cryorient.distance.train import load_model
from cryorient.evaluation import truth_of
from cryorient.particles import read_particles
from cryorient.symmetry import point_group, symmetric_distance
full = read_particles("{star}"); truth = truth_of(full)
group = point_group("{group}")
# (N, K, 3, 3), best-scored first (after the consensus)
hyp = hypotheses_stack(load_model("{model}"), full.blind(), turns=1, group=group)[:, 1:]
best = symmetric_distance(hyp[:, 0], truth.rotations, group)
nearest = symmetric_distance(hyp, truth.rotations[:, None], group).min(1).values
def med(d):
    return round(math.degrees(float(d.median())), 2)
print(json.dumps({{"network_deg": med(best), "within_15deg": round(float((best < math.radians(15)).float().mean()), 3),
                  "nearest_hypothesis_deg": med(nearest)}}))
"""


def symmetric(tmp: Path, minutes: float, device: str, group: str = "C4") -> list[dict]:
    """Training on a symmetric particle: the pose loss in C1 (one hypothesis: it regresses between
    the symmetry mates; four: winner-takes-all spreads the hypotheses over them) or modulo the group
    (the nearest mate is the target), judged modulo the group on the stack's particles."""
    structure = structure_path(tmp, group)  # built as bench/refine.py builds its oligomers
    sim = tmp / f"{group}_ctf"
    if not (sim / "particles.star").is_file():
        run_isolated(simulate(out=sim, structure=structure, px=2.0, chains=None, n=2000, snr="1/16",
                              noise=None, ctf=True))
    rows = []
    for loss_group, k in (("C1", 1), ("C1", 4), (group, 1), (group, 4)):
        out = sim / f"train_{loss_group}_k{k}"
        tr = run_isolated(new_train(star=sim / "particles.star", reference=structure, chains=None,
                                    model={"hypotheses": k}, minutes=minutes,
                                    train={"symmetry": loss_group}, out=out, device=device))
        poses = run_isolated(SYMMETRIC_POSES.format(star=sim / "particles.star", model=out / "model.pt", group=group))
        rows.append({"particle": f"{group} oligomer of 3q4oA", "pose_loss": loss_group, "hypotheses": k,
                     "train_min": round(tr["seconds"] / 60, 1), "epochs": tr["epochs"], **poses})
        print(rows[-1], flush=True)
    return rows


def moved_domain(tmp: Path, degrees: float) -> Path:
    """3kpr_single with its T-cell receptor (chains D, E) rotated by ``degrees`` about its hinge."""
    moved = tmp / f"moved{degrees:g}.cif"
    run_isolated(f"""
import json
from cryorient.structure import move_domain, read_atoms, resolve_structure, write_structure
write_structure(move_domain(read_atoms(resolve_structure("3kpr_single")), ("D", "E"), {degrees}), "{moved}")
print(json.dumps({{}}))
""")
    return moved


def demo_stack(tmp: Path, fresh: bool = False) -> Path:
    """The demo setting's stack (simulated once per workdir, or anew with ``fresh``)."""
    sim = tmp / "demo_sim"
    if fresh or not (sim / "particles.star").is_file():
        run_isolated(simulate(out=sim, structure="3kpr_single", px=2.5, chains=None, n=2000, snr="1/16",
                              noise=None, ctf=True))
    return sim / "particles.star"


def inputs(tmp: Path, minutes: float, sizes: list[int], device: str) -> list[dict]:
    """The demo setting trained for ``minutes`` with the network's input at each of ``sizes`` px
    (the whole 160 Å box Fourier-cropped to it): fewer pixels, more epochs in the same time."""
    star = demo_stack(tmp)
    rows = []
    for size in sizes:
        r = run_isolated(new_train(star=star, reference="3kpr_single", chains=None, model={}, minutes=minutes,
                                   train={}, out=tmp / f"input_{size}", device=device, input_size=size))
        reached = [t for t, (_, mae) in zip(r["elapsed"], r["history"]) if mae <= 0.21]
        rows.append({"input_px": size, "input_pixel_size": round(64 * 2.5 / size, 2), "seconds": r["seconds"],
                     "epochs": r["epochs"], "val_mae": round(r["val_mae"], 3),
                     "val_median_deg": round(r["val_median_deg"], 1),
                     "minutes_to_0.21": round(reached[0] / 60, 1) if reached else None})
        print(rows[-1], flush=True)
    return rows


START_MINUTES = 5.0  # the fine-tuning cases' start model's budget

START_MAE = """
import json
from cryorient.config import DensityConfig, TrainConfig
from cryorient.density import load_volume
from cryorient.distance.data import imaging_from_stack
from cryorient.distance.train import evaluate_model, load_model, validation_batch
from cryorient.particles import read_particles
stack = read_particles("{star}").blind()
density = DensityConfig(box=64, pixel_size=stack.pixel_size, chains=None)
volume = load_volume("3kpr_single", density)
net = load_model("{model}")
cfg = TrainConfig(model=net.config)
val = validation_batch(volume, imaging_from_stack(stack, volume, density.resolved_resolution()), cfg, {seed})
print(json.dumps(evaluate_model(net, *val, cfg.objective)))
"""


def finetune(tmp: Path, lrs: list[float | None], changes: list[str], device: str, frozen: list[int],
             seeds: list[int], scratch: bool = False) -> list[dict]:
    """Each change fine-tuned from the 5-minute model for 1 minute, once per learning rate, number
    of frozen stages and seed (the seed draws the fine-tuning's images); with ``scratch`` also a
    model trained from scratch on the changed reference for the same 5 minutes as the start model
    (how low the changed reference's validation MAE gets with the start model's budget)."""
    sim = demo_stack(tmp).parent
    base = tmp / "demo_new" / "model.pt"
    if not base.is_file():
        run_isolated(new_train(star=sim / "particles.star", reference="3kpr_single", chains=None, model={},
                               minutes=START_MINUTES, train={}, out=tmp / "demo_new", device=device))
    # the start model's validation MAE on the structure it was trained on, with each seed's validation
    # batch (the fine-tunings with that seed are judged on the same draw); seed 0's is its training's
    targets = {s: run_isolated(START_MAE.format(star=sim / "particles.star", model=base, seed=s),
                               usage=False)["val_mae"] for s in {0, *seeds}}
    moved = moved_domain(tmp, 10.0)
    rows = []
    cases = {"lowpass15": ("low-passed to 15 Å", "3kpr_single", 15.0), "moved10": ("domain moved 10°", moved, None)}

    def train_on(reference, lowpass, minutes, train, out, init, seed=0) -> dict:
        return run_isolated(new_train(star=sim / "particles.star", reference=reference, chains=None, model={},
                                      minutes=minutes, train=train, out=out, init=init, lowpass=lowpass,
                                      seed=seed, device=device))

    def add_row(name, label, r, target, **extra) -> None:
        back = [t for t, (_, m) in zip(r["elapsed"], r["history"]) if m <= target * 1.02]
        rows.append({"change": name, "lr": label, **extra, "trained_val_mae": round(target, 3),
                     "epochs": len(r["history"]), "first_epoch_val_mae": r["history"][0][1],
                     "final_val_mae": round(r["val_mae"], 3), "seconds_back": round(back[0]) if back else None})
        print(rows[-1], flush=True)

    variants = [(cases[c], lr, f, s) for c in changes for lr in lrs for f in frozen for s in seeds]
    for (name, reference, lowpass), lr, f, s in variants:
        train = {"curriculum_epochs": 1, "frozen_stages": f, **({"lr": lr} if lr is not None else {})}
        out = tmp / f"ft_{len(rows)}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh fine-tuning, not the resumption of an earlier one
        add_row(name, lr or "default", train_on(reference, lowpass, 1.0, train, out, f"'{base}'", s), targets[s],
                frozen_stages=f, seed=s)
    for name, reference, lowpass in (cases[c] for c in changes if scratch):
        add_row(name, f"from scratch, {START_MINUTES:g} min",
                train_on(reference, lowpass, START_MINUTES, {}, tmp / f"scratch_{name.split()[0]}", None), targets[0])
    return rows


def finetune_summary(rows: list[dict]) -> list[dict]:
    """The fine-tuning rows per change, learning rate and frozen stages, over the seeds: how many
    were back at the trained MAE within the minute, the median MAE after it."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "seed" in r:  # not the from-scratch rows
            groups.setdefault((r["change"], r["lr"], r["frozen_stages"]), []).append(r)
    return [{"change": change, "lr": lr, "frozen_stages": frozen, "seeds": len(g),
             "back_within_60s": sum(r["seconds_back"] is not None for r in g),
             "median_final_val_mae": round(float(np.median([r["final_val_mae"] for r in g])), 3),
             "median_seconds_back": (float(np.median([r["seconds_back"] for r in g]))
                                     if all(r["seconds_back"] is not None for r in g) else None)}
            for (change, lr, frozen), g in groups.items()]


NETWORK_POSES = """
import json, math
from cryorient.distance.predict import embed_stack
from cryorient.distance.train import load_model
from cryorient.evaluation import evaluate, truth_of
from cryorient.particles import read_particles
net = load_model("{model}")
out = {{}}
for name, star in {stars}:
    full = read_particles(star)
    pred = embed_stack(net, full.blind()).view(-1, 3, 3)
    out[name] = round(math.degrees(float(evaluate(pred, truth_of(full).rotations).errors["rotation"].median())), 1)
print(json.dumps(out))
"""

AUGMENTATIONS = {"none (default)": "AugmentationConfig(enabled=False)",
                 "low-pass only": "AugmentationConfig(enabled=True, blobs=0, deform_angstrom=0.0)",
                 "all (the default before)": "AugmentationConfig(enabled=True)"}


def augment(tmp: Path, device: str, minutes: float = 3.0) -> list[dict]:
    """Training with and without perturbing the reference: the demo setting (exact particles and
    particles with a domain moved by 15 deg) and the small 1ake at 1.5 A/px."""
    moved = moved_domain(tmp, 15.0)
    sims = {}
    for name, structure, px in (("demo", "3kpr_single", 2.5), ("moved15", moved, 2.5),
                                ("1ake", "1ake_adk_closed", 1.5)):
        sims[name] = tmp / f"aug_sim_{name}"
        if not (sims[name] / "particles.star").is_file():
            run_isolated(simulate(out=sims[name], structure=structure, px=px, chains=None, n=2000,
                                  snr="1/16", noise=None, ctf=True))
    rows = []
    cases = [("3kpr_single", "demo", [("exact", "demo"), ("domain moved 15°", "moved15")], a)
             for a in AUGMENTATIONS] + [("1ake_adk_closed", "1ake", [("exact", "1ake")], a)
                                        for a in ("none (default)", "all (the default before)")]
    for k, (reference, sim, evals, aug) in enumerate(cases):
        out = tmp / f"aug_train_{k}"
        tr = run_isolated(new_train(star=sims[sim] / "particles.star", reference=reference, chains=None,
                                    model={}, minutes=minutes, out=out, device=device,
                                    train="{'augmentation': " + AUGMENTATIONS[aug] + "}"))
        stars = [(name, str(sims[s] / "particles.star")) for name, s in evals]
        poses = run_isolated(NETWORK_POSES.format(model=out / "model.pt", stars=stars), usage=False)
        rows.append({"reference": reference, "augmentation": aug, "epochs": tr["epochs"],
                     "val_mae": round(tr["val_mae"], 3), "val_median_deg": round(tr["val_median_deg"], 1),
                     "exact_deg": poses["exact"], "moved_deg": poses.get("domain moved 15°")})
        print(rows[-1], flush=True)
    return rows


SEED_RECOVER = """
import json, math, torch
from cryorient.config import LocalRefineConfig, RecoverConfig
from cryorient.distance.predict import model_source
from cryorient.evaluation import evaluate, truth_of
from cryorient.orientation.run import run_recovery
from cryorient.particles import read_particles
full = read_particles("{star}"); truth = truth_of(full)
stack = full.blind().with_half_sets(torch.Generator().manual_seed(0))
src, nn = model_source(stack, "{model}", 16)
out = run_recovery(stack, src, RecoverConfig(refine=LocalRefineConfig(rounds=0)), torch.Generator().manual_seed(0), nn)
ev = evaluate(out.rotations, truth.rotations)
print(json.dumps({{"median_deg": round(math.degrees(float(ev.errors["rotation"].median())), 2),
                  "o4_median_deg": round(math.degrees(float(ev.o4_errors.median())), 2)}}))
"""


SEED_CASES = (("clean", "0.0", 11.4), ("sigma2=16", "16.0", 14.6))
SEED_INPUT = 32  # px: the seed row's input, as measured (the original's is 116 px)


def seed(tmp: Path, seed_map: Path, minutes: float, cases: list[str], device: str) -> list[dict]:
    """Resumable across runs with the same ``--workdir``: the stack is simulated once, training
    continues from its last checkpoint (the budget counts training time only, summed over the
    runs), and a finished training is not repeated."""
    rows = []
    for name, noise, original in SEED_CASES:
        if name not in cases:
            continue
        sim = tmp / f"seed_{name}"
        if not (sim / "particles.star").is_file():
            run_isolated(simulate(out=sim, structure=seed_map, px=3.6667, chains=None, n=5000,
                                  snr="float('inf')", noise=noise, ctf=False, resolution=7.4))
        trained = sim / "train_result.json"
        if trained.is_file():
            tr = json.loads(trained.read_text())
        else:
            resume = (sim / "train" / "checkpoint.pt").is_file()
            tr = run_isolated(new_train(star=sim / "particles.star", reference=seed_map, chains=None,
                                        model={"encoder": "seed", "head": "cosine"}, minutes=minutes,
                                        train={"objective": "pairs", "loss": "l1", "max_epochs": 1000},
                                        out=sim / "train", resume=resume, device=device, input_size=SEED_INPUT))
            trained.write_text(json.dumps(tr))
        rec = run_isolated(SEED_RECOVER.format(star=sim / "particles.star", model=sim / "train" / "model.pt"))
        rows.append({"case": f"5j0n {name}", "train_min": round(tr["elapsed"][-1] / 60, 1), "epochs": tr["epochs"],
                     "val_mae": round(tr["val_mae"], 3), "history": tr["history"], **rec,
                     "original_deg": original})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=None, help="demo inputs proteins finetune augment seed symmetric")
    ap.add_argument("--symmetric-minutes", type=float, default=3.0, help="budget of each symmetric case")
    ap.add_argument("--demo-minutes", type=float, default=5.0, help="budget of the demo and input-size cases")
    ap.add_argument("--input-sizes", nargs="*", type=int, default=[32, 28, 24, 20, 16],
                    help="network input sizes (px) of the inputs case")
    ap.add_argument("--minutes", type=float, default=10.0, help="budget of the protein cases")
    ap.add_argument("--seed-minutes", type=float, default=15.0,
                    help="seed: training budget of each case; with --workdir an interrupted run resumes")
    ap.add_argument("--seed-cases", nargs="*", choices=[c[0] for c in SEED_CASES],
                    default=[c[0] for c in SEED_CASES])
    ap.add_argument("--seed-map", default=str(REPO.parent / "shared" / "structures" / "5j0n_seed_map.mrc"))
    ap.add_argument("--structures", nargs="*", default=None, help="of the protein cases (default: all three)")
    ap.add_argument("--ctf", choices=("both", "yes", "no"), default="both", help="protein cases: CTF, none, both")
    ap.add_argument("--local-radius", type=float, default=30.0,
                    help="protein cases: degrees about each network pose the local search covers (5 deg lattice)")
    ap.add_argument("--hypotheses", type=int, default=DEFAULT_HYPOTHESES,
                    help="demo and protein cases: pose hypotheses per image (ModelConfig.hypotheses); the local "
                         "search covers the radius about each")
    ap.add_argument("--turns", type=int, default=4,
                    help="protein cases: each image read as it is and turned by quarter turns (hypotheses_stack)")
    ap.add_argument("--trained", default=None,
                    help="protein cases: evaluate the stacks and models of an earlier run's workdir instead of "
                         "simulating and training again")
    ap.add_argument("--finetune-lr", nargs="*", type=float, default=[None],
                    help="finetune: learning rates to try (default: TrainConfig's)")
    ap.add_argument("--finetune-changes", nargs="*", choices=("lowpass15", "moved10"),
                    default=["lowpass15", "moved10"], help="finetune: the reference changes")
    ap.add_argument("--finetune-scratch", action="store_true",
                    help="finetune: also train from scratch on each changed reference for the start model's 5 min")
    ap.add_argument("--finetune-frozen", nargs="*", type=int, default=[0, 2],
                    help="finetune: the encoder stages kept frozen (TrainConfig.frozen_stages; 0 as before it existed)")
    ap.add_argument("--finetune-seeds", nargs="*", type=int, default=[0, 1, 2],
                    help="finetune: seeds of the fine-tuning's images (one minute of training varies with them)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the new code trains (the previous commit's training always runs on the CPU)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="cryorient-bench-train-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results = {}

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    if wanted("demo"):
        results["demo"] = demo(tmp, args.demo_minutes, args.device, args.hypotheses)
        print_table(results["demo"], [("code", "code"), ("seconds", "s"), ("epochs", "epochs"),
                                      ("val_mae", "val MAE rad"), ("val_median_deg", "val median °"),
                                      ("minutes_to_0.21", "min to MAE 0.21"), ("peak_rss_gib", "peak GiB")],
                    f"Demo setting, {args.demo_minutes:g} min of training each")
    if wanted("inputs"):
        results["inputs"] = inputs(tmp, args.demo_minutes, args.input_sizes, args.device)
        print_table(results["inputs"], [("input_px", "input px"), ("input_pixel_size", "Å/px"), ("epochs", "epochs"),
                                        ("val_mae", "val MAE rad"), ("val_median_deg", "val median °"),
                                        ("minutes_to_0.21", "min to MAE 0.21")],
                    f"Demo setting, network input size, {args.demo_minutes:g} min of training each")
    if wanted("proteins"):
        ctfs = {"both": (False, True), "yes": (True,), "no": (False,)}[args.ctf]
        results["proteins"] = proteins(tmp, args.minutes, args.structures, ctfs, args.device, args.local_radius,
                                       args.hypotheses, args.turns, Path(args.trained) if args.trained else None)
        print_table(results["proteins"], [("protein", "protein"), ("ctf", "CTF"), ("train_min", "train min"),
                                          ("val_median_deg", "val median °"), ("network_deg", "network °"),
                                          ("network_turned_deg", "most probable of the turns °"),
                                          ("network_consensus_deg", "the turns' consensus °"),
                                          ("nearest_hypothesis_deg", "nearest candidate °"),
                                          ("scored_hypothesis_deg", "candidate scored best °"),
                                          ("network_refined_deg", "+ local search °"),
                                          ("search_deg", "projection matching °"),
                                          ("search_refined_deg", "+ the same fine stage °"),
                                          ("better_deg", "better by score °"), ("random_deg", "random °")],
                    "Pose error vs truth, box 64 at 1.5 Å/px, SNR 1/16, N=2000")
    if wanted("finetune"):
        results["finetune"] = finetune(tmp, args.finetune_lr, args.finetune_changes, args.device, args.finetune_frozen,
                                       args.finetune_seeds, args.finetune_scratch)
        print_table(results["finetune"], [("change", "reference change"), ("lr", "lr"),
                                          ("frozen_stages", "frozen stages"), ("seed", "seed"), ("epochs", "epochs"),
                                          ("trained_val_mae", "trained MAE"),
                                          ("first_epoch_val_mae", "after 1 epoch"), ("final_val_mae", "after 1 min"),
                                          ("seconds_back", "s back to trained MAE")], "Fine-tuning")
        results["finetune_summary"] = finetune_summary(results["finetune"])
        print_table(results["finetune_summary"], [("change", "reference change"), ("lr", "lr"),
                                                  ("frozen_stages", "frozen stages"), ("seeds", "seeds"),
                                                  ("back_within_60s", "back within 60 s"),
                                                  ("median_final_val_mae", "median MAE after 1 min"),
                                                  ("median_seconds_back", "median s back")],
                    "Fine-tuning over the seeds")
    if wanted("augment"):
        results["augment"] = augment(tmp, args.device)
        print_table(results["augment"], [("reference", "reference"), ("augmentation", "augmentation"),
                                         ("epochs", "epochs"), ("val_mae", "val MAE rad"),
                                         ("val_median_deg", "val median °"), ("exact_deg", "exact particles °"),
                                         ("moved_deg", "domain moved 15° °")],
                    "Perturbing the reference while training, 3 min each (SNR 1/16, CTF, N=2000)")
    if wanted("symmetric"):
        results["symmetric"] = symmetric(tmp, args.symmetric_minutes, args.device)
        print_table(results["symmetric"], [("particle", "particle"), ("pose_loss", "pose loss in"),
                                           ("hypotheses", "hypotheses"), ("train_min", "train min"),
                                           ("epochs", "epochs"), ("network_deg", "network ° (modulo C4)"),
                                           ("within_15deg", "within 15°"),
                                           ("nearest_hypothesis_deg", "nearest hypothesis °")],
                    "Training on a C4 ring (box 64 at 2 Å/px, SNR 1/16, CTF, N=2000), errors modulo C4")
    if wanted("seed"):
        results["seed"] = seed(tmp, Path(args.seed_map).resolve(), args.seed_minutes, args.seed_cases, args.device)
        print_table(results["seed"], [("case", "case"), ("train_min", "train min"), ("epochs", "epochs"),
                                      ("val_mae", "val MAE"), ("median_deg", "median ° (physical)"),
                                      ("o4_median_deg", "O(4) median °"), ("original_deg", "original ° (O(4))")],
                    "The original's configuration with cryorient's speed-ups")
    write_results("train_speed" if args.only is None else "train_speed_" + "_".join(args.only), results)


if __name__ == "__main__":
    main()
