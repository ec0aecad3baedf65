"""Audio tagging: waveform -> log-mel -> model -> sigmoid scores -> ranked labels, per clip and per window.

Whole clips up to ``MAX_SINGLE_PASS_S`` run in one pass, as EfficientAT's ``inference.py`` does
(the models are fully convolutional with global pooling, so any length works). Longer clips,
and any request with a hop, run on sliding windows; the clip's scores are then the maximum over
windows ("aggregation": "max"), so a short event anywhere in a long file still shows. Files
tagged on windows are decoded and resampled a block at a time, so memory stays that of one
window however long the file.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import soundfile as sf

from .audio import load_audio, seconds_to_samples, to_mono
from .backends import Backend, create_backend
from .bundle import Bundle
from .errors import AudioFormatError
from .frontend import LogMel
from .labels import LabelSet
from .stream.resampler import StreamResampler
from .stream.sources import FileSource

__all__ = ["MAX_SINGLE_PASS_S", "Segment", "Tag", "TagResult", "Tagger", "file_blocks", "sigmoid", "stream_windows", "top_tags",
           "window_bounds"]

logger = logging.getLogger(__name__)

MAX_SINGLE_PASS_S = 60.0  # s: longer clips are tagged on windows to bound memory
DEFAULT_WINDOW_S = 10.0  # s: the length every EfficientAT model was trained on

Frontend = Callable[[np.ndarray], np.ndarray]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function in float64, returned as float32."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


@dataclass(frozen=True)
class Tag:
    index: int
    label: str
    score: float

    def to_json(self) -> dict:
        return {"index": self.index, "label": self.label, "score": round(float(self.score), 6)}


@dataclass
class Segment:
    start: float  # s
    end: float  # s
    tags: list[Tag]
    scores: np.ndarray = field(repr=False)


@dataclass
class TagResult:
    path: str
    model: str
    tags: list[Tag]
    scores: np.ndarray = field(repr=False)  # (classes,) float32 sigmoid probabilities, label order
    duration_s: float = 0.0
    aggregation: str = "single"  # "single" pass over the clip, or "max" over windows
    timeline: list[Segment] | None = None

    def to_json(self, *, all_scores: bool = False) -> dict:
        out: dict = {"path": self.path, "model": self.model, "tags": [t.to_json() for t in self.tags]}
        out["duration_s"] = round(self.duration_s, 4)
        out["aggregation"] = self.aggregation
        if all_scores:
            out["scores"] = [round(float(s), 6) for s in self.scores]
        if self.timeline is not None:
            out["timeline"] = [
                {"start": round(s.start, 4), "end": round(s.end, 4), "tags": [t.to_json() for t in s.tags]}
                for s in self.timeline
            ]
        return out


def top_tags(scores: np.ndarray, labels: LabelSet, k: int, among: np.ndarray | None = None) -> list[Tag]:
    """The k best classes, best first (ties broken by class index); ``among``: only these class indices."""
    candidates = np.arange(len(scores)) if among is None else np.sort(np.asarray(among))
    order = candidates[np.lexsort((candidates, -scores[candidates].astype(np.float64)))][:k]
    return [Tag(int(i), labels[int(i)].name, float(scores[i])) for i in order]


def window_bounds(n_samples: int, window: int, hop: int, min_length: int = 1) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of sliding windows over a clip.

    Starts follow EfficientAT's ``windowed_inference.py`` (i * hop for i < ceil((L - W) / hop) + 1),
    but a clip no longer than one window gives one window over the whole clip (EfficientAT returns
    none), and the last window ends at the clip's end instead of running into zero padding.
    A trailing window shorter than ``min_length`` samples (less than one analysis frame) is dropped.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    if n_samples <= window:
        return [(0, n_samples)]
    count = math.ceil((n_samples - window) / hop) + 1
    bounds = [(i * hop, min(i * hop + window, n_samples)) for i in range(count)]
    return [b for b in bounds if b[1] - b[0] >= min_length] or bounds[:1]


def stream_windows(blocks: Iterable[np.ndarray], window: int, hop: int, min_length: int = 1) -> Iterator[tuple[int, int, np.ndarray]]:
    """``window_bounds``' windows, as (start, end, samples), over a clip that arrives in blocks.

    Holds at most one window and one block, so a file of any length is tagged in the memory of one
    window. The count of samples is only known at the end, where the trailing partial window (if
    any) follows ``window_bounds``' rules.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    short = window < min_length  # window_bounds then keeps the first window only
    held, offset, total, i = np.zeros(0, np.float32), 0, 0, 0  # held = samples [offset, total)
    for block in blocks:
        held = np.concatenate([held, block])
        total += len(block)
        while i * hop + window <= total:
            start = i * hop
            if i == 0 or not short:
                yield start, start + window, held[start - offset : start + window - offset]
            i += 1
            keep = min(i * hop, total)
            held, offset = held[keep - offset :], keep
    if i == 0:  # no full window: the clip is one window, as window_bounds has it
        yield 0, total, held[: total - offset]
        return
    if short:
        return
    for start, end in window_bounds(total, window, hop, min_length)[i:]:
        yield start, end, held[start - offset : end - offset]


