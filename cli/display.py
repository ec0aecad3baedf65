"""Human-readable terminal output (rich tables) for the CLI; JSON output lives in the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dymn_edge.runtime.tagging import Tag, TagResult

__all__ = ["print_benchmark", "print_info", "print_lint", "print_registry", "print_sensitivity", "print_tag_result", "print_validation"]

_BAR_WIDTH = 20


def _console(min_width: int = 0) -> Console:
    """Wide enough for tables when output is piped (rich would otherwise assume 80 columns)."""
    console = Console(soft_wrap=False, highlight=False)
    if not console.is_terminal and console.width < min_width:
        console = Console(soft_wrap=False, highlight=False, width=min_width)
    return console


def _bar(score: float) -> str:
    """Unicode bar in eighths, so scores are visible at a glance."""
    eighths = round(max(0.0, min(1.0, score)) * _BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[rest] if rest else "")


def _tags_inline(tags: list[Tag]) -> str:
    return ", ".join(f"{t.label} {t.score:.2f}" for t in tags)


def print_tag_result(result: TagResult) -> None:
    console = _console()
    note = "" if result.aggregation == "single" else ", max over windows"
    console.print(f"[bold]{result.path}[/bold]  ({result.duration_s:.1f} s, {result.model}{note})", soft_wrap=True)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column("", no_wrap=True)
    for rank, t in enumerate(result.tags, 1):
        table.add_row(str(rank), t.label, f"{t.score:.3f}", _bar(t.score))
    console.print(table)
    if result.timeline:
        timeline = Table(title="timeline", title_justify="left")
        timeline.add_column("start", justify="right")
        timeline.add_column("end", justify="right")
        timeline.add_column("top tags")
        for seg in result.timeline:
            timeline.add_row(f"{seg.start:.2f}", f"{seg.end:.2f}", _tags_inline(seg.tags))
        console.print(timeline)


def print_registry(rows: list[dict[str, Any]], bundles: list[Path]) -> None:
    console = _console()
    console.print("dymn-edge models (EfficientAT AudioSet releases)")
    table = Table()
    for column in ("name", "family", "width", "mAP", "size", "sha256", "installed"):
        table.add_column(column, justify="right" if column in ("width", "mAP", "size") else "left")
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.1f} MB" if r["size_bytes"] else "?"
        sha = r["sha256"][:12] + "…" if r["sha256"] else "not pinned"
        table.add_row(r["name"], r["family"], f"{r['width']:g}", f"{r['audioset_map']:.3f}" if r["audioset_map"] else "", size, sha, r["installed"])
    console.print(table)
    console.print(f"release URL: {rows[0]['url'].rsplit('/', 1)[0]}/<file>   (override: --base-url or DYMN_EDGE_BASE_URL)", soft_wrap=True)
    if bundles:
        console.print("local bundles:")
        for b in bundles:
            console.print(f"  {b}")


def print_info(data: dict[str, Any]) -> None:
    console = _console()
    table = Table(show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in data.items():
        if key == "files":
            value = "\n".join(f"{name}  {e['role']}  {e['bytes']:,} B  sha256 {e['sha256'][:16]}…" for name, e in value.items())
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(str(v) for v in value)
        table.add_row(key, "" if value is None else str(value))
    console.print(table)


def print_benchmark(report: dict[str, Any]) -> None:
    console = _console(min_width=160)
    m, s = report["machine"], report["settings"]
    console.print(f"{m['cpu']}, {m['cores']} cores; batch {s['batch']}, {s['window_s']:g} s window, "
                  f"{s['rounds']} interleaved rounds x {s['runs_per_round']} runs", soft_wrap=True)
    table = Table()
    quantized = any(r.get("speedup_vs_fp32") for r in report["results"])  # the column only when an INT8 row has its FP32 row
    columns = ("model", "backend", "strategy", "thr", "median ms", "p90 ms", "win/s", "RTF", "peak RSS", "x eager", "x naive", "x grouped")
    for col in columns + (("x fp32",) if quantized else ()):
        table.add_column(col, justify="left" if col in ("model", "backend", "strategy") else "right", overflow="fold")
    for r in report["results"]:
        ratio = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        # ONNX Runtime on CPU runs a bundle's model.nchwc.onnx where it has one (runtime/nchwc.py).
        strategy = r["strategy"] + (" (nchwc)" if r.get("model_file") == "model.nchwc.onnx" else "")
        providers = r.get("providers") or ["CPUExecutionProvider"]
        backend = r["backend"] + ("" if providers[0] == "CPUExecutionProvider" else f" ({providers[0].removesuffix('ExecutionProvider')})")
        table.add_row(r["model"], backend, strategy, str(r["threads"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
                      f"{r['windows_per_s']:.0f}", f"{r['real_time_factor']:.5f}", f"{r['peak_rss_mb']:.0f} MB",
                      ratio(r["speedup_vs_eager"]), ratio(r.get("speedup_vs_naive")), ratio(r["speedup_vs_grouped"]),
                      *((ratio(r.get("speedup_vs_fp32")),) if quantized else ()))
    console.print(table)


def print_lint(bundle: Any, reports: list[Any]) -> None:
    """One row per target, then every finding; errors first."""
    console = _console(min_width=120)
    table = Table(title=f"lint {bundle}", title_justify="left")
    for col in ("target", "result", "errors", "warnings", "checked with"):
        table.add_column(col, justify="right" if col in ("errors", "warnings") else "left")
    for r in reports:
        verdict = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        table.add_row(r.target, verdict, str(len(r.errors)), str(len(r.warnings)), r.checked_with)
    console.print(table)
    findings = [(r.target, f) for r in reports for f in r.errors + r.warnings]
    if not findings:
        return
    detail = Table(show_lines=False)
    for col in ("target", "", "check", "where", "finding"):
        detail.add_column(col, overflow="fold")
    for target, f in findings:
        mark = "[red]error[/red]" if f.severity == "error" else "[yellow]warn[/yellow]"
        detail.add_row(target, mark, f.check, f.where, f.message)
    console.print(detail)


def print_validation(result: dict[str, Any]) -> None:
    """Reference and candidates side by side: accuracy with labels, fidelity, latency, gates."""
    from dymn_edge.calibration.validate import precision_label

    console = _console(min_width=150)
    ref = result["reference"]
    table = Table(title=f"validation: {result['settings']['windows']} windows from {result['settings']['files']} files", title_justify="left")
    for col in ("model", "backend", "precision", "ms", "mAP", "top-5 hit", "top-1 agr", "top-5 agr", "mAP vs ref", "KL", "max |dlogit|", "gates"):
        table.add_column(col, justify="left" if col in ("model", "backend", "precision", "gates") else "right")
    def fmt(v, spec=".3f"):
        return "" if v is None else format(v, spec)
    lab = ref["labelled"] or {}
    table.add_row(f"{ref['name']} (ref)", ref["backend"], precision_label(ref), f"{ref['latency_ms']:.2f}", fmt(lab.get("map")), fmt(lab.get("top5_hit")),
                  "", "", "", "", "", "")
    for c in result["candidates"]:
        lab, fid = c["labelled"] or {}, c["fidelity"]
        gates = "" if not c["gates"] else ("[green]pass[/green]" if c["passed"] else "[red]FAIL[/red]")
        table.add_row(c["name"], c["backend"], precision_label(c), f"{c['latency_ms']:.2f}", fmt(lab.get("map")), fmt(lab.get("top5_hit")),
                      fmt(fid["top1_agreement"]), fmt(fid["top5_agreement"]), fmt(fid["map_vs_reference"]), fmt(fid["mean_kl"], ".2e"),
                      fmt(fid["max_logit_error"], ".2f"), gates)
    console.print(table)


def print_sensitivity(result: dict[str, Any]) -> None:
    console = _console(min_width=100)
    table = Table(title=f"INT8 sensitivity of {result['bundle']} ({result['method']}, {result.get('scope', 'all')} scope; {result['calibration_windows']} calibration / "
                        f"{result['validation_windows']} validation windows, {result['validation']}): most harmful first", title_justify="left")
    for col in ("part quantized alone", "nodes", "top-5 agreement", "top-1 agreement", "mean KL", "max |dlogit|"):
        table.add_column(col, justify="left" if col.startswith("part") else "right")
    for r in result["rows"]:
        table.add_row(r["part"], str(r["nodes"]), f"{r['top5_agreement']:.3f}", f"{r['top1_agreement']:.3f}", f"{r['mean_kl']:.2e}", f"{r['max_logit_error']:.2f}")
    console.print(table)
