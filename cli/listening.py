"""``dymn-edge listen``: resolve the model, open the input and sinks, run the listener until done or signalled."""

from __future__ import annotations

import signal
import sys
import threading

from dymn_edge.loader import load_tagger
from dymn_edge.runtime.frontend import FrontendConfig
from dymn_edge.runtime.stream.listener import Listener, ListenOptions
from dymn_edge.runtime.stream.postprocess import load_thresholds, resolve_labels
from dymn_edge.runtime.stream.session import open_sinks, open_source
from dymn_edge.runtime.stream.stats import StreamStats

__all__ = ["run_listen"]


class _MaxSeconds:
    """Stops the stream after a given amount of stream time (for scripted runs)."""

    def __init__(self, limit_s: float | None, stop: threading.Event) -> None:
        self.limit_s, self.stop = limit_s, stop

    def scores(self, result, tags) -> None:
        if self.limit_s is not None and result.window.end_s >= self.limit_s:
            self.stop.set()

    def event(self, event) -> None:
        pass

    def close(self) -> None:
        pass


class _EventCount:
    def __init__(self) -> None:
        self.ids: set[int] = set()

    def scores(self, result, tags) -> None:
        pass

    def event(self, event) -> None:
        self.ids.add(event.id)

    def close(self) -> None:
        pass


def run_listen(model, *, backend, threads, backend_device, device, input_spec, input_rate, input_format, input_channels,
               window_s, hop_s, label_names, threshold, thresholds_file, offset_ratio, min_duration_s, smoothing, top_k,
               jsonl, mqtt_url, mqtt_scores, record_events, queue_size, max_seconds, view) -> dict:
    source = open_source(input_spec, device=device, input_rate=input_rate, input_format=input_format, input_channels=input_channels)
    tagger = load_tagger(model, backend, threads=threads, device=backend_device, spin=False)
    labels = tagger.labels
    classes = resolve_labels(label_names, labels) if label_names else None
    thresholds = load_thresholds(thresholds_file, labels, threshold) if thresholds_file else threshold
    stats = StreamStats()
    stop = threading.Event()
    counter = _EventCount()
    sinks = open_sinks(jsonl=jsonl, mqtt=mqtt_url, mqtt_scores=mqtt_scores,
                       record_events=str(record_events) if record_events else None) + [counter, _MaxSeconds(max_seconds, stop)]
    # The live view draws on stderr; it stays off when stderr is not a terminal, and when JSON
    # Lines go to the same terminal on stdout.
    if view and sys.stderr.isatty() and (jsonl != "-" or not sys.stdout.isatty()):
        from dymn_edge.runtime.stream.sinks.terminal import TerminalView

        sinks.insert(0, TerminalView(stats, title=f"{tagger.model_name} <- {getattr(source, 'name', 'input')}"))
    options = ListenOptions(window_s=window_s, hop_s=hop_s, classes=classes, thresholds=thresholds, offset_ratio=offset_ratio,
                            min_duration_s=min_duration_s, smoothing=smoothing, top_k=top_k, queue_size=queue_size)
    config = getattr(tagger.frontend, "config", FrontendConfig())
    listener = Listener(tagger.backend, labels, source, options, sinks, frontend=config, stats=stats)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        summary = listener.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {**summary, "events": len(counter.ids), "source": str(getattr(source, "name", input_spec))}
