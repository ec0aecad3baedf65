"""MobileNetV3 and DyMN against EfficientAT's own layouts and outputs (shared/fixtures/efficientat)."""

import json

import numpy as np
import pytest
import torch

from dymn_edge.train.layers import DynamicConv, scheduled_temperature
from dymn_edge.train.models import DyMNConfig, MNConfig, build_model, create_model, parse_model_name
from seeded_models import seeded_reference_model, state_sha256

LAYOUTS = {
    "dymn04": DyMNConfig(width_mult=0.4),
    "dymn10": DyMNConfig(width_mult=1.0),
    "dymn20": DyMNConfig(width_mult=2.0),
    "mn04": MNConfig(width_mult=0.4),
    "mn10": MNConfig(width_mult=1.0),
    "mn10_c50": MNConfig(width_mult=1.0, num_classes=50),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_state_dict_layout_equals_efficientat(fixtures_dir, name):
    reference = json.loads((fixtures_dir / f"state_dict_{name}.json").read_text())
    with torch.device("meta"):
        model = build_model(LAYOUTS[name])
    ours = model.state_dict()
    assert list(ours) == list(reference["state_dict"])  # same keys, same order
    for key, entry in reference["state_dict"].items():
        assert list(ours[key].shape) == entry["shape"], key
        assert str(ours[key].dtype).replace("torch.", "") == entry["dtype"], key
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]
    assert len(ours) == reference["num_state_dict_entries"]


@pytest.mark.parametrize("name", ["dymn04", "dymn10"])
def test_dynamic_block_context_sizes(fixtures_dir, name):
    arch = json.loads((fixtures_dir / f"state_dict_{name}.json").read_text())["architecture"]
    with torch.device("meta"):
        model = build_model(LAYOUTS[name])
    assert [layer.context_dim for layer in model.layers] == [b["context_dim"] for b in arch["blocks"]]
    assert [layer.use_res_connect for layer in model.layers] == [b["residual"] for b in arch["blocks"]]


def _run(model, x):
    with torch.no_grad():
        logits, embedding = model(torch.from_numpy(x))
    return logits.numpy(), embedding.numpy()


def _load(config, path):
    model = build_model(config)
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def dymn04(fixtures_dir):
    model = _load(LAYOUTS["dymn04"], fixtures_dir / "dymn04_reference_weights.pt")
    model.set_temperature(1.0)
    return model, np.load(fixtures_dir / "dymn04_reference.npz")


def test_mn04_reproduces_reference(fixtures_dir):
    ref = np.load(fixtures_dir / "mn04_reference.npz")
    model = _load(LAYOUTS["mn04"], fixtures_dir / "mn04_reference_weights.pt")
    logits, embedding = _run(model, ref["input"])
    assert np.abs(logits - ref["logits"]).max() < 1e-5  # MN models reach 1e-5
    assert np.abs(embedding - ref["embedding"]).max() < 1e-4
    with torch.no_grad():
        _, fmaps = model(torch.from_numpy(ref["input"]), return_fmaps=True)
    for i, fmap in enumerate(fmaps):
        assert list(fmap.shape) == list(ref[f"fmap_shape/{i:02d}"])
        assert np.abs(fmap.mean((2, 3)).numpy() - ref[f"fmap_chmean/{i:02d}"]).max() < 1e-5
    model.double()
    with torch.no_grad():
        logits64, _ = model(torch.from_numpy(ref["input"]).double())
    assert np.abs(logits64.numpy() - ref["logits_float64"]).max() < 1e-6


def test_dymn04_reproduces_reference_at_t1(dymn04):
    model, ref = dymn04
    assert float(ref["temperature"]) == model.temperature == 1.0
    logits, embedding = _run(model, ref["input"])
    assert np.abs(logits - ref["logits"]).max() < 1e-4
    assert np.abs(embedding - ref["embedding"]).max() < 2e-4
    with torch.no_grad():
        _, fmaps = model(torch.from_numpy(ref["input"]), return_fmaps=True)
    assert len(fmaps) == 17
    for i, fmap in enumerate(fmaps):
        assert list(fmap.shape) == list(ref[f"fmap_shape/{i:02d}"])
        assert np.abs(fmap.mean((2, 3)).numpy() - ref[f"fmap_chmean/{i:02d}"]).max() < 5e-4


def test_dymn04_attention_over_kernels(dymn04):
    model, ref = dymn04
    names = [str(n) for n in ref["attention_module_names"]]
    modules = dict(model.named_modules())
    assert len(names) == 44 and all(isinstance(modules[n], DynamicConv) for n in names)
    captured = {}
    hooks = [
        modules[n].register_forward_pre_hook(lambda m, args, n=n: captured.__setitem__(n, m.attention(args[1][0]).detach()))
        for n in names
    ]
    try:
        _run(model, ref["input"])
    finally:
        for h in hooks:
            h.remove()
    for n in names:
        assert np.abs(captured[n].numpy() - ref[f"attention/{n}"]).max() < 1e-4, n


