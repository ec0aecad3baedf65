"""The inference stage: a bounded queue of windows and one worker thread that runs the model.

Live sources must stay real-time, so when inference falls behind the queue drops its oldest
windows and counts them: latency stays bounded by the queue length instead of growing without
limit. File input is lossless instead: the reader waits for room (``put(block=True)``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..tagging import sigmoid
from .windows import Window

__all__ = ["DropOldestQueue", "InferenceWorker", "WindowJob", "WindowResult"]

logger = logging.getLogger(__name__)


@dataclass
class WindowJob:
    window: Window
    features: np.ndarray  # (n_mels, frames)
    ready_at: float  # perf_counter() when the window's last sample reached the pipeline


@dataclass
class WindowResult:
    window: Window
    scores: np.ndarray  # (classes,) sigmoid probabilities
    latency_ms: float  # window complete -> scores ready
    inference_ms: float


class DropOldestQueue:
    """A bounded FIFO: ``put`` drops (and counts) the oldest item when full, or waits with ``block=True``."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, item, block: bool = False) -> None:
        with self._cond:
            while block and len(self._items) >= self.maxsize and not self.closed:
                self._cond.wait(0.1)
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        """The oldest item, or None when closed and empty (or on timeout)."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            item = self._items.popleft() if self._items else None
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more items will come; get() drains what is left, then returns None."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class InferenceWorker(threading.Thread):
    """Takes windows from the queue, runs the backend, hands each result to ``on_result``."""

    def __init__(self, backend, queue: DropOldestQueue, on_result: Callable[[WindowResult], None]) -> None:
        super().__init__(name="dymn-inference", daemon=True)
        self.backend, self.queue, self.on_result = backend, queue, on_result
        self.error: BaseException | None = None
        self.processed = 0

    def run(self) -> None:
        try:
            while True:
                job = self.queue.get(timeout=0.5)
                if job is None:
                    if self.queue.closed:
                        return
                    continue
                start = time.perf_counter()
                features = job.features[None, None]
                fixed = getattr(self.backend, "max_batch", None)
                if fixed and fixed > 1:  # a model exported for a fixed batch: fill it, keep the first row
                    features = np.repeat(features, fixed, axis=0)
                logits = self.backend.infer(features)
                done = time.perf_counter()
                scores = sigmoid(np.asarray(logits, dtype=np.float32)[0])
                self.on_result(WindowResult(job.window, scores, (done - job.ready_at) * 1e3, (done - start) * 1e3))
                self.processed += 1
        except BaseException as e:  # surfaced by the listener, which stops the stream
            logger.error("inference worker stopped: %s", e)
            self.error = e
