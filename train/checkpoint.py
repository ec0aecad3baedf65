"""Load EfficientAT (and dymn-edge) checkpoints safely, inferring the architecture from the file.

``torch.load(weights_only=True)`` refuses pickles that carry code. The architecture (family,
width, classes, head, block options) is read off the state-dict shapes, then checked by a
strict load, so ``--model some.pt`` just works and a wrong file fails with a message that
names the file and what did not match.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from dymn_edge.runtime.checksum import sha256_file
from dymn_edge.runtime.errors import CheckpointError

from .layers.helpers import make_divisible
from .models import DyMNConfig, MNConfig, ModelConfig, build_model, config_from_dict

__all__ = ["LoadedModel", "infer_config", "load_checkpoint", "read_state_dict", "save_checkpoint"]

logger = logging.getLogger(__name__)

# Widths EfficientAT publishes, tried first; any other width is found by search.
KNOWN_WIDTHS = (0.1, 0.2, 0.4, 0.5, 1.0, 2.0, 3.0, 4.0)
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "model.", "net.")
# Temperature of trained (AudioSet) DyMNs; EfficientAT sets it when loading pretrained weights.
PRETRAINED_TEMPERATURE = 1.0


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    path: Path
    sha256: str
    temperature: float | None = None


_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins")


def _pickled_globals(path: Path) -> list[str]:
    """Python callables a checkpoint's pickle would import: what weights_only refuses.

    Zip checkpoints are scanned by torch itself; a bare or legacy pickle by walking its opcodes
    (``pickletools``), which reads the stream without executing anything.
    """
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (ValueError, RuntimeError, zipfile.BadZipFile):
            return []
    found, strings = [], []
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            while f.tell() < size:  # legacy torch.save files hold several pickles back to back
                for opcode, arg, _ in pickletools.genops(f):
                    if isinstance(arg, str):
                        strings.append(arg)
                    if opcode.name in ("GLOBAL", "INST"):
                        found.append(arg.replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
        pass  # not a pickle past this point: report what was found before it
    return [g for g in found if not g.startswith(_SAFE_MODULES)]


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _pickled_globals(path)
        if unsafe:
            raise CheckpointError(
                f"{path}: refused: the file carries Python objects that would run code when loaded "
                f"({', '.join(sorted(set(unsafe))[:3])}). Only plain state dicts of tensors are accepted."
            ) from e
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (the pickle stream is invalid: {_last_line(e)})") from e
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, ImportError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, or truncated ({type(e).__name__}: {_last_line(e)})") from e


def _last_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and "documentation" not in line]
    return lines[-1] if lines else type(e).__name__


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's state dict and any metadata saved beside it.

    Accepts a plain state dict (EfficientAT's releases), a dict wrapping it under ``state_dict``,
    ``model`` or ``model_state_dict`` (ours, Lightning, common training loops), and strips a
    ``module.`` / ``model.`` / ``net.`` prefix shared by every key (DataParallel, Lightning).

    Returns:
        (state dict, metadata dict: the wrapper's other entries, e.g. ``config``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    obj = _torch_load(path)
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                meta = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (parameter names -> tensors), got {type(obj).__name__}")
    non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"{path}: expected a state dict of tensors; {non_tensors[0]!r} is {type(obj[non_tensors[0]]).__name__}")
    state = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, meta


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    return tuple(state[key].shape) if key in state else None


def _guess_family(state: Mapping[str, torch.Tensor], path: Path) -> str:
    if any(k.startswith("features.") for k in state):
        return "mn"
    if any(k.startswith("layers.") for k in state) and any(k.startswith("in_c.") for k in state):
        return "dymn"
    sample = ", ".join(list(state)[:3])
    raise CheckpointError(
        f"{path}: not an EfficientAT MobileNetV3 or DyMN state dict (keys start {sample}); "
        "expected 'features.*' (mn) or 'layers.*' with 'in_c.*' (dymn)"
    )


def _head(state: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    if "classifier.5.weight" in state:
        return "mlp", state["classifier.5.weight"].shape[0]
    if "classifier.subspace_proj.weight" in state:
        heads = state["classifier.head_weight"].shape[1] if "classifier.head_weight" in state else 4
        return "multihead_attention_pooling", state["classifier.subspace_proj.weight"].shape[0] // (2 * heads)
    if "classifier.0.weight" in state and state["classifier.0.weight"].dim() == 4:
        return "fully_convolutional", state["classifier.0.weight"].shape[0]
    raise CheckpointError("no classifier found (expected 'classifier.5.*', 'classifier.0.*' or 'classifier.subspace_proj.*')")


def _width_candidates(last_out: int) -> list[float]:
    """Widths whose last block has ``last_out`` channels: the published ones first, then a fine grid."""
    grid = [round(0.05 * i, 2) for i in range(1, 161)]
    ordered = list(KNOWN_WIDTHS) + [w for w in grid if w not in KNOWN_WIDTHS]
    return [w for w in ordered if make_divisible(160 * w, 8) == last_out or make_divisible(80 * w, 8) == last_out]


def _family_options(family: str, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    if family == "mn":
        se_layers = {k.split(".conc_se_layers.")[1].split(".")[0] for k in state if ".conc_se_layers." in k}
        options: dict[str, Any] = {}
        if not se_layers:
            options["se_dims"] = "none"
        elif len(se_layers) > 1:  # which dimensions, in which order: tried one by one against the shapes
            options["se_dims"] = ["".join(p) for p in itertools.permutations("cft", len(se_layers))]
        if "classifier.head_weight" in state:
            options["multihead_attention_heads"] = state["classifier.head_weight"].shape[1]
        return options
    options = {}
    dynamic_block = next((k.split(".")[1] for k in state if k.endswith(".context_gen.joint_conv.weight")), None)
    if dynamic_block is None:
        return options  # no dynamic block at all: the shape check reports what is wrong
    prefix = f"layers.{dynamic_block}."
    if prefix + "depth_conv.module.weight" in state:
        options["no_dyconv"] = True
    elif prefix + "depth_conv.weight" in state:
        options["dyconv_k"] = state[prefix + "depth_conv.weight"].shape[2]
    if prefix + "depth_act.coef_net.0.weight" in state:
        channels = state[prefix + "depth_norm.weight"].shape[0]
        options["dyrelu_k"] = state[prefix + "depth_act.coef_net.0.weight"].shape[0] // (2 * channels)
    else:
        options["no_dyrelu"] = True
    if any(k.startswith("layers.") and ".block." in k for k in state):
        options["use_dy_blocks"] = "replace_se"
    return options


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """First difference between a model's state dict and ``state``, as a sentence, or None."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        return f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
    if unexpected:
        return f"unexpected key {unexpected[0]!r}" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
    for key, tensor in expected.items():
        if tuple(tensor.shape) != tuple(state[key].shape):
            return f"key {key!r} has shape {list(state[key].shape)}, the architecture expects {list(tensor.shape)}"
    return None


