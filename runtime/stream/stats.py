"""Live counters of a listener: what the terminal view shows and the run summary reports."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["StreamStats"]


@dataclass
class StreamStats:
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)
    stream_s: float = 0.0  # seconds of audio consumed
    windows: int = 0  # windows scored
    dropped_windows: int = 0  # windows dropped because inference fell behind
    lost_input_s: float = 0.0  # audio lost to input overflows or device outages (replaced by silence)
    restarts: int = 0  # input stream restarts
    first_result_s: float | None = None  # wall seconds from start to the first scores
    _steady: tuple[float, float] | None = None  # (process time, wall) at the first scores
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))
    inference_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, latency_ms: float, inference_ms: float) -> None:
        with self.lock:
            self.windows += 1
            self.latencies_ms.append(latency_ms)
            self.inference_ms.append(inference_ms)
            if self.first_result_s is None:
                self.first_result_s = time.perf_counter() - self.started
                self._steady = (time.process_time(), time.perf_counter())

    def cpu_percent(self) -> float:
        """Average CPU use since start, in percent of one core."""
        wall = time.perf_counter() - self.started
        return 100.0 * (time.process_time() - self.cpu_started) / wall if wall > 0 else 0.0

    def steady_cpu_percent(self) -> float | None:
        """CPU use since the first result: the running cost, without start-up (model load, device open)."""
        if self._steady is None:
            return None
        wall = time.perf_counter() - self._steady[1]
        return 100.0 * (time.process_time() - self._steady[0]) / wall if wall > 1.0 else None

    def summary(self) -> dict:
        with self.lock:
            lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
            inf = np.asarray(self.inference_ms) if self.inference_ms else np.zeros(1)
            wall = time.perf_counter() - self.started
            return {
                "stream_s": round(self.stream_s, 3), "wall_s": round(wall, 3),
                "real_time_factor": round(self.stream_s / wall, 2) if wall > 0 else None,
                "windows": self.windows, "dropped_windows": self.dropped_windows,
                "lost_input_s": round(self.lost_input_s, 3), "restarts": self.restarts,
                "latency_ms_median": round(float(np.median(lat)), 2), "latency_ms_p90": round(float(np.percentile(lat, 90)), 2),
                "inference_ms_median": round(float(np.median(inf)), 2),
                "cpu_percent": round(self.cpu_percent(), 1),
                "cpu_percent_steady": None if self.steady_cpu_percent() is None else round(self.steady_cpu_percent(), 1),
                "first_result_s": None if self.first_result_s is None else round(self.first_result_s, 3),
            }
