"""Event detection on real audio: the ESC-50 mixture with true spans, for several window settings.

`shared/data/mixture/esc50_mixture_40s.flac` holds 6 events (dog, church bells, siren, rooster,
dog, church bells) with the true spans beside it. The listener watches the mixture's AudioSet
classes (``--labels``, as a user would), in file mode, and the events it reports are scored:

* a true event is **found** when a reported event with one of its accepted AudioSet labels
  (`esc50/audioset_mapping.csv`) overlaps its span and starts within 2 s of its onset;
* a reported event is **spurious** when it overlaps no true event that accepts its label
  (a second label for the same sound, e.g. "Bark" beside "Dog", is not spurious);
* onset error is |reported onset - true onset| for the best match of each found event.

The span is the sounding part (`active_onset_s`/`active_offset_s`). Prints a table and writes
`benchmarks/results/event_detection.json`.

    python benchmarks/event_detection.py [--shared ../shared] [--backend onnxruntime]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
from pathlib import Path

import numpy as np

from dymn_edge.runtime import embedded_bundle_path, load_bundle
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.machine import machine_info
from dymn_edge.runtime.stream.listener import Listener, ListenOptions
from dymn_edge.runtime.stream.postprocess import resolve_labels
from dymn_edge.runtime.stream.sources import FileSource

REPO = Path(__file__).resolve().parents[1]
ONSET_TOLERANCE_S = 2.0


def truth(shared: Path) -> list[dict]:
    rows = list(csv.DictReader(open(shared / "data" / "mixture" / "esc50_mixture_40s_events.csv")))
    return [{"category": r["esc50_category"], "labels": r["audioset_labels"].split(";"),
             "onset": float(r["active_onset_s"]), "offset": float(r["active_offset_s"])} for r in rows]


class _Collect:
    def __init__(self):
        self.events = {}

    def scores(self, result, tags):
        pass

    def event(self, event):
        self.events[event.id] = event.to_json()  # the last snapshot of each id is its final state

    def close(self):
        pass


def score(events: list[dict], true: list[dict]) -> dict:
    found, errors = 0, []
    for t in true:
        matches = [e for e in events if e["label"] in t["labels"] and e["onset"] < t["offset"] and e["offset"] > t["onset"]
                   and abs(e["onset"] - t["onset"]) <= ONSET_TOLERANCE_S]
        if matches:
            found += 1
            errors.append(min(abs(e["onset"] - t["onset"]) for e in matches))
    spurious = [e for e in events if not any(e["label"] in t["labels"] and e["onset"] < t["offset"] and e["offset"] > t["onset"] for t in true)]
    return {"found": found, "of": len(true), "spurious": len(spurious), "reported": len(events),
            "onset_error_mean_s": round(float(np.mean(errors)), 2) if errors else None,
            "spurious_events": [f"{e['label']} {e['onset']:.1f}-{e['offset']:.1f}" for e in spurious]}


def run(backend, labels, audio: Path, classes: list[int], **options) -> list[dict]:
    sink = _Collect()
    Listener(backend, labels, FileSource(audio), ListenOptions(classes=classes, **options), [sink]).run()
    return list(sink.events.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")))
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "event_detection.json")
    args = parser.parse_args()
    bundle = load_bundle(embedded_bundle_path())
    backend = create_backend(args.backend, bundle, threads=2)
    true = truth(args.shared)
    watched = sorted({name for t in true for name in t["labels"]})
    classes = resolve_labels(watched, bundle.labels)
    audio = args.shared / "data" / "mixture" / "esc50_mixture_40s.flac"
    grid = itertools.product([1.0, 2.0, 3.0, 5.0, 10.0], [1.0, 0.5], ["none", "median"], [0.2, 0.3])
    rows = []
    print("| window s | hop s | smoothing | threshold | found | spurious | mean onset error s |\n|---|---|---|---|---|---|---|")
    for window, hop, smoothing, threshold in grid:
        events = run(backend, bundle.labels, audio, classes, window_s=window, hop_s=hop, smoothing=smoothing, thresholds=threshold)
        result = {"window_s": window, "hop_s": hop, "smoothing": smoothing, "threshold": threshold, **score(events, true)}
        rows.append(result)
        print(f"| {window:g} | {hop:g} | {smoothing} | {threshold:g} | {result['found']}/{result['of']} | {result['spurious']} | {result['onset_error_mean_s']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info(), "watched": watched, "truth": true, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
