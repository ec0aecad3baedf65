"""Fixtures for the streaming tests: a virtual microphone and a mosquitto broker (see peers.py).

A missing tool skips with the apt command in the reason, unless DYMN_REQUIRE_AUDIO /
DYMN_REQUIRE_MQTT is set (as in CI), which turns the skip into a failure. A tool that is present
but fails to start is an error.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

import pytest

from peers import Broker, VirtualMic, free_port


def _missing(what: str, env: str, apt: str):
    message = f"{what} (apt-get install -y {apt})"
    if os.environ.get(env) == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def virtual_mic():
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay") if shutil.which(tool) is None]
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so"):
        missing.append("libasound2-plugins")
    if not glob.glob("/usr/lib/*/libportaudio.so*"):
        missing.append("libportaudio2")
    if missing:
        _missing("the virtual microphone needs " + ", ".join(missing), "DYMN_REQUIRE_AUDIO",
                 "pulseaudio pulseaudio-utils libasound2-plugins libportaudio2")
    rundir = tempfile.mkdtemp(prefix="vmic-")  # short: a unix socket path must stay under 108 bytes
    mic = VirtualMic(rundir)
    mic.start()
    try:
        yield mic
    finally:
        mic.stop()
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture
def mqtt_broker(tmp_path):
    if shutil.which("mosquitto") is None:
        _missing("mosquitto is not installed", "DYMN_REQUIRE_MQTT", "mosquitto mosquitto-clients")
    pytest.importorskip("paho.mqtt.client", reason='paho-mqtt is not installed (pip install "dymn-edge[mqtt]")')
    broker = Broker(tmp_path, free_port())
    broker.start()
    yield broker
    broker.stop()