def _meta_model(config: ModelConfig) -> nn.Module:
    with torch.device("meta"):
        return build_model(config)


def infer_config(state: Mapping[str, torch.Tensor], path: str | Path = "<state dict>") -> ModelConfig:
    """Find the architecture whose state-dict keys and shapes equal ``state``'s.

    Raises:
        CheckpointError: naming the file and the first key that no candidate architecture matched.
    """
    path = Path(path)
    family = _guess_family(state, path)
    try:
        head_type, num_classes = _head(state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    final_conv = "features.16.0.weight" if family == "mn" else "out_c.0.weight"  # input = last block's output
    if final_conv not in state:
        raise CheckpointError(f"{path}: missing {final_conv!r}, the final 1x1 convolution of every {family} model")
    last_out = state[final_conv].shape[1]
    candidates = _width_candidates(last_out)
    if not candidates:
        raise CheckpointError(f"{path}: last block has {last_out} channels, which no width multiplier produces")
    cls = MNConfig if family == "mn" else DyMNConfig
    options = _family_options(family, state)
    se_choices = options.pop("se_dims", None)
    se_choices = [se_choices] if isinstance(se_choices, str) else se_choices or [None]
    base = dict(num_classes=num_classes, head_type=head_type, **options)
    first_problem = None
    for width, reduced_tail, se_dims in itertools.product(candidates, (False, True), se_choices):
        extra = {} if se_dims is None else {"se_dims": se_dims}
        try:
            config = cls(width_mult=width, reduced_tail=reduced_tail, **base, **extra)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
        problem = _mismatch(_meta_model(config), state)
        if problem is None:
            return config
        if first_problem is None:
            first_problem = f"as {config.name} ({family}, width {width}, {num_classes} classes, {head_type} head): {problem}"
    raise CheckpointError(f"{path}: state dict matches no EfficientAT {family} architecture; {first_problem}")


def load_checkpoint(
    path: str | Path,
    *,
    expect: Mapping[str, Any] | None = None,
    temperature: float | None = None,
) -> LoadedModel:
    """Load a checkpoint into the architecture it describes, strictly, in eval mode.

    Args:
        path: a ``.pt`` file (EfficientAT release, or one saved by ``save_checkpoint``).
        expect: architecture facts the caller relies on, e.g. ``{"family": "mn", "width_mult": 0.4,
            "num_classes": 527}`` for a registry name; a difference raises CheckpointError.
        temperature: DyMN attention temperature; default: the one saved with the checkpoint, else 1.0
            (EfficientAT's value for trained models).

    Raises:
        FileNotFoundError, CheckpointError.
    """
    path = Path(path)
    state, meta = read_state_dict(path)
    if isinstance(meta.get("config"), Mapping):
        try:
            config = config_from_dict(meta["config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: invalid saved config: {e}") from e
    else:
        config = infer_config(state, path)
    for key, want in (expect or {}).items():
        have = config.family if key == "family" else getattr(config, key)
        if have != want:
            raise CheckpointError(f"{path}: expected {key}={want!r} but the checkpoint is {key}={have!r} ({config.name})")
    model = build_model(config)
    problem = _mismatch(model, state)
    if problem:
        raise CheckpointError(f"{path}: does not fit {config.name}: {problem}")
    model.load_state_dict(state, strict=True)
    model.eval()
    if hasattr(model, "set_temperature"):
        temperature = temperature if temperature is not None else float(meta.get("temperature", PRETRAINED_TEMPERATURE))
        model.set_temperature(temperature)
    logger.info("loaded %s: %s, %d classes, %s head", path, config.name, config.num_classes, config.head_type)
    return LoadedModel(model, config, path, sha256_file(path), temperature)


def save_checkpoint(model: nn.Module, path: str | Path, **extra: Any) -> None:
    """Save the state dict (EfficientAT's key layout) wrapped with our config, so no shape guessing is needed."""
    payload: dict[str, Any] = {"state_dict": model.state_dict(), "config": model.config.to_dict(), **extra}
    if hasattr(model, "temperature") and model.temperature is not None:
        payload.setdefault("temperature", float(model.temperature))
    torch.save(payload, path)
