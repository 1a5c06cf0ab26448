"""The handoff to RELION refinement: what ``relion_refine --auto_refine`` needs to start from
cryorient's result (or, as a baseline, from a featureless sphere)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .errors import CryorientError, require_positive
from .io import read_mrc, write_mrc
from .particles import ANGLE_COLUMNS, read_particles, write_particles
from .volumes import lowpass_to_resolution, soft_sphere_mask

REFINE_TEMPLATE = """# RELION 3.1 3D auto-refine from cryorient's result (run in this directory)
relion_refine --o Refine3D/run --auto_refine --split_random_halves \\
  --i particles.star --ref initial_model.mrc --ini_high {ini_high} --firstiter_cc \\
  {ctf}--particle_diameter {diameter} --flatten_solvent --zero_mask --oversampling 1 \\
  --healpix_order 3 --auto_local_healpix_order 3 --sigma_ang 5 \\
  --offset_range 5 --offset_step 2 --sym {sym} --low_resol_join_halves 40 --norm --scale \\
  --pad 2 --j 2 --dont_combine_weights_via_disc --pool 3
"""


def export_run(run_dir: Path, outdir: Path, lowpass_angstrom: float) -> dict:
    """``particles.star`` (cryorient's angles and origins), ``initial_model.mrc`` (the map,
    low-passed) and ``relion_refine.sh`` from a ``cryorient run`` directory."""
    run_dir = Path(run_dir)
    star, volume = run_dir / "particles.star", run_dir / "map.mrc"
    if not star.is_file() or not volume.is_file():
        raise CryorientError(f"{run_dir} is not a finished cryorient run (no particles.star and map.mrc)")
    require_positive(lowpass_angstrom, "--lowpass")
    stack = read_particles(star)
    data, px = read_mrc(volume, "map")
    vol = lowpass_to_resolution(torch.from_numpy(data), px, lowpass_angstrom)
    write_particles(stack, outdir / "particles.star")
    write_mrc(outdir / "initial_model.mrc", vol, px)  # the same hand as the angles it was made with
    diameter = round(0.9 * stack.box * stack.pixel_size)
    sym = "C1"
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        options = yaml.safe_load(config.read_text()) or {}
        if not options.get("relax_symmetry"):  # a relaxed refinement ends in C1
            sym = str(options.get("symmetry") or "C1")
    script = REFINE_TEMPLATE.format(ini_high=lowpass_angstrom, diameter=diameter, sym=sym,
                                    ctf="--ctf " if stack.ctf() is not None else "")
    (outdir / "relion_refine.sh").write_text(script)
    return {"particles": stack.n, "pixel_size": px, "lowpass_angstrom": lowpass_angstrom}


def export_sphere(particles: Path, outdir: Path, diameter_angstrom: float) -> dict:
    """A soft-edged sphere of ``diameter`` (the particles' mean density) as the initial model, and
    the particles without orientations: the refinement baseline."""
    require_positive(diameter_angstrom, "--diameter")
    stack = read_particles(particles)
    box, px = stack.box, stack.pixel_size
    radius = diameter_angstrom / 2 / px
    if radius >= box / 2:
        raise CryorientError(f"a {diameter_angstrom} Å sphere does not fit a {box}-px box at {px} Å/px")
    sphere = soft_sphere_mask(box, radius - 3.0, 3.0)  # 1 inside, a 3-px cosine edge out to radius
    mean = float(np.mean(stack.images.read(np.arange(min(stack.n, 500))).numpy().sum(axis=(1, 2))))
    sphere = sphere * (mean / float(sphere.sum()) if mean > 0 else 1.0)  # image sum = volume sum
    table = stack.particles.drop(columns=[c for c in ANGLE_COLUMNS if c in stack.particles.columns])
    write_particles(replace(stack, particles=table), outdir / "particles.star")
    write_mrc(outdir / "initial_model.mrc", sphere, px)
    return {"particles": stack.n, "diameter_angstrom": diameter_angstrom}
