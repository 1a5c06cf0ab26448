"""``report.html``: one self-contained page per run (opens offline: figures are embedded as
PNG data, plotly.js is inlined, no network access).

It shows the parameters, a metrics table (the values of ``summary.json``, each cell tagged
with its key so that tests can compare them), every stage's figures, an interactive 3D view
of the recovered (aligned) vs true viewing directions, the FSC and central slices.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import yaml

from .io import atomic_output
from .particles import read_particles
from .so3 import viewing_direction

SECTIONS = [
    ("Simulation", "simulate", ["montage.png", "viewing_directions.png"]),
    ("Initial map from the particles alone (ab initio)", "abinitio",
     ["correlation_by_iteration.png", "seed_projections.png", "central_slices.png"]),
    ("Gold-standard refinement", "refine",
     ["placement.png", "fsc.png", "resolution_by_round.png", "angular_change.png", "confidence.png", "errors.png",
      "viewing_directions.png", "central_slices.png", "projections.png"]),
    ("Refinement in the truth's frame", "refine/truth_frame", ["fsc.png", "central_slices.png"]),
    ("Distance training", "train", ["loss.png", "pose_error.png", "predicted_vs_true.png", "error_by_distance.png"]),
    ("Orientation recovery", "recover",
     ["loss.png", "errors.png", "viewing_directions.png", "distances.png"]),
    ("Reconstruction", "reconstruct", ["fsc.png", "central_slices.png", "projections.png"]),
    ("Reconstruction in the truth's frame", "reconstruct/truth_frame",
     ["fsc.png", "central_slices.png", "projections.png"]),
]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 4px 10px;
text-align: left; font-size: 14px; } th { background: #f4f4f4; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; } .figs figure { margin: 0; max-width: 520px; }
.figs img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 12px; color: #666; }
.note { color: #555; font-size: 14px; }
.warn { background: #fff4e5; border: 1px solid #f0a040; padding: 0.5em 1em; margin: 1em 0; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def _directions_view(outdir: Path, max_points: int = 1500) -> str:
    """An interactive 3D scatter of viewing directions (plotly, inlined)."""
    aligned = next((p for p in (outdir / "refine" / "orientations_aligned.star",
                                outdir / "recover" / "orientations_aligned.star") if p.is_file()),
                   outdir / "recover" / "orientations_aligned.star")
    truth_star = outdir / "simulate" / "particles.star"
    if not aligned.is_file():
        return '<p class="note">No true orientations: nothing to compare the recovered directions with.</p>'
    import plotly.graph_objects as go

    rec = read_particles(aligned)
    sets = [("recovered (aligned)", viewing_direction(rec.rotations()).numpy())]
    source = truth_star if truth_star.is_file() else None
    if source is not None:
        sets.insert(0, ("true", viewing_direction(read_particles(source).rotations()).numpy()))
    rng = np.random.default_rng(0)
    idx = rng.permutation(rec.n)[:max_points]
    fig = go.Figure()
    for (label, v), color in zip(sets, ("#1f77b4", "#ff7f0e")):
        fig.add_trace(go.Scatter3d(x=v[idx, 0], y=v[idx, 1], z=v[idx, 2], mode="markers", name=label,
                                   marker={"size": 2.5, "color": color, "opacity": 0.7}))
    fig.update_layout(height=520, margin={"l": 0, "r": 0, "t": 30, "b": 0},
                      title="Viewing directions on the unit sphere (drag to rotate)",
                      scene={"aspectmode": "cube"})
    return fig.to_html(full_html=False, include_plotlyjs=True, div_id="directions3d")


def _rounds_table(outdir: Path) -> str:
    """The refinement's rounds (resolution, proposals, pose change, time)."""
    path = outdir / "refine" / "rounds.csv"
    if not path.is_file():
        return ""
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = [("round", "round"), ("resolution_angstrom", "aligned at Å"), ("fsc_resolution_angstrom", "half maps Å"),
            ("size_px", "size px"), ("proposals", "proposals (half 1/2)"), ("search_step_deg", "search step °"),
            ("angular_change_deg", "median pose change °"), ("network_val_median_deg", "network validation °"),
            ("network_consensus_median_deg", "its turns' consensus °"),
            ("seconds", "s")]
    out = ["<h2>Refinement rounds</h2><table id='rounds'><tr>"
           + "".join(f"<th>{html.escape(h)}</th>" for _, h in cols) + "</tr>"]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k, "")
            try:
                v = f"{float(v):.3g}" if v not in ("", None) and not v.startswith("(") else v
            except ValueError:
                pass
            cells.append(f"<td>{html.escape(str(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def write_report(outdir: Path) -> Path:
    """Write ``outdir/report.html`` from the run directory's files."""
    summary = json.loads((outdir / "summary.json").read_text())
    config_path = outdir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cryorient report</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>cryorient run report</h1>",
             f"<p class='note'>{html.escape(str(outdir))}</p>", "<h2>Metrics</h2>", "<table id='metrics'>"]
    for k, v in summary.items():
        parts.append(f"<tr><th>{html.escape(k)}</th><td data-key='{html.escape(k)}'>"
                     f"{html.escape(_value(v))}</td></tr>")
    parts.append("</table>")
    warnings = summary.get("warnings") or []
    if warnings:
        parts.append("<div id='warnings' class='warn'><b>Do not trust this result blindly:</b><ul>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>")
    parts.append(_rounds_table(outdir))
    parts.append("<h2>Viewing directions</h2>")
    parts.append(_directions_view(outdir))
    for title, sub, names in SECTIONS:
        figs = [outdir / sub / "figures" / n for n in names if (outdir / sub / "figures" / n).is_file()]
        if not figs:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2><div class='figs'>")
        for f in figs:
            caption = f"{html.escape(sub)}/{html.escape(f.name)}"
            parts.append(f"<figure>{_img(f)}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Parameters</h2><details><summary>all options of this run (config.yaml)</summary>"
                 "<table id='parameters'>")
    for k, v in config.items():
        parts.append(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_value(v))}</td></tr>")
    parts.append("</table></details></body></html>")
    path = outdir / "report.html"
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts))
    return path
