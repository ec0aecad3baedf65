"""Where the audio comes from: a file, or raw PCM on a pipe (arecord, GStreamer, ffmpeg).

Every source yields ``(index, block)``: the absolute frame index of the block's first frame at
the source's own rate, and a (frames, channels) float32 block. A jump in the index is a gap
(lost input); the listener fills it with silence so stream time stays true. Microphones live
in ``capture.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf

from ..errors import AudioFormatError, DymnEdgeError

__all__ = ["PCM_FORMATS", "FileSource", "RawPcmSource"]

# name -> (bytes per sample, decoder of a uint8 buffer into float32 in [-1, 1))
PCM_FORMATS = {
    "s16le": 2, "s24le": 3, "s32le": 4, "f32le": 4, "f64le": 8, "u8": 1,
}


def _decode(raw: bytes, fmt: str) -> np.ndarray:
    if fmt == "s16le":
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if fmt == "s32le":
        return (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    if fmt == "s24le":
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float32) / float(1 << 23)
    if fmt == "f32le":
        return np.frombuffer(raw, "<f4").astype(np.float32)
    if fmt == "f64le":
        return np.frombuffer(raw, "<f8").astype(np.float32)
    return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0


class FileSource:
    """Any file soundfile reads, in blocks, as fast as the pipeline takes them (lossless)."""

    realtime = False

    def __init__(self, path: str | Path, block_s: float = 1.0) -> None:
        self.path = Path(path)
        try:
            info = sf.info(str(self.path))
        except (RuntimeError, sf.LibsndfileError, OSError) as e:
            raise AudioFormatError(f"{self.path}: cannot read audio ({e})") from e
        self.sample_rate, self.channels = int(info.samplerate), int(info.channels)
        self.block = max(1, int(block_s * self.sample_rate))
        self.name = str(self.path)

    def blocks(self, stop: threading.Event) -> Iterator[tuple[int, np.ndarray]]:
        index = 0
        with sf.SoundFile(str(self.path)) as f:
            # read() into a fresh buffer: without ``out`` (and in blocks()) soundfile asks libsndfile
            # where it is before every block, a seek that costs ~0.4 ms per call on FLAC.
            while not stop.is_set():
                block = f.read(dtype="float32", out=np.empty((self.block, self.channels), dtype=np.float32))
                if block.shape[0] == 0:
                    return
                if not np.isfinite(block).all():
                    raise AudioFormatError(f"{self.path}: NaN/inf samples near {index / self.sample_rate:.2f} s")
                yield index, block
                index += block.shape[0]


class RawPcmSource:
    """Raw interleaved PCM from a binary stream (``--input -``), e.g. ``arecord -f S16_LE -r 16000 -c 1 -t raw``.

    Lossless like a file: when inference falls behind, the pipe fills and the writer waits (a live
    writer such as arecord then reports its own overruns); every sample that arrives is scored.
    """

    def __init__(self, stream: BinaryIO, sample_rate: int, fmt: str = "s16le", channels: int = 1,
                 block_s: float = 0.1, realtime: bool = False, name: str = "stdin") -> None:
        if fmt not in PCM_FORMATS:
            raise DymnEdgeError(f"unknown PCM format {fmt!r}; expected one of {', '.join(PCM_FORMATS)}")
        if sample_rate <= 0 or channels <= 0:
            raise DymnEdgeError(f"raw PCM needs a positive --input-rate and channel count, got {sample_rate} Hz, {channels} channels")
        self.stream, self.fmt = stream, fmt
        self.sample_rate, self.channels = int(sample_rate), int(channels)
        self.frame_bytes = PCM_FORMATS[fmt] * self.channels
        self.block_bytes = max(1, int(block_s * self.sample_rate)) * self.frame_bytes
        self.realtime, self.name = realtime, name

    def blocks(self, stop: threading.Event) -> Iterator[tuple[int, np.ndarray]]:
        index, pending = 0, b""
        read = getattr(self.stream, "read1", self.stream.read)
        while not stop.is_set():
            chunk = read(self.block_bytes)
            if not chunk:
                break
            pending += chunk
            usable = len(pending) - len(pending) % self.frame_bytes
            if not usable:
                continue
            data, pending = pending[:usable], pending[usable:]
            block = _decode(data, self.fmt).reshape(-1, self.channels)
            if not np.isfinite(block).all():
                raise AudioFormatError(f"{self.name}: NaN/inf samples in {self.fmt} input near {index / self.sample_rate:.2f} s")
            yield index, block
            index += block.shape[0]
