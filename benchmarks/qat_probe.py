"""Probe, not a product feature: does quantization-aware fine-tuning lift mn04_as's INT8 agreement with its original FP32?

mn04_as is fine-tuned on the pool windows (the calibration audio) to reproduce its own FP32 logits
(MSE) while its conv/linear weights are fake-quantized per channel (int8, symmetric) and the outputs
of its BatchNorm, activation, pooling and linear modules per tensor (int8, ranges at the 0.01/99.99
percentiles of 32 windows); BN statistics stay frozen. The functional residual adds and SE products
are not simulated. The result is exported, calibrated with each backend's defaults (64 pool windows)
and compared on the 300 ESC-50 clips with the original FP32 model. About 8 minutes on 2 cores.

    python benchmarks/qat_probe.py [EPOCHS=3] [LR=2e-5] [PARAMS=all|affine] [BACKENDS=onnxruntime,onnxruntime+stem,openvino,tensorrt]

PARAMS=affine trains only BatchNorm scales/shifts and biases (fewer parameters, less drift).
A fifth argument, AUG=mixup, feeds every batch mixed with a shuffled copy of itself (log-mel mixup,
lambda ~ Beta(0.3, 0.3)) and rolled in time, with the FP32 teacher run on the mixed input, so
the 486 windows yield new inputs every epoch.
"""
import copy, logging, os, sys, time, tempfile, numpy as np, torch, torch.nn as nn
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared"))
os.chdir(REPO)
logging.basicConfig(level=logging.ERROR)
torch.manual_seed(0); torch.set_num_threads(2)
from dymn_edge.calibration.calibrate import calibrate_bundle
from dymn_edge.calibration.dataset import build_feature_set
from dymn_edge.calibration.validate import fidelity, labelled_metrics, run_model
from dymn_edge.export.onnx import export_bundle
from dymn_edge.runtime import load_bundle
from dymn_edge.train import save_checkpoint
from dymn_edge.train.checkpoint import load_checkpoint
EPOCHS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
LR = float(sys.argv[2]) if len(sys.argv) > 2 else 2e-5
PARAMS = sys.argv[3] if len(sys.argv) > 3 else "all"
BACKENDS = (sys.argv[4] if len(sys.argv) > 4 else "onnxruntime,onnxruntime+stem,openvino,tensorrt").split(",")
AUG = sys.argv[5] if len(sys.argv) > 5 else "none"
emb = load_bundle("runtime/assets/models/mn04_as")
loaded = load_checkpoint(str(SHARED) + "/weights/mn04_as_mAP_432.pt")
student = loaded.model.eval()
teacher = copy.deepcopy(student).eval()
pool = build_feature_set(str(SHARED) + "/data/pool", window_s=10.0, progress=False)
# Short clips give short windows: pad each to 1000 frames by looping (batching needs one length).
X = torch.from_numpy(np.concatenate([np.tile(f, (1, 1, 1, -(-1000 // f.shape[-1])))[..., :1000] for f in pool.features]))
print("pool windows", X.shape, flush=True)
with torch.no_grad():
    T = torch.cat([teacher(X[i:i+32])[0] for i in range(0, len(X), 32)])
# activation ranges: outputs of BN / activation / pooling leaf modules, percentile 99.99 on 32 windows
leaf_types = (nn.BatchNorm2d, nn.Hardswish, nn.ReLU, nn.Hardsigmoid, nn.AdaptiveAvgPool2d, nn.Linear)
stats = {}
def stat_hook(name):
    def h(m, i, o):
        v = o.detach().flatten().numpy()
        stats.setdefault(name, []).append(v[np.random.default_rng(0).integers(0, v.size, min(v.size, 200000))])
    return h
hs = [m.register_forward_hook(stat_hook(n)) for n, m in student.named_modules() if isinstance(m, leaf_types)]
with torch.no_grad():
    student(X[:32])
for h in hs: h.remove()
ranges = {n: (float(np.percentile(np.concatenate(v), 0.01)), float(np.percentile(np.concatenate(v), 99.99))) for n, v in stats.items()}
def fq_act(lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    zp = int(round(-128 - lo / scale))
    zp = max(-128, min(127, zp))
    def h(m, i, o):
        return torch.fake_quantize_per_tensor_affine(o, scale, zp, -128, 127)
    return h
def fq_weight_hook(m, args):
    w = m._orig_weight
    axis = 0
    amax = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-8)
    scale = (amax / 127.0).float()
    m.weight = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), axis, -127, 127)
qhooks = []
for n, m in student.named_modules():
    if isinstance(m, leaf_types) and n in ranges:
        qhooks.append(m.register_forward_hook(fq_act(*ranges[n])))
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        m._orig_weight = m.weight
        del m.weight
        m.weight = m._orig_weight.detach()
        qhooks.append(m.register_forward_pre_hook(fq_weight_hook))
params = [m._orig_weight for m in student.modules() if hasattr(m, "_orig_weight")] + [p for n, p in student.named_parameters()]
params = list({id(p): p for p in params}.values())
if PARAMS == "affine":
    params = [p for n, p in student.named_parameters() if n.endswith("bias") or ".bn" in n or isinstance(
        student.get_submodule(n.rsplit(".", 1)[0]), nn.BatchNorm2d)]
    print("training", sum(p.numel() for p in params), "affine parameters", flush=True)
opt = torch.optim.Adam(params, lr=LR)
def err():
    with torch.no_grad():
        S = torch.cat([student(X[i:i+32])[0] for i in range(0, len(X), 32)])
    top = lambda a: torch.topk(a, 5, dim=1).indices
    agree = np.mean([len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(top(S), top(T))])
    return float(((S - T) ** 2).mean()), agree
print("fake-quant before training: mse, top5 agreement on pool", err(), flush=True)
g = torch.Generator().manual_seed(0)
for ep in range(EPOCHS):
    t0 = time.time(); perm = torch.randperm(len(X), generator=g); tot = 0
    for i in range(0, len(X), 16):
        idx = perm[i:i+16]
        x, t = X[idx], T[idx]
        if AUG == "mixup":
            lam = torch.distributions.Beta(0.3, 0.3).sample((len(idx), 1, 1, 1))
            x = lam * x + (1 - lam) * x[torch.randperm(len(idx), generator=g)]
            x = torch.roll(x, int(torch.randint(0, x.shape[-1], (1,), generator=g)), dims=-1)
            with torch.no_grad():
                t = teacher(x)[0]
        s = student(x)[0]
        loss = ((s - t) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); tot += float(loss) * len(idx)
    print(f"epoch {ep} loss {tot/len(X):.4f} {time.time()-t0:.0f}s  fq eval {err()}", flush=True)
# The simulation itself on the held-out clips: how far does it predict what the backend's INT8 will do?
from dymn_edge.runtime.metrics import top5_overlap
esc = build_feature_set(str(SHARED) + "/data/esc50/labels.csv", window_s=10.0, labels=emb.labels, progress=False)
with torch.no_grad():
    sim = np.concatenate([student(torch.from_numpy(f))[0].numpy() for f in esc.features])
    orig = np.concatenate([teacher(torch.from_numpy(f))[0].numpy() for f in esc.features])
print(f"simulated INT8 vs original FP32 on ESC-50: top-5 agreement {top5_overlap(orig, sim).mean():.3f}", flush=True)
for h in qhooks: h.remove()
for m in student.modules():
    if hasattr(m, "_orig_weight"):
        w = m._orig_weight; del m.weight; m.weight = w; del m._orig_weight
work = Path(tempfile.mkdtemp())
save_checkpoint(student, work / "qat.pt")
fp = export_bundle(load_checkpoint(work / "qat.pt"), work / "qat", name="mn04_as_qat", include_checkpoint=False, labels=emb.labels)
ref = run_model(emb, esc, timed_runs=0)
qfp = run_model(fp, esc, timed_runs=0)
print("QAT FP32 vs original FP32:", round(fidelity(ref, qfp)["top5_agreement"], 3), labelled_metrics(qfp.scores, esc.targets)["top5_hit"], labelled_metrics(qfp.scores, esc.targets)["map"], flush=True)
for b, keep in [(b.split("+")[0], b.split("+")[1:]) for b in BACKENDS]:
    out = calibrate_bundle(fp, str(SHARED) + "/data/pool", work / f"i8-{b}-{len(keep)}", backend=b, keep_fp=keep, samples=64, scope="all", progress=False)
    run = run_model(out, esc, backend="onnxruntime" if b == "tensorrt" else b, timed_runs=0)
    m = labelled_metrics(run.scores, esc.targets)
    print(f"INT8 {b} keep={keep}: vs original FP32 {fidelity(ref, run)['top5_agreement']:.3f}, vs QAT FP32 {fidelity(qfp, run)['top5_agreement']:.3f}, hit {m['top5_hit']:.3f} mAP {m['map']:.4f}", flush=True)
