"""The listening pipeline: source -> resampler -> windows -> features -> inference -> events -> sinks.

The calling thread reads the source, resamples, cuts windows and computes their features (all
cheap and incremental); one worker thread runs the model and feeds post-processing and sinks.
Live sources (a microphone) drop the oldest queued windows when inference falls behind; files
and pipes wait instead, so offline runs lose nothing. ``run`` returns when the source ends or ``stop`` is set (the CLI
sets it on SIGINT/SIGTERM); either way every queued window is scored, open events are closed at
the end of the stream and every sink is flushed and closed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..errors import DymnEdgeError
from ..frontend import FrontendConfig, n_frames
from ..labels import LabelSet
from ..tagging import top_tags
from .events import EventDetector
from .incremental import IncrementalLogMel
from .postprocess import Smoother
from .resampler import StreamResampler
from .stats import StreamStats
from .windows import Windower
from .worker import DropOldestQueue, InferenceWorker, WindowJob, WindowResult

__all__ = ["ListenOptions", "Listener"]

_DONE = object()


def _prefetch(generator, stop: threading.Event, depth: int = 2):
    """Run ``generator`` in a thread, ``depth`` items ahead of the consumer; errors are re-raised here."""
    import queue

    items: queue.Queue = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []

    def fill():
        try:
            for item in generator:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            failure.append(e)
        finally:
            items.put(_DONE)

    thread = threading.Thread(target=fill, name="dymn-reader", daemon=True)
    thread.start()
    while True:
        item = items.get()
        if item is _DONE:
            break
        yield item
    thread.join()
    if failure:
        raise failure[0]

logger = logging.getLogger(__name__)


@dataclass
class ListenOptions:
    window_s: float = 10.0
    hop_s: float = 1.0
    classes: list[int] | None = None  # watched classes (None: all)
    thresholds: np.ndarray | float = 0.3  # onset threshold, one for all or per class
    offset_ratio: float = 0.5
    min_duration_s: float = 0.0
    smoothing: str = "none"
    top_k: int = 5
    queue_size: int = 4  # windows waiting for inference before the oldest is dropped
    lossless: bool | None = None  # None: lossless for files, drop-oldest for live input


class Listener:
    def __init__(self, backend, labels: LabelSet, source, options: ListenOptions, sinks: list,
                 *, frontend: FrontendConfig = FrontendConfig(), stats: StreamStats | None = None) -> None:
        if options.top_k < 1:
            raise DymnEdgeError(f"top-k must be >= 1, got {options.top_k}")
        self.backend, self.labels, self.source, self.options, self.sinks = backend, labels, source, options, sinks
        self.config = frontend
        self.stats = stats or StreamStats()
        self.classes = options.classes if options.classes else list(range(len(labels)))
        thresholds = np.broadcast_to(np.asarray(options.thresholds, dtype=np.float32), (len(labels),)).copy()
        self.windower = Windower(options.window_s, options.hop_s, frontend.sample_rate_hz, frontend.min_samples)
        self.frontend = IncrementalLogMel(self.windower.window, frontend)
        self.smoother = Smoother(options.smoothing)
        self.detector = EventDetector(self.classes, labels, thresholds, hop_s=options.hop_s,
                                      offset_ratio=options.offset_ratio, min_duration_s=options.min_duration_s)
        self.queue = DropOldestQueue(options.queue_size)
        self.lossless = (not source.realtime) if options.lossless is None else options.lossless
        self._sink_lock = threading.Lock()
        self._audio_sinks = [s for s in sinks if hasattr(s, "audio")]
        self._watch = np.asarray(self.classes)

    # -- inference thread -------------------------------------------------------------------------

    def _on_result(self, result: WindowResult) -> None:
        scores = self.smoother(result.scores)
        result = WindowResult(result.window, scores, result.latency_ms, result.inference_ms)
        tags = top_tags(scores, self.labels, self.options.top_k, among=self._watch)
        events = self.detector.update(result.window, scores)
        self.stats.record(result.latency_ms, result.inference_ms)
        with self._sink_lock:
            for sink in self.sinks:
                sink.scores(result, tags)
            for event in events:
                for sink in self.sinks:
                    sink.event(event)

    # -- reading thread ---------------------------------------------------------------------------

    def _push(self, samples: np.ndarray) -> None:
        if samples.shape[0] == 0:
            return
        start = self.windower.total
        self.frontend.push(samples)
        for sink in self._audio_sinks:
            sink.audio(samples, start)
        self._enqueue(self.windower.push(samples.shape[0]))

    def _enqueue(self, windows) -> None:
        for window in windows:
            job = WindowJob(window, self.frontend.features(window.start, window.end), time.perf_counter())
            dropped_before = self.queue.dropped
            self.queue.put(job, block=self.lossless)
            if self.queue.dropped > dropped_before:
                with self.stats.lock:
                    self.stats.dropped_windows = self.queue.dropped
        self.stats.stream_s = self.windower.total / self.config.sample_rate_hz

    def _resampled(self, stop: threading.Event, resampler: StreamResampler):
        """Model-rate audio from the source, gaps filled with silence, the resampler flushed at the end.

        For files, decoding and resampling run one block ahead in a thread of their own (both release
        the GIL), overlapping with the frontend here and the model in the worker.
        """
        def produce():
            expected = 0
            for index, block in self.source.blocks(stop):
                if index > expected:  # lost input: silence keeps the timeline true
                    gap = index - expected
                    self.stats.lost_input_s += gap / self.source.sample_rate
                    yield resampler.process(np.zeros((gap, block.shape[1]), dtype=np.float32))
                expected = index + block.shape[0]
                yield resampler.process(block)
            yield resampler.flush()

        if self.source.realtime:
            yield from produce()
            return
        yield from _prefetch(produce(), stop)

    def _warm_up(self) -> None:
        """Run silent windows, a full one and a first-hop one, before audio flows.

        A backend's first run compiles or allocates: OpenVINO compiles full windows for their
        exact shape and shorter ones (a stream's first windows) once more, 0.8 s each for dymn04.
        Without this a live source would queue windows behind those runs, or drop them, and the
        first latencies would be off the scale.
        """
        batch = getattr(self.backend, "max_batch", None) or 1
        for samples in sorted({self.windower.window, min(self.windower.hop, self.windower.window)}, reverse=True):
            silence = np.zeros((batch, 1, self.config.n_mels, n_frames(samples, self.config)), dtype=np.float32)
            try:
                self.backend.infer(silence)
            except Exception as e:  # the same failure would stop the stream at its first window
                raise DymnEdgeError(f"inference failed on {samples / self.config.sample_rate_hz:g} s of silence: {e}") from e

    def run(self, stop: threading.Event | None = None) -> dict:
        """Listen until the source ends or ``stop`` is set; returns the run summary."""
        stop = stop or threading.Event()
        resampler = StreamResampler(self.source.sample_rate, self.config.sample_rate_hz)
        self._warm_up()
        worker = InferenceWorker(self.backend, self.queue, self._on_result)
        worker.start()
        try:
            for samples in self._resampled(stop, resampler):
                if worker.error is not None:
                    break
                self._push(samples)
                self.stats.restarts = getattr(self.source, "restarts", 0)
            if worker.error is None:
                self._enqueue(self.windower.finish())
        finally:
            self.queue.close()
            worker.join()
            end_s = self.windower.total / self.config.sample_rate_hz
            with self._sink_lock:
                for event in self.detector.finish(end_s):
                    for sink in self.sinks:
                        sink.event(event)
                for sink in self.sinks:
                    try:
                        sink.close()
                    except Exception as e:  # one failing sink must not keep the others from flushing
                        logger.error("closing %s failed: %s", type(sink).__name__, e)
        if worker.error is not None:
            raise DymnEdgeError(f"inference failed: {worker.error}") from worker.error
        return self.stats.summary()
