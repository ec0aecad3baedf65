"""One benchmark candidate in its own process: load, warm up, then time runs on request.

Run by ``dymn_edge.benchmark``; speaks JSON lines on stdin/stdout. A bundle candidate imports
only the torch-free runtime, so its peak RSS is what a device running that bundle would see;
a torch candidate (the eager reference) imports dymn_edge.train.

Protocol: the worker prints {"ready": ...} once loaded, then answers each {"runs": N} with
{"ms": [...]} and {"stop": true} with {"peak_rss_mb": ...}.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def features(window_s: float, batch: int) -> np.ndarray:
    from dymn_edge.runtime.audio import load_audio, seconds_to_samples
    from dymn_edge.runtime.frontend import log_mel
    from dymn_edge.runtime.registry import demo_clip_path

    wave = load_audio(demo_clip_path())
    need = seconds_to_samples(window_s)
    wave = np.tile(wave, need // len(wave) + 1)[:need]  # real audio, looped to the window length
    return np.repeat(log_mel(wave)[None, None], batch, axis=0)


def _runner(spec: dict, x: np.ndarray):
    """(run once, name of the model file that runs)."""
    if spec["kind"] == "torch":
        import torch

        from dymn_edge.train.checkpoint import load_checkpoint

        torch.set_num_threads(spec["threads"])
        model = load_checkpoint(spec["path"], temperature=spec.get("temperature")).model
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                model(xt)

        return run, Path(spec["path"]).name, None
    from dymn_edge.runtime.backends import create_backend
    from dymn_edge.runtime.bundle import load_bundle

    backend = create_backend(spec["backend"], load_bundle(spec["path"]), threads=spec["threads"])
    path = getattr(backend, "model_path", None)
    # ONNX Runtime's providers: with onnxruntime-gpu the "onnxruntime" rows run on CUDA, not on --threads CPU threads
    return (lambda: backend.infer(x)), (Path(path).name if path else None), getattr(backend, "providers", None)


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    VmHWM, not getrusage: Linux carries ru_maxrss across exec from the parent that forked us
    (with torch loaded, ~700 MB), while VmHWM belongs to this address space alone.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    spec = json.loads(sys.argv[1])
    x = features(spec["window_s"], spec["batch"])
    run, model_file, providers = _runner(spec, x)
    for _ in range(spec.get("warmup", 5)):
        run()
    print(json.dumps({"ready": True, "torch_loaded": "torch" in sys.modules, "model_file": model_file, "providers": providers}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("stop"):
            break
        times = []
        for _ in range(request["runs"]):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
        print(json.dumps({"ms": times}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
