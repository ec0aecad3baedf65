"""Build a listening session from user-level choices: which input, which sinks.

What the ``dymn-edge listen`` command needs beyond the pipeline itself, kept here so the CLI
stays a thin layer and other programs can open the same sessions.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import DymnEdgeError
from .sources import FileSource, RawPcmSource

__all__ = ["open_source", "open_sinks"]


def open_source(input_spec: str | None, *, device: str | None = None, input_rate: int | None = None,
                input_format: str = "s16le", input_channels: int = 1):
    """``input_spec``: None for the microphone (``device``), ``-`` for raw PCM on stdin, else a file path."""
    if input_spec is None:
        from .capture import MicrophoneSource

        return MicrophoneSource(device)
    if device is not None:
        raise DymnEdgeError("--device selects a microphone; it cannot be combined with --input")
    if input_spec == "-":
        if not input_rate:
            raise DymnEdgeError("--input - reads raw PCM, so it needs --input-rate (and --input-format, --input-channels)")
        return RawPcmSource(sys.stdin.buffer, input_rate, input_format, input_channels)
    path = Path(input_spec)
    if not path.is_file():
        raise DymnEdgeError(f"{path}: no such audio file")
    return FileSource(path)


def open_sinks(*, jsonl: str | None = None, mqtt: str | None = None, mqtt_scores: bool = False,
               record_events: str | None = None) -> list:
    """The file/network sinks the user asked for (the terminal view is added by the caller)."""
    sinks: list = []
    if jsonl:
        from .sinks.jsonl import JsonlSink

        sinks.append(JsonlSink(jsonl))
    if mqtt:
        from .sinks.mqtt import MqttSink

        sinks.append(MqttSink(mqtt, send_scores=mqtt_scores))
    if record_events:
        from .sinks.snippets import SnippetSink

        sinks.append(SnippetSink(record_events))
    return sinks
