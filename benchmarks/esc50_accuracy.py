"""ESC-50 tagging accuracy of the embedded mn04_as on both inference paths, and how well they agree.

Why: the numpy frontend + ONNX Runtime path is what ships; eager PyTorch with the torch frontend
is the independent reference. Running the 300 ESC-50 clips in ``<shared>/data/esc50`` through
both shows (a) that the shipped path tags real sounds as well as EfficientAT's own pipeline
(244 of 282 mapped clips with a mapped class in the top 5) and (b) that the two paths give the
same ranking and scores to within float noise.

Usage::

    python benchmarks/esc50_accuracy.py [--shared DIR] [--out results.json] [--csv per_clip.csv]
                                        [--markdown section.md] [--threads N] [--limit N]

Writes a JSON file with every number (default ``benchmarks/results/esc50_accuracy.json``) and a
per-clip CSV next to it (same stem, ``.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dymn_edge.runtime.machine import machine_info
from dymn_edge.loader import load_tagger
from dymn_edge.runtime.audio import load_audio
from dymn_edge.runtime.labels import LabelSet
from dymn_edge.runtime.metrics import mean_average_precision, top_k_hits

__all__ = ["Clip", "EFFICIENTAT_TOP5_HITS", "PATHS", "read_clips", "run", "main"]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
EFFICIENTAT_TOP5_HITS = (244, 282)  # EfficientAT's own inference.py on the same 282 mapped clips
PATHS = {"numpy+onnxruntime": "onnxruntime", "torch": "torch"}  # report name -> load_tagger backend
TOP_K = 5


@dataclass(frozen=True)
class Clip:
    """One ESC-50 clip and its AudioSet targets.

    Attributes:
        path: the FLAC file.
        category: ESC-50 class name.
        audioset_names: mapped AudioSet display names, primary first; empty for unmapped classes.
        audioset_indices: the same as indices into the 527 AudioSet classes.
    """

    path: Path
    category: str
    audioset_names: tuple[str, ...]
    audioset_indices: tuple[int, ...]


def default_shared() -> Path:
    """$DYMN_EDGE_SHARED, else ``../shared`` beside the checkout (as tests/conftest.py does)."""
    return Path(os.environ.get("DYMN_EDGE_SHARED") or REPO.parent / "shared").resolve()


def read_clips(esc50_dir: Path, labels: LabelSet) -> list[Clip]:
    """Read ``labels.csv`` and map each clip's AudioSet names to class indices.

    The indices are cross-checked against ``audioset_mapping.csv`` so a renamed label cannot
    silently drop a target.

    Raises:
        FileNotFoundError: the CSVs or an audio file are missing.
        ValueError: a name is unknown, or the name lookup disagrees with the mapping file.
    """
    labels_csv = esc50_dir / "labels.csv"
    mapping_csv = esc50_dir / "audioset_mapping.csv"
    for p in (labels_csv, mapping_csv):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing; expected the ESC-50 subset described in data/MANIFEST.md")
    with mapping_csv.open(newline="", encoding="utf-8") as f:
        mapping = {
            row["esc50_category"]: tuple(int(i) for i in row["audioset_indices"].split(";") if i.strip())
            for row in csv.DictReader(f)
        }
    clips = []
    with labels_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            names = tuple(n.strip() for n in row["audioset_labels"].split(";") if n.strip())
            try:
                indices = tuple(labels.find(n).index for n in names)
            except KeyError as e:
                raise ValueError(f"{labels_csv}: clip {row['filename']}: {e.args[0]}") from None
            expected = mapping.get(row["esc50_category"])
            if expected is None or expected != indices:
                raise ValueError(
                    f"{labels_csv}: clip {row['filename']} ({row['esc50_category']}): names {names} map to {indices}, "
                    f"but {mapping_csv.name} lists {expected}"
                )
            path = esc50_dir / "audio" / row["filename"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {labels_csv} but missing")
            clips.append(Clip(path, row["esc50_category"], names, indices))
    if not clips:
        raise ValueError(f"{labels_csv}: no clips listed")
    return clips


def top_k(scores: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """(k,) int indices of the best classes, ties broken by lower index (as ``top_tags`` ranks)."""
    return np.argsort(-scores.astype(np.float64), kind="stable")[:k]


def run(clips: list[Clip], *, threads: int | None = None, progress: bool = True) -> dict:
    """Tag every clip on both paths (audio loaded once) and compute accuracy and agreement.

    Returns:
        A JSON-ready dict: "paths" (per path: top-5/top-1 hits, mAP, seconds), "agreement",
        "per_clip" rows, and "clips"/"mapped_clips" counts.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    taggers = {name: load_tagger(None, backend, threads=threads, progress=False) for name, backend in PATHS.items()}
    labels = next(iter(taggers.values())).labels
    n_classes = len(labels)
    scores = {name: np.zeros((len(clips), n_classes), np.float32) for name in taggers}
    seconds = {name: 0.0 for name in taggers}
    columns = [TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[clip]}")]
    # Audio is decoded once and shared; each path then runs over all clips on its own. Alternating
    # the paths clip by clip would time each against the other's idle thread pool (ONNX Runtime's
    # workers spin after a run, PyTorch's OpenMP workers too), which on 2 cores slows both a lot.
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("decode audio", total=len(clips), clip="")
        t0 = time.perf_counter()
        waves = []
        for clip in clips:
            waves.append(load_audio(clip.path))
            bar.update(task, advance=1, clip=clip.path.name)
        load_seconds = time.perf_counter() - t0
        for name, tagger in taggers.items():
            tagger.scores(waves[0])  # warm-up: first-call allocations and kernel selection
            task = bar.add_task(name, total=len(clips), clip="")
            t0 = time.perf_counter()
            for i, (clip, wave) in enumerate(zip(clips, waves)):
                scores[name][i] = tagger.scores(wave)
                bar.update(task, advance=1, clip=clip.path.name)
            seconds[name] = time.perf_counter() - t0

    targets = np.zeros((len(clips), n_classes), bool)
    for i, clip in enumerate(clips):
        targets[i, list(clip.audioset_indices)] = True
    mapped = targets.any(axis=1)
    classes = sorted({c for clip in clips for c in clip.audioset_indices})
    n_mapped = int(mapped.sum())

    paths: dict[str, dict] = {}
    hits5: dict[str, np.ndarray] = {}
    for name, s in scores.items():
        h5 = top_k_hits(s[mapped], targets[mapped], TOP_K)
        h1 = top_k_hits(s[mapped], targets[mapped], 1)
        m_ap, per_class = mean_average_precision(s, targets, classes)
        hits5[name] = np.zeros(len(clips), bool)
        hits5[name][mapped] = h5
        paths[name] = {
            "top5_hits": int(h5.sum()),
            "top5_share": float(h5.mean()),
            "top1_hits": int(h1.sum()),
            "top1_share": float(h1.mean()),
            "mAP": m_ap,
            "per_class_ap": {labels[c].name: float(per_class[c]) for c in classes},
            "inference_s_total": seconds[name],
            "inference_ms_per_clip": 1000 * seconds[name] / len(clips),
        }

    a, b = (scores[name] for name in PATHS)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=1)
    tops = {name: np.stack([top_k(s) for s in scores[name]]) for name in scores}
    ta, tb = (tops[name] for name in PATHS)
    same5 = (ta == tb).all(axis=1)
    worst = int(diff.argmax())
    agreement = {
        "identical_top5_clips": int(same5.sum()),
        "identical_top1_clips": int((ta[:, 0] == tb[:, 0]).sum()),
        "same_top5_hit_clips": int((hits5["numpy+onnxruntime"] == hits5["torch"]).sum()),
        "max_abs_score_diff": float(diff.max()),
        "median_clip_max_abs_score_diff": float(np.median(diff)),
        "worst_clip": clips[worst].path.name,
    }

    per_clip = []
    for i, clip in enumerate(clips):
        row = {"file": clip.path.name, "esc50_category": clip.category, "mapped_labels": ";".join(clip.audioset_names)}
        for name in PATHS:
            row[f"{name}_top5"] = ";".join(labels[int(c)].name for c in tops[name][i])
            row[f"{name}_hit"] = bool(hits5[name][i]) if mapped[i] else ""
        row["top5_identical"] = bool(same5[i])
        row["max_abs_score_diff"] = f"{diff[i]:.3g}"
        per_clip.append(row)

    return {
        "model": next(iter(taggers.values())).model_name,
        "clips": len(clips),
        "mapped_clips": n_mapped,
        "mapped_classes": len(classes),
        "audio_load_s_total": load_seconds,
        "reference_efficientat_top5": {"hits": EFFICIENTAT_TOP5_HITS[0], "of": EFFICIENTAT_TOP5_HITS[1],
                                       "share": EFFICIENTAT_TOP5_HITS[0] / EFFICIENTAT_TOP5_HITS[1]},
        "paths": paths,
        "agreement": agreement,
        "per_clip": per_clip,
    }


