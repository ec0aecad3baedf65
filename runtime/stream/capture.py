"""Microphone capture with sounddevice (PortAudio), at the device's native rate.

The audio callback only copies into a bounded ring (``ring.py``) and counts overflow flags.
The reading side watches the stream: PortAudio reports a vanished device only by stopping the
callbacks (``stream.active`` turns False, or nothing arrives), so after a stall the stream is
closed and reopened with backoff (0.5 s doubling to 8 s) until the device returns or the
listener stops. The outage becomes a gap in the frame index, which the listener fills with
silence, so stream time keeps following the clock.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterator

import numpy as np

from ..errors import BackendUnavailableError, DymnEdgeError
from .ring import FrameRing

__all__ = ["MicrophoneSource", "input_devices", "resolve_device"]

logger = logging.getLogger(__name__)

FIRST_CALLBACK_TIMEOUT_S = 10.0  # PulseAudio's ALSA plugin takes ~1.9 s to deliver the first block
STALL_TIMEOUT_S = 2.0  # no audio for this long after it started flowing: the device is gone
MAX_CHANNELS = 2  # PulseAudio/ALSA virtual devices advertise 32 channels of the same mono signal


def _sd():
    try:
        import sounddevice as sd
    except ImportError as e:
        raise BackendUnavailableError('microphone input needs sounddevice: pip install "dymn-edge[mic]"') from e
    except OSError as e:  # libportaudio2 missing
        raise BackendUnavailableError(f"microphone input needs the PortAudio library (apt-get install libportaudio2): {e}") from e
    return sd


def input_devices() -> list[dict]:
    """Every device with input channels: index, name, host API, channels, default rate, default flag."""
    sd = _sd()
    try:
        default_in = sd.default.device[0]
    except Exception:  # no default device configured
        default_in = -1
    out = []
    for d in sd.query_devices():
        if d["max_input_channels"] > 0:
            out.append({"index": d["index"], "name": d["name"], "hostapi": sd.query_hostapis(d["hostapi"])["name"],
                        "channels": d["max_input_channels"], "rate": int(d["default_samplerate"]), "default": d["index"] == default_in})
    return out


def _listing(devices: list[dict]) -> str:
    return "; ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"


def resolve_device(spec: str | int | None) -> dict:
    """An input device by index, exact name or name substring (None: the default input)."""
    devices = input_devices()
    if not devices:
        raise DymnEdgeError("no audio input device found (is a microphone connected, or PulseAudio running?)")
    if spec is None:
        chosen = [d for d in devices if d["default"]] or devices[:1]
        return chosen[0]
    key = str(spec).strip()
    if key.isdigit():
        for d in devices:
            if d["index"] == int(key):
                return d
        raise DymnEdgeError(f"no input device with index {key}; input devices: {_listing(devices)}")
    exact = [d for d in devices if d["name"] == key]
    partial = [d for d in devices if key.lower() in d["name"].lower()]
    if exact or len(partial) == 1:
        return (exact or partial)[0]
    if len(partial) > 1:
        raise DymnEdgeError(f"input device {key!r} is ambiguous: {_listing(partial)}")
    raise DymnEdgeError(f"no input device named {key!r}; input devices: {_listing(devices)}")


class MicrophoneSource:
    realtime = True

    def __init__(self, device: str | int | None = None, *, block_s: float = 0.1, ring_s: float = 30.0) -> None:
        self.sd = _sd()
        info = resolve_device(device)
        self.device_spec = device
        self.device, self.name = info["index"], info["name"]
        self.sample_rate = info["rate"]
        self.channels = min(info["channels"], MAX_CHANNELS)
        self.block = max(1, int(block_s * self.sample_rate))
        self.ring = FrameRing(int(ring_s * self.sample_rate), self.channels)
        self.overflows = 0
        self._overflows_logged = 0
        self._ring_dropped_logged = 0
        self.restarts = 0
        self._last_callback = 0.0

    def _callback(self, indata, frames, time_info, status) -> None:  # audio thread: copy and count only
        if status.input_overflow:
            self.overflows += 1
        self.ring.write(indata)
        self._last_callback = time.monotonic()

    def _open(self):
        stream = self.sd.InputStream(device=self.device, samplerate=self.sample_rate, channels=self.channels,
                                     dtype="float32", blocksize=self.block, callback=self._callback)
        stream.start()
        return stream

    def blocks(self, stop: threading.Event) -> Iterator[tuple[int, np.ndarray]]:
        offset = 0  # ring frame index -> stream frame index (grows by each outage)
        backoff = 0.5
        lost_at: float | None = None  # clock time the audio stopped, until the first block after a restart
        stream = self._open()
        opened, flowing = time.monotonic(), False
        try:
            while not stop.is_set():
                start, block = self.ring.read(timeout=0.1)
                if self.overflows > self._overflows_logged or self.ring.dropped_frames > self._ring_dropped_logged:
                    self._log_overflows()
                if block.shape[0]:
                    if lost_at is not None:
                        # Frames the outage cost, measured on the clock; the listener fills them with silence.
                        gap = max(0, int((time.monotonic() - lost_at) * self.sample_rate) - block.shape[0])
                        offset += gap
                        lost_at = None
                    flowing, backoff = True, 0.5
                    yield start + offset, block
                    continue
                now = time.monotonic()
                stalled = (flowing and now - self._last_callback > STALL_TIMEOUT_S) or (
                    not flowing and now - opened > FIRST_CALLBACK_TIMEOUT_S)
                if stream.active and not stalled:
                    continue
                if lost_at is None:
                    lost_at = self._last_callback if flowing else opened
                logger.warning("input device %r stopped delivering audio; reopening it", self.name)
                self._close(stream)
                stream = self._reopen(stop, backoff)
                if stream is None:
                    return
                self.restarts += 1
                self.ring.discard()
                opened, flowing = time.monotonic(), False
        finally:
            self._close(stream)
            self.ring.close()

    def _log_overflows(self) -> None:
        """Input overflows mean this process was starved of CPU; they are logged and counted (the
        lost audio becomes silence). The stream is not restarted for them: the device is fine, and
        a restart would lose another ~2 s."""
        if self.overflows > self._overflows_logged:
            logger.warning("input overflow on %r (%d so far): audio was lost; is the machine overloaded?", self.name, self.overflows)
            self._overflows_logged = self.overflows
        dropped = self.ring.dropped_frames - self._ring_dropped_logged
        if dropped:
            logger.warning("capture ring overflowed: %.2f s of audio dropped", dropped / self.sample_rate)
            self._ring_dropped_logged = self.ring.dropped_frames

    def _reopen(self, stop: threading.Event, backoff: float):
        """Open the device again, waiting with exponential backoff until it is back (None if stopped)."""
        while not stop.is_set():
            stop.wait(backoff)
            try:
                self.sd._terminate()  # PortAudio lists devices once; re-scan, the device may have a new index
                self.sd._initialize()
                self.device = resolve_device(self.device_spec if self.device_spec is not None else self.name)["index"]
                return self._open()
            except Exception as e:  # PortAudioError, ValueError, DymnEdgeError: still gone
                backoff = min(backoff * 2, 8.0)
                logger.warning("input device %r not back yet (%s); retrying in %.1f s", self.name, e, backoff)
        return None

    @staticmethod
    def _close(stream) -> None:
        if stream is None:
            return
        try:
            stream.stop()
            stream.close()
        except Exception:  # a stream whose device vanished may refuse to stop cleanly
            pass
