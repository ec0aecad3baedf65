"""The fixtures' seeding recipe (shared/fixtures/efficientat/README.md, steps 1-4), re-run with our models.

dymn10's reference weights are not stored (42 MB); they are regenerated here and identified by
the sha256 of all state tensors' raw bytes in state-dict order (``generation_summary.json``).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from dymn_edge.train.models import build_model


def seeded_reference_model(config, inputs: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(config)  # step 1: EfficientAT's own init under seed 0
    gen = torch.Generator().manual_seed(1234)  # step 2: re-parameterise, modules in order
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    if hasattr(model, "set_temperature"):
        model.set_temperature(1.0)  # step 3
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:  # step 4: data-derived BN statistics from one float64 train-mode pass
        m.reset_running_stats()
        m.momentum = None
    model.double().train()
    with torch.no_grad():
        model(inputs.double())
    model.float().eval()
    for m in norms:
        m.momentum = 0.01
        m.num_batches_tracked.zero_()
    return model


def state_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