def file_blocks(path: str | Path, sample_rate_hz: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks of an audio file at ``sample_rate_hz``, decoded and resampled a second at a time.

    The concatenated blocks equal ``load_audio``'s samples bit for bit: the channels are mixed by the
    same ``to_mono``, and soxr's stream carries its filter state across blocks (tested). A missing
    file raises ``load_audio``'s FileNotFoundError, not the "cannot read audio" of a broken one.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such audio file")
    source = FileSource(path)
    resampler = StreamResampler(source.sample_rate, sample_rate_hz)
    for _, block in source.blocks(threading.Event()):
        yield resampler.process(to_mono(block))
    yield resampler.flush()


class Tagger:
    """A frontend, a backend and the labels the model predicts."""

    def __init__(self, frontend: Frontend, backend: Backend, labels: LabelSet, *, model_name: str, sample_rate_hz: int = 32000) -> None:
        self.frontend = frontend
        self.backend = backend
        self.labels = labels
        self.model_name = model_name
        self.sample_rate_hz = sample_rate_hz

    @classmethod
    def from_bundle(cls, bundle: Bundle, backend: str = "onnxruntime", *, threads: int | None = None, device: str | None = None,
                    spin: bool = True) -> "Tagger":
        """The torch-free path: numpy frontend + an ONNX Runtime or OpenVINO session on the bundle."""
        return cls(
            LogMel(bundle.frontend), create_backend(backend, bundle, threads=threads, device=device, spin=spin), bundle.labels,
            model_name=bundle.name, sample_rate_hz=bundle.frontend.sample_rate_hz,
        )

    def scores(self, wave: np.ndarray) -> np.ndarray:
        """Sigmoid scores (classes,) float32 of one waveform in one pass."""
        features = self.frontend(wave)[None, None]  # (1, 1, n_mels, frames)
        fixed = self.backend.max_batch
        if fixed and fixed > 1:  # a model exported for a fixed batch: fill it, keep the first row
            features = np.repeat(features, fixed, axis=0)
        logits = self.backend.infer(features)[:1]
        if logits.shape != (1, len(self.labels)):
            raise ValueError(f"model returned logits of shape {logits.shape}; expected (1, {len(self.labels)})")
        return sigmoid(logits[0])

    def tag(
        self,
        wave: np.ndarray,
        *,
        top_k: int = 5,
        window_s: float | None = None,
        hop_s: float | None = None,
        path: str = "<array>",
    ) -> TagResult:
        """Tag a mono waveform at the model's sample rate.

        Args:
            wave: (n_samples,) float32.
            top_k: tags kept per clip and per window.
            window_s, hop_s: sliding windows (seconds); with either one, a timeline is returned.
                Window defaults to 10 s, hop to the window.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        sr = self.sample_rate_hz
        duration = len(wave) / sr
        windowed = window_s is not None or hop_s is not None
        if not windowed and duration <= MAX_SINGLE_PASS_S:
            scores = self.scores(wave)
            return TagResult(path, self.model_name, top_tags(scores, self.labels, top_k), scores, duration)
        window, hop = self._window_and_hop(path, duration, window_s, hop_s)
        bounds = window_bounds(len(wave), window, hop, self._min_samples())
        return self._tag_windows(((s, e, wave[s:e]) for s, e in bounds), path, top_k, windowed, lambda: duration)

    def tag_file(self, path: str | Path, *, top_k: int = 5, window_s: float | None = None, hop_s: float | None = None) -> TagResult:
        """Tag an audio file: in one pass up to ``MAX_SINGLE_PASS_S``, else (or with a window or hop) on
        windows, decoded a block at a time."""
        windowed = window_s is not None or hop_s is not None
        try:
            info = sf.info(str(path))
            seconds = info.frames / info.samplerate if info.frames > 0 and info.samplerate > 0 else None
        except (RuntimeError, sf.LibsndfileError, OSError):
            seconds = None  # load_audio names what is wrong with the file
        if seconds is None or (not windowed and seconds <= MAX_SINGLE_PASS_S):
            return self.tag(load_audio(path, self.sample_rate_hz), path=str(path), top_k=top_k, window_s=window_s, hop_s=hop_s)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        window, hop = self._window_and_hop(str(path), seconds, window_s, hop_s)
        sr, counted = self.sample_rate_hz, [0]

        def blocks() -> Iterator[np.ndarray]:
            for block in file_blocks(path, sr):
                counted[0] += len(block)
                yield block

        windows = stream_windows(blocks(), window, hop, self._min_samples())
        return self._tag_windows(windows, str(path), top_k, windowed, lambda: counted[0] / sr)

    def _window_and_hop(self, path: str, seconds: float, window_s: float | None, hop_s: float | None) -> tuple[int, int]:
        """Window and hop in samples (defaults: 10 s, hop = window), checked; says why a clip without
        --window or --hop runs on windows."""
        windowed = window_s is not None or hop_s is not None
        window_s = DEFAULT_WINDOW_S if window_s is None else window_s
        hop_s = window_s if hop_s is None else hop_s
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"window and hop must be positive seconds, got window={window_s}, hop={hop_s}")
        if not windowed:
            logger.info("%s: %.0f s is longer than %.0f s; tagging %.0f s windows", path, seconds, MAX_SINGLE_PASS_S, window_s)
        return seconds_to_samples(window_s, self.sample_rate_hz), seconds_to_samples(hop_s, self.sample_rate_hz)

    def _min_samples(self) -> int:
        return getattr(getattr(self.frontend, "config", None), "min_samples", 1)

    def _tag_windows(self, windows: Iterable[tuple[int, int, np.ndarray]], path: str, top_k: int, windowed: bool,
                     duration: Callable[[], float]) -> TagResult:
        """Score each window; the clip's scores are the maximum over windows. ``duration`` is read at the end."""
        sr, timeline = self.sample_rate_hz, []
        for start, end, wave in windows:
            if end == 0:  # a streamed file that decoded to nothing (load_audio says the same)
                raise AudioFormatError(f"{path}: contains no audio samples")
            scores = self.scores(wave)
            timeline.append(Segment(start / sr, end / sr, top_tags(scores, self.labels, top_k), scores))
        clip = np.max([s.scores for s in timeline], axis=0)
        return TagResult(
            path, self.model_name, top_tags(clip, self.labels, top_k), clip, duration(), "max", timeline if windowed else None
        )
