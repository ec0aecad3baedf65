"""MQTT against a real mosquitto on 127.0.0.1: events arrive, and a broker outage loses nothing within the queue bound."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from peers import Subscriber
from peers import wait_until as _wait
from dymn_edge.runtime import embedded_bundle_path, load_bundle
from dymn_edge.runtime.backends import create_backend
from dymn_edge.runtime.errors import DymnEdgeError
from dymn_edge.runtime.stream.events import Event
from dymn_edge.runtime.stream.listener import Listener, ListenOptions
from dymn_edge.runtime.stream.sinks.jsonl import JsonlSink
from dymn_edge.runtime.stream.sinks.mqtt import MqttSink, parse_mqtt_url
from dymn_edge.runtime.stream.sources import FileSource

WATCH = ["Dog", "Bark", "Church bell", "Bell", "Siren", "Chicken, rooster"]


def _keys(messages):
    return {(m["id"], m["offset"]) for m in messages if m.get("type") == "event"}


def test_listen_publishes_every_event(mqtt_broker, shared, tmp_path):
    sub = Subscriber(mqtt_broker.port, "dymn/#")
    try:
        args = [a for name in WATCH for a in ("--labels", name)]
        proc = subprocess.run([sys.executable, "-m", "dymn_edge", "listen", "--input", shared / "data/mixture/esc50_mixture_40s.flac",
                               *args, "--jsonl", tmp_path / "e.jsonl", "--mqtt", f"mqtt://127.0.0.1:{mqtt_broker.port}/dymn/events"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        written = [json.loads(line) for line in open(tmp_path / "e.jsonl")]
        expected = _keys(written)
        assert len(expected) >= 10  # open + close lines of at least five events
        assert sub.wait_for(lambda got: _keys(got) >= expected), (sorted(_keys(sub.messages)), sorted(expected))
        first = next(m for m in sub.messages if m["type"] == "event")
        assert set(first) == {"type", "id", "label", "index", "onset", "offset", "score"}
    finally:
        sub.close()


def _event(i: int) -> Event:
    return Event(i, 74, "Dog", float(i), float(i) + 0.5, 0.9)


def test_outage_loses_no_event_queued_within_the_bound(mqtt_broker):
    sub = Subscriber(mqtt_broker.port, "dymn/events")
    sink = MqttSink(f"mqtt://127.0.0.1:{mqtt_broker.port}/dymn/events", max_queued=10)
    try:
        assert sub.wait_for(lambda got: True, 1) and _wait(lambda: sink.connected)
        for i in range(3):
            sink.event(_event(i))
        assert sub.wait_for(lambda got: {0, 1, 2} <= {m["id"] for m in got})
        mqtt_broker.kill()
        assert _wait(lambda: not sink.connected)
        start = time.monotonic()
        for i in range(3, 16):  # 13 events while the broker is down: 10 fit the queue, 3 do not
            sink.event(_event(i))
        assert time.monotonic() - start < 0.5  # publishing never blocks the pipeline
        assert sink.dropped == 3
        mqtt_broker.start()
        assert sub.wait_for(lambda got: set(range(13)) <= {m["id"] for m in got}, timeout=20), sorted({m["id"] for m in sub.messages})
    finally:
        sink.close()
        sub.close()


class _Paced:
    realtime = True

    def __init__(self, path, speed):
        self.inner, self.speed = FileSource(path, block_s=0.1), speed
        self.sample_rate, self.channels = self.inner.sample_rate, self.inner.channels

    def blocks(self, stop):
        t0 = time.perf_counter()
        for index, block in self.inner.blocks(stop):
            wait = t0 + (index + block.shape[0]) / self.sample_rate / self.speed - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            yield index, block


def test_broker_killed_mid_stream_and_restarted(mqtt_broker, shared, tmp_path):
    """The listener keeps running through the outage; afterwards the broker has every event the JSONL has."""
    bundle = load_bundle(embedded_bundle_path())
    sub = Subscriber(mqtt_broker.port, "dymn/events")
    mqtt = MqttSink(f"mqtt://127.0.0.1:{mqtt_broker.port}/dymn/events", max_queued=100)
    jsonl = JsonlSink(tmp_path / "e.jsonl")
    from dymn_edge.runtime.stream.postprocess import resolve_labels

    options = ListenOptions(window_s=2.0, hop_s=0.5, classes=resolve_labels(WATCH, bundle.labels))
    listener = Listener(create_backend("onnxruntime", bundle, threads=1), bundle.labels,
                        _Paced(shared / "data/mixture/esc50_mixture_40s.flac", speed=4.0), options, [jsonl, mqtt])
    outage = threading.Thread(target=lambda: (time.sleep(1.0), mqtt_broker.kill(), time.sleep(3.0), mqtt_broker.start()))
    try:
        assert _wait(lambda: mqtt.connected)
        outage.start()  # down from stream time ~4 s to ~16 s: the church bell (7 s) and siren (15 s) events fall inside
        summary = listener.run()
        outage.join()
        written = _keys(json.loads(line) for line in open(tmp_path / "e.jsonl"))
        assert summary["windows"] == 80 and mqtt.dropped == 0
        assert sub.wait_for(lambda got: _keys(got) >= written, timeout=20), sorted(written - _keys(sub.messages))
        during = {k for k in written if 4 < (k[1] or 0) < 16}
        assert during, "no event fell inside the outage; the test would prove nothing"
    finally:
        sub.close()


def test_mqtt_urls():
    assert parse_mqtt_url("mqtt://127.0.0.1:1884/a/b/c") == ("127.0.0.1", 1884, "a/b/c")
    assert parse_mqtt_url("mqtt://broker/dymn") == ("broker", 1883, "dymn")
    for bad in ("mqtt://host", "tcp://host/t", "mqtt:///t"):
        with pytest.raises(DymnEdgeError, match=r"expected mqtt://HOST\[:PORT\]/TOPIC"):
            parse_mqtt_url(bad)
    with pytest.raises(DymnEdgeError, match="the port must be a number"):
        parse_mqtt_url("mqtt://host:port/t")
