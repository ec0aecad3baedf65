"""Run the `dymn-edge` CLI in a fresh process that reports its own peak memory and CPU time at exit.

Shared by the benchmark scripts: the child prints one line ``BENCH {json}`` on stderr after the
command finished (peak RSS as VmHWM, which covers anonymous and file-backed pages; user+system
CPU seconds; whether torch was ever imported). The parent only spawns it, so none of its own
memory is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys

__all__ = ["child_report", "spawn_cli"]

_CHILD = """
import atexit, json, os, sys
from dymn_edge.bench_worker import peak_rss_mb
def report():
    t = os.times()
    print("BENCH " + json.dumps({"peak_rss_mb": peak_rss_mb(), "process_cpu_s": t.user + t.system,
                                "torch_loaded": "torch" in sys.modules}), file=sys.stderr)
atexit.register(report)
from dymn_edge.cli import main
sys.argv = ["dymn-edge", *json.loads(sys.argv[1])]
main()
"""


def spawn_cli(args: list[str], **popen) -> subprocess.Popen:
    """Start ``dymn-edge ARGS...`` in the reporting child (Popen keyword arguments pass through)."""
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps([str(a) for a in args])], **popen)


def child_report(stderr: str) -> dict:
    """The child's BENCH report from its stderr."""
    return json.loads(next(line[6:] for line in stderr.splitlines() if line.startswith("BENCH ")))
