"""The capture on CIFAR model-zoo architectures as their zoos write them: every weight layer's
incoming contributions plus bias give its pre-activation (float64), node counts are what the
architecture implies, and ResNet-18 at full width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ipg_gnn.provenance import CaptureConfig, IPGCapture
from tests.zoo import ZOO, resnet18

WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _randomise(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.double().eval()


def _users(root) -> dict:
    """How many autograd nodes consume each autograd node's output (its graph users)."""
    users: dict = {}
    stack, seen = [root], {root}
    while stack:
        for fn, _ in stack.pop().next_functions:
            if fn is not None:
                users[fn] = users.get(fn, 0) + 1
                if fn not in seen:
                    seen.add(fn)
                    stack.append(fn)
    return users


def preactivations(
    model: nn.Module, x: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per weight module, from forward hooks: (pre-activation summed over positions, bias summed
    over positions). A BatchNorm is folded in where the module's output, unmodified, is its
    input and has no other user (counted on the autograd graph)."""
    seen: dict[str, tuple] = {}

    def hook(path):
        def record(module, args, out):
            a = args[0] if isinstance(args[0], torch.Tensor) else None  # Root takes a list
            seen[path] = (
                module,
                a,
                None if a is None else a.clone(),
                out,
                out.clone(),
                out.grad_fn,
            )

        return record

    hooks = [
        m.register_forward_hook(hook(p))
        for p, m in model.named_modules()
        if isinstance(m, WEIGHT_MODULES + (nn.BatchNorm2d,))
    ]
    users = _users(model(x).grad_fn)
    for h in hooks:
        h.remove()
    result = {}
    for path, (module, _, _, out, value, grad_fn) in seen.items():
        if not isinstance(module, WEIGHT_MODULES):
            continue
        bias = torch.zeros(module.weight.shape[0], dtype=x.dtype)
        if module.bias is not None:
            bias = module.bias.detach().clone()
        bn = next(
            (
                m
                for m, a, a_value, *_ in seen.values()
                if isinstance(m, nn.BatchNorm2d) and a is out and torch.equal(a_value, value)
            ),
            None,
        )
        if bn is not None and users[grad_fn] == 1:
            with torch.no_grad():
                value = bn(value)
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            bias = (bias - bn.running_mean) * scale + bn.bias.detach()
        positions = value[0, 0].numel()
        result[path] = (
            value.detach().reshape(len(x), value.shape[1], -1).sum(-1),
            bias.detach() * positions,
        )
    return result


def check_conservation(model: nn.Module, x: torch.Tensor, adds: int) -> None:
    cap = IPGCapture(model, x[:1], CaptureConfig(mode="dense", include_input=True))
    ipg = cap(x)
    expected = preactivations(model, x)
    weight_units = sum(m.weight.shape[0] for m in model.modules() if isinstance(m, WEIGHT_MODULES))
    assert cap.plan.num_nodes == x.shape[1] + weight_units + adds  # input channels
    assert sorted(cap.plan.weight_layers()) == sorted(expected)
    dst = ipg.edge_index[1]
    incoming = torch.zeros(len(x), cap.plan.num_nodes, dtype=x.dtype)
    incoming.index_add_(1, dst, ipg.contribution)
    for name, (z_sum, bias_sum) in expected.items():
        layer = cap.plan.layer(name)
        got = incoming[:, layer.offset : layer.offset + layer.num_units] + bias_sum
        torch.testing.assert_close(got, z_sum, rtol=1e-9, atol=1e-9, msg=name)
    # Residual adds: identity edges whose contributions sum to the add's output.
    values = cap.record(x)
    for layer in cap.plan.layers:
        if layer.kind == "add":
            out = values[cap.plan.outputs[layer.name]]
            got = incoming[:, layer.offset : layer.offset + layer.num_units]
            torch.testing.assert_close(got, out.flatten(2).sum(-1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_is_captured_exactly(name):
    make, adds = ZOO[name]
    torch.manual_seed(0)
    model = _randomise(make())
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    check_conservation(model, x, adds)


def test_resnet18_full_width():
    torch.manual_seed(0)
    model = _randomise(resnet18(64))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    check_conservation(model, x, 64 * 2 + 128 * 2 + 256 * 2 + 512 * 2)
