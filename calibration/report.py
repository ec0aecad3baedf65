"""The validation report a person reads and CI keeps: ``report.json``, ``report.html`` and PNG plots.

Plots (matplotlib, no display needed): per-class AP of the reference against each candidate
(points below the diagonal lost accuracy), the distribution of logit errors against the
reference, and median latency per model.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from dymn_edge.runtime.errors import CalibrationError
from dymn_edge.runtime.labels import LabelSet

from .validate import GATES, precision_label

__all__ = ["write_report"]


def _plots(result: dict, folder: Path) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise CalibrationError('the validation report needs matplotlib: pip install "dymn-edge[calibrate]"') from e
    files = {}
    ref = result["reference"]
    cands = result["candidates"]
    if ref["labelled"] and ref["labelled"]["per_class_ap"]:
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        classes = sorted(ref["labelled"]["per_class_ap"])
        x = [ref["labelled"]["per_class_ap"][c] for c in classes]
        for c in cands:
            y = [c["labelled"]["per_class_ap"].get(k, np.nan) for k in classes]
            ax.scatter(x, y, s=14, alpha=0.7, label=c["name"])
        ax.plot([0, 1], [0, 1], color="grey", lw=1)
        ax.set(xlabel=f"reference AP ({ref['name']})", ylabel="candidate AP", title="per-class AP", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "per_class_ap.png", dpi=110)
        plt.close(fig)
        files["per_class_ap"] = "per_class_ap.png"
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for c in cands:
        errors = c["_arrays"]["logit_errors"]
        ax.hist(errors, bins=120, histtype="step", log=True, label=f"{c['name']} (max |e| {np.abs(errors).max():.2f})")
    ax.set(xlabel="candidate logit - reference logit", ylabel="count (log)", title="logit errors against the reference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "logit_errors.png", dpi=110)
    plt.close(fig)
    files["logit_errors"] = "logit_errors.png"
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * (1 + len(cands))))
    names = ([f"{ref['name']} (reference, {ref['backend']}, {precision_label(ref)})"]
             + [f"{c['name']} ({c['backend']}, {precision_label(c)})" for c in cands])
    values = [ref["latency_ms"]] + [c["latency_ms"] for c in cands]
    rows = np.arange(len(names))[::-1]  # reference on top; numeric rows, so equal names stay separate bars
    ax.barh(rows, values, color=["#555"] + ["#999"] * len(cands))
    ax.set_yticks(rows, names, fontsize=8)
    for y, v in zip(rows, values):
        ax.text(v, y, f" {v:.2f} ms", va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.25)
    ax.set(xlabel="median latency per window (ms, this machine)", title="latency")
    fig.tight_layout()
    fig.savefig(folder / "latency.png", dpi=110)
    plt.close(fig)
    files["latency"] = "latency.png"
    return files


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _html(result: dict, plots: dict[str, str], labels: LabelSet) -> str:
    ref, cands = result["reference"], result["candidates"]
    rows = []
    metric_names = ["map", "top1_hit", "top5_hit"]
    fidelity_names = ["top1_agreement", "top5_agreement", "top5_identical", "map_vs_reference", "mean_kl", "max_logit_error", "latency_ratio"]
    head = "".join(f"<th>{n}</th>" for n in ["model", "backend", "precision", "latency ms"] + metric_names + fidelity_names + ["gates"])
    def labelled(block, name):
        return _fmt(block[name]) if block else "–"
    rows.append(f"<tr class=ref><td>{html.escape(ref['name'])} (reference)</td><td>{ref['backend']}</td><td>{precision_label(ref)}</td>"
                f"<td>{ref['latency_ms']:.2f}</td>" + "".join(f"<td>{labelled(ref['labelled'], n)}</td>" for n in metric_names)
                + "".join("<td>–</td>" for _ in fidelity_names) + "<td></td></tr>")
    for c in cands:
        verdict = "<span class=ok>pass</span>" if c["passed"] else "<span class=bad>FAIL</span>"
        rows.append(f"<tr><td>{html.escape(c['name'])}</td><td>{c['backend']}</td><td>{precision_label(c)}</td><td>{c['latency_ms']:.2f}</td>"
                    + "".join(f"<td>{labelled(c['labelled'], n)}</td>" for n in metric_names)
                    + "".join(f"<td>{_fmt(c['fidelity'].get(n))}</td>" for n in fidelity_names) + f"<td>{verdict if c['gates'] else ''}</td></tr>")
    gate_rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{g['gate']}</td><td>{g['direction']} {g['threshold']:g}</td><td>{_fmt(g['value'])}</td>"
        f"<td>{'<span class=ok>pass</span>' if g['passed'] else '<span class=bad>FAIL</span>'}</td></tr>"
        for c in cands for g in c["gates"])
    worst = []
    for c in cands:
        if c["labelled"] and ref["labelled"]:
            deltas = sorted(((c["labelled"]["per_class_ap"][k] - v, k) for k, v in ref["labelled"]["per_class_ap"].items()))[:10]
            worst += [f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(labels[k].name)}</td><td>{ref['labelled']['per_class_ap'][k]:.3f}</td>"
                      f"<td>{c['labelled']['per_class_ap'][k]:.3f}</td><td>{d:+.3f}</td></tr>" for d, k in deltas]
    images = "".join(f"<figure><img src='{f}' alt='{n}'><figcaption>{n.replace('_', ' ')}</figcaption></figure>" for n, f in plots.items())
    settings = result["settings"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>dymn-edge validation report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}td:first-child,th:first-child{{text-align:left}}tr.ref{{background:#f3f3f3}}
.ok{{color:#070;font-weight:bold}}.bad{{color:#b00;font-weight:bold}}figure{{display:inline-block;margin:0 1em 1em 0}}img{{max-width:620px}}</style></head><body>
<h1>Validation report</h1>
<p>{settings['windows']} windows of {settings['window_s']:g} s from {settings['files']} files ({html.escape(settings['audio'])}){', labelled' if settings['labelled'] else ', unlabelled'};
{len(settings['skipped'])} file(s) skipped. Latency: median of one window, {settings['threads']} thread(s), this machine ({html.escape(settings['machine']['cpu'])}).</p>
<h2>{'All gates pass' if result['passed'] else 'Gates failed'}</h2>
<table><tr><th>candidate</th><th>gate</th><th>threshold</th><th>value</th><th>result</th></tr>{gate_rows}</table>
<h2>Metrics</h2><table><tr>{head}</tr>{''.join(rows)}</table>
<p>Gate definitions: {'; '.join(f'<b>{k}</b> ({v[0]}): {html.escape(v[1])}' for k, v in GATES.items())}.</p>
{'<h2>Largest per-class AP losses</h2><table><tr><th>candidate</th><th>class</th><th>reference AP</th><th>candidate AP</th><th>delta</th></tr>' + ''.join(worst) + '</table>' if worst else ''}
<h2>Plots</h2>{images}
</body></html>"""


def _jsonable(result: dict) -> dict:
    def clean(obj):
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items() if not str(k).startswith("_")}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, float) and not np.isfinite(obj):
            return None
        return obj
    return clean(result)


def write_report(result: dict, folder: Path, labels: LabelSet) -> Path:
    """Write report.json, report.html and the plots into ``folder``; returns the HTML path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CalibrationError(f"{folder}: cannot create the report folder ({e.strerror})") from e
    plots = _plots(result, folder)
    (folder / "report.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n", encoding="utf-8")
    (folder / "report.html").write_text(_html(result, plots, labels), encoding="utf-8")
    return folder / "report.html"