def test_dymn04_temperature_cases(dymn04):
    model, ref = dymn04
    try:
        model.set_temperature(30.0)  # a freshly built DyMN's temperature
        logits, embedding = _run(model, ref["input"])
        assert np.abs(logits - ref["logits_T30"]).max() < 1e-4
        assert np.abs(embedding - ref["embedding_T30"]).max() < 2e-4
        model.update_params(10)
        assert model.temperature == float(ref["temperature_epoch10"]) == 20.0
        logits, _ = _run(model, ref["input"])
        assert np.abs(logits - ref["logits_epoch10"]).max() < 1e-4
    finally:
        model.set_temperature(1.0)


def test_dymn04_float64_matches_float64_reference(dymn04, fixtures_dir):
    model = _load(LAYOUTS["dymn04"], fixtures_dir / "dymn04_reference_weights.pt").double()
    model.set_temperature(1.0)
    ref = dymn04[1]
    with torch.no_grad():
        logits, embedding = model(torch.from_numpy(ref["input"]).double())
    assert np.abs(logits.numpy() - ref["logits_float64"]).max() < 1e-6
    assert np.abs(embedding.numpy() - ref["embedding_float64"]).max() < 1e-6


@pytest.mark.parametrize(
    "name, config, sha_prefix",
    [
        ("mn04", MNConfig(width_mult=0.4), "27cd3885"),
        ("dymn04", DyMNConfig(width_mult=0.4), "216d5934"),
        ("dymn10", DyMNConfig(width_mult=1.0), "d17a1f6a"),
    ],
)
def test_seeding_recipe_regenerates_reference_weights(fixtures_dir, name, config, sha_prefix):
    """Our constructors draw the RNG exactly as EfficientAT's, so the recipe rebuilds the weights bit for bit."""
    summary = json.loads((fixtures_dir / "generation_summary.json").read_text())[name]
    ref = np.load(fixtures_dir / f"{name}_reference.npz")
    model = seeded_reference_model(config, torch.from_numpy(ref["input"]))
    assert state_sha256(model) == summary["state_sha256_concat"]
    assert summary["state_sha256_concat"].startswith(sha_prefix)
    logits, embedding = _run(model, ref["input"])
    assert np.abs(logits - ref["logits"]).max() < 1e-4
    assert np.abs(embedding - ref["embedding"]).max() < 2e-4


def test_temperature_schedule_matches_efficientat_table(fixtures_dir):
    table = json.loads((fixtures_dir / "generation_summary.json").read_text())["dymn_temperature_schedule_default"]
    for epoch, expected in table.items():
        assert scheduled_temperature(int(epoch)) == pytest.approx(float(expected))
    model = create_model("dymn04")
    assert model.temperature == 30.0  # fresh models start hot
    model.update_params(29)
    assert all(m.temperature == 1.0 for m in model.dynamic_convs())
    with pytest.raises(ValueError, match="positive"):
        model.set_temperature(0)


@pytest.mark.parametrize(
    "config",
    [
        DyMNConfig(width_mult=0.4, use_dy_blocks="replace_se"),
        DyMNConfig(width_mult=0.4, no_dyrelu=True, no_ca=True, dyconv_k=2),
        DyMNConfig(width_mult=0.4, no_dyconv=True, head_type="fully_convolutional"),
        DyMNConfig(width_mult=0.4, strides=(2, 2, 1, 1), dilated=True, reduced_tail=True, dyrelu_k=3),
        MNConfig(width_mult=0.4, se_dims="cft", se_agg="avg", head_type="multihead_attention_pooling"),
        MNConfig(width_mult=0.4, se_dims="none", strides=(2, 1, 2, 1)),
    ],
)
def test_every_block_option_builds_and_runs(config):
    torch.manual_seed(0)
    model = build_model(config).eval()
    x = torch.randn(2, 1, 128, 1000) * 0.3
    with torch.no_grad():
        logits, embedding = model(x)
    assert logits.shape == (2, 527) and torch.isfinite(logits).all()
    assert embedding.shape == (2, model.embedding_dim)


def test_variable_length_input_and_batch_one():
    model = create_model("dymn04").eval()
    with torch.no_grad():
        for frames in (1, 37, 500):
            logits, embedding = model(torch.randn(1, 1, 128, frames) * 0.1)
            assert logits.shape == (1, 527) and embedding.shape == (1, 384)


def test_model_names_and_config_validation():
    assert parse_model_name("dymn10").width_mult == 1.0 and parse_model_name("mn04_as").family == "mn"
    assert create_model("mn04", num_classes=10).classifier[5].out_features == 10
    with pytest.raises(ValueError, match="cannot parse model name"):
        parse_model_name("resnet50")
    with pytest.raises(ValueError, match="use_dy_blocks"):
        DyMNConfig(use_dy_blocks="some")
    with pytest.raises(ValueError, match="strides"):
        MNConfig(strides=(2, 2, 3, 2))
    with pytest.raises(ValueError, match="head_type"):
        DyMNConfig(head_type="multihead_attention_pooling")