def print_table(result: dict) -> None:
    """Results as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    n = result["mapped_clips"]
    ref = result["reference_efficientat_top5"]
    table = Table(title=f"ESC-50 ({result['clips']} clips, {n} mapped) - {result['model']}")
    for col in ("path", "top-5 hits", "top-5 share", "top-1 hits", "top-1 share", f"mAP ({result['mapped_classes']} classes)", "ms/clip"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, p in result["paths"].items():
        table.add_row(name, f"{p['top5_hits']}/{n}", f"{p['top5_share']:.3f}", f"{p['top1_hits']}/{n}",
                      f"{p['top1_share']:.3f}", f"{p['mAP']:.4f}", f"{p['inference_ms_per_clip']:.1f}")
    table.add_row("EfficientAT (reference)", f"{ref['hits']}/{ref['of']}", f"{ref['share']:.3f}", "", "", "", "")
    agree = result["agreement"]
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(
        f"agreement: identical top-5 lists {agree['identical_top5_clips']}/{result['clips']}, identical top-1 "
        f"{agree['identical_top1_clips']}/{result['clips']}, max |score diff| {agree['max_abs_score_diff']:.3g} "
        f"(worst clip {agree['worst_clip']}; median per-clip max {agree['median_clip_max_abs_score_diff']:.3g})"
    )


def markdown(result: dict) -> str:
    """A Markdown section with the headline numbers (for docs/benchmarks.md)."""
    n = result["mapped_clips"]
    ref = result["reference_efficientat_top5"]
    lines = [
        f"| path | top-5 hits | top-1 hits | mAP ({result['mapped_classes']} mapped classes) |",
        "|---|---|---|---|",
    ]
    for name, p in result["paths"].items():
        lines.append(f"| {name} | {p['top5_hits']}/{n} = {p['top5_share']:.3f} | {p['top1_hits']}/{n} = {p['top1_share']:.3f} | {p['mAP']:.4f} |")
    lines.append(f"| EfficientAT `inference.py` (reference) | {ref['hits']}/{ref['of']} = {ref['share']:.3f} | | |")
    agree = result["agreement"]
    lines += [
        "",
        f"Agreement: identical top-5 index lists on {agree['identical_top5_clips']}/{result['clips']} clips; "
        f"max |score difference| {agree['max_abs_score_diff']:.2g} over all clips and classes (worst clip `{agree['worst_clip']}`).",
    ]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=None, help="ground-truth folder (default: $DYMN_EDGE_SHARED or ../shared)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "esc50_accuracy.json", help="JSON results path")
    parser.add_argument("--csv", type=Path, default=None, help="per-clip CSV (default: the --out path with .csv)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a Markdown results section here")
    parser.add_argument("--threads", type=int, default=None, help="threads per backend (default: the backend's own)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N clips (quick checks)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    shared = (args.shared or default_shared()).resolve()
    esc50 = shared / "data" / "esc50"
    if not esc50.is_dir():
        parser.error(f"{esc50}: no ESC-50 folder; pass --shared DIR (the folder holding data/esc50)")
    from dymn_edge.runtime.labels import audioset_labels

    clips = read_clips(esc50, audioset_labels())
    if args.limit:
        clips = clips[: args.limit]
    started = time.time()
    result = run(clips, threads=args.threads, progress=not args.no_progress)
    result["wall_s"] = time.time() - started
    result["machine"] = machine_info()
    result["command"] = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    print_table(result)

    csv_path = args.csv or args.out.with_suffix(".csv")
    write_csv(result["per_clip"], csv_path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in result.items() if k != "per_clip"}
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result), encoding="utf-8")
    print(f"wrote {args.out} and {csv_path}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
