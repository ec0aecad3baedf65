"""Real peers for the streaming tests and benchmarks: a PulseAudio virtual microphone, a mosquitto
broker and an MQTT subscriber, following shared/RECIPES.md (verified on these machines)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

_ALSA_VMIC = """pcm.vmic {
    type pulse
    device "vmic.monitor"
    hint { show on  description "dymn-edge test microphone (PulseAudio vmic.monitor)" }
}
"""


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _terminate(proc: subprocess.Popen | None) -> None:
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class VirtualMic:
    """A private PulseAudio with a null sink ``vmic``; its monitor is the microphone ``vmic``."""

    def __init__(self, rundir: str) -> None:
        self.rundir = rundir
        self.socket = os.path.join(rundir, "native")
        conf = os.path.join(rundir, "vmic.conf")
        with open(conf, "w") as f:
            f.write(_ALSA_VMIC)
        self.env = {"PULSE_SERVER": "unix:" + self.socket, "ALSA_CONFIG_PATH": "/usr/share/alsa/alsa.conf:" + conf}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        env = {**os.environ, **self.env, "XDG_RUNTIME_DIR": self.rundir, "HOME": self.rundir}
        log = open(os.path.join(self.rundir, "pulse.log"), "a")
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--log-target=stderr",
             "-L", f"module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
             "-L", "module-null-sink sink_name=vmic rate=48000 channels=1", "-L", "module-always-sink"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self.proc.returncode}; see {self.rundir}/pulse.log")
            if subprocess.run(["pactl", "info"], env={**os.environ, **self.env}, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("pulseaudio did not answer `pactl info`")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """The device disappears; start() brings it back."""
        self.proc.send_signal(sig)
        self.proc.wait(5)

    def stop(self) -> None:
        _terminate(self.proc)

    def play(self, path, wait: bool = True) -> subprocess.Popen:
        """Play a real recording (any format and rate libsndfile reads) into the microphone."""
        proc = subprocess.Popen(["paplay", "--device=vmic", str(path)], env={**os.environ, **self.env}, stdin=subprocess.DEVNULL)
        if wait:
            proc.wait(60)
        return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1 with persistence saved on every change, so sessions survive SIGKILL."""

    def __init__(self, workdir, port: int) -> None:
        self.workdir, self.port, self.proc = str(workdir), port, None
        self.conf = os.path.join(self.workdir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            # `user root`: as root, mosquitto would drop to user mosquitto and fail to save into this folder.
            f.write(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {self.workdir}/\nautosave_interval 1\nautosave_on_changes true\n"
                    "log_dest stderr\nlog_type all\n")

    def start(self, timeout: float = 10.0) -> None:
        log = open(os.path.join(self.workdir, "mosquitto.log"), "a")
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see {self.workdir}/mosquitto.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        _terminate(self.proc)


class Subscriber:
    """A durable (clean_session=False) QoS 1 subscriber that collects JSON payloads."""

    def __init__(self, port: int, topic: str) -> None:
        import json
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, u, m: self._add(json.loads(m.payload))
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def _add(self, payload: dict) -> None:
        with self._lock:
            self.messages.append(payload)

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        def check():
            with self._lock:
                return predicate(list(self.messages))

        return wait_until(check, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
