"""MQTT via paho-mqtt: events (and optionally scores) as JSON, QoS 1, never blocking the pipeline.

``publish`` only queues: paho's network thread sends, reconnects with backoff (1 s doubling to
30 s) and re-sends QoS 1 messages queued while the broker was away. The local queue is bounded
(``max_queued``); a message that does not fit is dropped and counted, so a dead broker costs
memory up to the bound and nothing else. On shutdown the sink waits briefly for in-flight
messages, then disconnects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from urllib.parse import urlparse

from ...errors import BackendUnavailableError, DymnEdgeError
from ...tagging import Tag
from ..events import Event
from ..worker import WindowResult
from .jsonl import scores_line

__all__ = ["MqttSink", "parse_mqtt_url"]

logger = logging.getLogger(__name__)


def parse_mqtt_url(url: str) -> tuple[str, int, str]:
    """``mqtt://HOST[:PORT]/TOPIC`` -> (host, port, topic); the topic may contain slashes."""
    parsed = urlparse(url)
    topic = parsed.path.lstrip("/")
    if parsed.scheme != "mqtt" or not parsed.hostname or not topic:
        raise DymnEdgeError(f"MQTT target {url!r}: expected mqtt://HOST[:PORT]/TOPIC, e.g. mqtt://127.0.0.1:1883/dymn/events")
    try:
        port = parsed.port or 1883
    except ValueError:
        raise DymnEdgeError(f"MQTT target {url!r}: the port must be a number") from None
    return parsed.hostname, port, topic


class MqttSink:
    def __init__(self, url: str, *, client_id: str | None = None, max_queued: int = 1000, send_scores: bool = False,
                 keepalive: int = 10) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as e:
            raise BackendUnavailableError('MQTT output needs paho-mqtt: pip install "dymn-edge[mqtt]"') from e
        self._mqtt = mqtt
        self.host, self.port, self.topic = parse_mqtt_url(url)
        self.send_scores = send_scores
        self.published = 0
        self.dropped = 0
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"dymn-edge-{time.time_ns() % 10**9}")
        self.client.max_queued_messages_set(max_queued)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        try:
            # connect_async: the first attempt happens in paho's thread, so a broker that is down at
            # start-up is retried like any later outage instead of failing the listener.
            self.client.connect_async(self.host, self.port, keepalive=keepalive)
        except (OSError, ValueError) as e:
            raise DymnEdgeError(f"MQTT broker {self.host}:{self.port}: {e}") from e
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code == 0:
            logger.info("MQTT connected to %s:%d", self.host, self.port)
            self._connected.set()
        else:
            logger.warning("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        logger.warning("MQTT disconnected from %s:%d (%s); reconnecting with backoff", self.host, self.port, reason_code)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _publish(self, payload: dict) -> None:
        info = self.client.publish(self.topic, json.dumps(payload), qos=1)
        if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            logger.warning("MQTT queue full (%d dropped so far)", self.dropped)
        else:  # success, or NO_CONN: kept and re-sent after the reconnect
            self.published += 1

    def scores(self, result: WindowResult, tags: list[Tag]) -> None:
        if self.send_scores:
            self._publish(scores_line(result, tags))

    def event(self, event: Event) -> None:
        self._publish(event.to_json())

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.connected and self.client.want_write() and time.monotonic() < deadline:
            time.sleep(0.05)
        # In-flight QoS 1 messages: wait for their PUBACKs while connected, up to the deadline.
        while self.connected and len(getattr(self.client, "_out_messages", {})) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
