"""IPG capture: contributions checked against a brute-force reference, sparsity modes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ipg_gnn.provenance import CaptureConfig, IPGCapture, UnsupportedOpError, capture
from ipg_gnn.targets import MLP, SmallCNN, SmallResNet


class StridedNet(nn.Module):
    """Strided, padded, dilated and non-square convs, then a Linear over a flattened map."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.LeakyReLU(0.1)
        self.c2 = nn.Conv2d(4, 5, (2, 3), stride=(2, 1), padding=(1, 0))
        self.flat = nn.Flatten()
        self.fc = nn.Linear(5 * 4 * 3, 6)

    def forward(self, x):
        return self.fc(self.flat(torch.tanh(self.c2(self.act(self.bn(self.c1(x)))))))


class BranchNet(nn.Module):
    """Conv1d branches joined by cat, a residual add over 2-D features, padding='same'."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 3, 3, padding="same")
        self.b = nn.Conv1d(2, 3, 5, stride=1, padding=2, bias=False)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.flatten(self.pool(F.gelu(torch.cat([self.a(x), self.b(x)], dim=1))), 1)
        return self.fc2(h + torch.relu(self.fc1(h)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def reference_contributions(module: nn.Module, a: torch.Tensor, bn: nn.Module | None):
    """Brute force: contrib[n, i, j] = sum over output positions and kernel offsets of
    W[i, j, k] * input window value, from an explicit unfold; and the folded bias per position."""
    w = module.weight.detach()
    b = module.bias.detach() if module.bias is not None else torch.zeros(w.shape[0])
    if bn is not None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        w = w * scale.reshape(-1, *[1] * (w.ndim - 1))
        b = (b - bn.running_mean) * scale + bn.bias.detach()
    if isinstance(module, nn.Linear):
        return torch.einsum("ij,nj->nij", w, a), b, 1
    if isinstance(module, nn.Conv1d):
        a, w = a.unsqueeze(2), w.unsqueeze(2)
        pad = module.padding if isinstance(module.padding, str) else (0, module.padding[0])
        stride, dil = (1, module.stride[0]), (1, module.dilation[0])
    else:
        pad, stride, dil = module.padding, module.stride, module.dilation
    if pad == "same":
        k = w.shape[-1]
        a = F.pad(a, ((k - 1) // 2, k // 2))
        pad = (0, 0)
    cols = F.unfold(a, w.shape[-2:], dilation=dil, padding=pad, stride=stride)
    n, _, positions = cols.shape
    cols = cols.reshape(n, w.shape[1], -1, positions)  # (n, Ci, K, L)
    contrib = torch.einsum("ijk,njkl->nij", w.reshape(w.shape[0], w.shape[1], -1), cols)
    return contrib, b, positions


def _flat_linear_reference(fc: nn.Linear, a: torch.Tensor, channels: int):
    w = fc.weight.detach().reshape(fc.out_features, channels, -1)
    return torch.einsum("icp,ncp->nic", w, a.reshape(len(a), channels, -1)), fc.bias.detach(), 1


# Input position of a source layer's first unit where `cat` puts it after another layer's units.
CAT_OFFSET = {("branch", "fc1", "b"): 3}

MODELS = [
    ("mlp", lambda: MLP((1, 12, 12), 10, widths=(20, 15)), (1, 12, 12)),
    ("cnn", lambda: SmallCNN((1, 16, 16), 10, channels=(4, 6)), (1, 16, 16)),
    ("resnet", lambda: SmallResNet((3, 16, 16), 10, widths=(4, 6, 8)), (3, 16, 16)),
    ("strided", StridedNet, (3, 11, 9)),
    ("branch", BranchNet, (2, 13)),
]


@pytest.mark.parametrize("name, make, shape", MODELS, ids=[m[0] for m in MODELS])
def test_dense_contributions_match_brute_force_and_sum_to_preactivation(name, make, shape):
    torch.manual_seed(0)
    model = _randomise_bn(make())
    x = torch.rand(3, *shape)
    inputs, outputs = {}, {}

    def record(path):
        def hook(module, args, out):
            inputs[path], outputs[path] = args[0], out

        return hook

    hooks = [
        m.register_forward_hook(record(p))
        for p, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.BatchNorm2d)
    ]
    model(x)
    for h in hooks:
        h.remove()
    cap = IPGCapture(model, x, CaptureConfig(mode="dense", include_input=True))
    ipg = cap(x)
    table = cap.plan.node_table()
    modules = dict(model.named_modules())
    checked = 0
    for layer in cap.plan.layers:
        if layer.kind not in ("linear", "conv"):
            continue
        module = modules[layer.name]
        bn = next(
            (
                modules[q]
                for q in modules
                if isinstance(modules[q], nn.BatchNorm2d) and inputs.get(q) is outputs[layer.name]
            ),
            None,
        )
        a = inputs[layer.name]
        if name == "strided" and layer.name == "fc":
            ref, bias, positions = _flat_linear_reference(module, a, 5)
        else:
            ref, bias, positions = reference_contributions(module, a, bn)
        z = outputs[layer.name] if bn is None else bn(outputs[layer.name])
        z_sum = z.reshape(3, z.shape[1], -1).sum(-1)
        # The invariant: incoming contributions plus bias give the pre-activation.
        torch.testing.assert_close(ref.sum(2) + bias * positions, z_sum, rtol=1e-4, atol=1e-4)
        dst_mask = (ipg.edge_index[1] >= layer.offset) & (
            ipg.edge_index[1] < layer.offset + layer.num_units
        )
        got = torch.zeros_like(ref)
        for e in torch.nonzero(dst_mask).flatten().tolist():
            src_layer, j = table[int(ipg.edge_index[0, e])]
            j += CAT_OFFSET.get((name, layer.name, src_layer), 0)
            i = int(ipg.edge_index[1, e]) - layer.offset
            got[:, i, j] += ipg.contribution[:, e]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked == sum(isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) for m in model.modules())


def test_residual_add_gets_identity_edges_that_sum_to_its_output():
    torch.manual_seed(0)
    model = _randomise_bn(SmallResNet((3, 16, 16), 10, widths=(4, 6, 8)))
    x = torch.rand(2, 3, 16, 16)
    cap = IPGCapture(model, x, CaptureConfig(mode="dense"))
    ipg, values = cap(x), cap.record(x)
    adds = [layer for layer in cap.plan.layers if layer.kind == "add"]
    assert len(adds) == 3
    for layer in adds:
        mask = (ipg.edge_index[1] >= layer.offset) & (
            ipg.edge_index[1] < layer.offset + layer.num_units
        )
        assert int(mask.sum()) == 2 * layer.num_units and bool((ipg.weight[mask] == 1).all())
        z = values[cap.plan.outputs[layer.name]]
        total = torch.zeros(2, layer.num_units).index_add_(
            1, ipg.edge_index[1, mask] - layer.offset, ipg.contribution[:, mask]
        )
        torch.testing.assert_close(total, z.flatten(2).sum(-1), rtol=1e-4, atol=1e-4)


def test_mlp_layout_node_table_and_features():
    torch.manual_seed(0)
    model = MLP((1, 4, 4), 3, widths=(5,)).eval()
    x = torch.rand(2, 1, 4, 4)
    cap = IPGCapture(model, x, CaptureConfig(mode="dense", include_input=True))
    assert [(lay.name, lay.num_units, lay.offset) for lay in cap.plan.layers] == [
        ("input", 16, 0),
        ("net.1", 5, 16),
        ("net.3", 3, 21),
    ]
    assert cap.plan.node_table()[17] == ("net.1", 1)
    ipg = cap(x)
    z = model.net[1](x.flatten(1))
    assert ipg.x.shape == (2, 24, 4) and ipg.contribution.shape == (2, 16 * 5 + 5 * 3)
    torch.testing.assert_close(ipg.x[:, 16:21, 0], z)
    torch.testing.assert_close(ipg.x[:, 16:21, 2], (z > 0).float())
    torch.testing.assert_close(ipg.x[:, :16, 0], x.flatten(1))
    assert ipg.x[0, :, 3].unique().tolist() == [0.0, 0.5, 1.0]
    without = IPGCapture(model, x, CaptureConfig(mode="dense"))
    assert without.plan.num_nodes == 8 and without(x).contribution.shape == (2, 15)


def test_static_and_dynamic_pick_top_k_of_dense():
    torch.manual_seed(0)
    model = MLP((1, 6, 6), 4, widths=(12, 8)).eval()
    calib, x = torch.rand(40, 1, 6, 6), torch.rand(5, 1, 6, 6)
    dense = capture(model, x, CaptureConfig(mode="dense", include_input=True))
    lookup = {tuple(e): i for i, e in enumerate(dense.edge_index.t().tolist())}
    static = capture(model, x, CaptureConfig(mode="static", k=3, include_input=True), calib)
    assert static.edge_index.shape == (2, 3 * (12 + 8 + 4))
    idx = torch.tensor([lookup[tuple(e)] for e in static.edge_index.t().tolist()])
    torch.testing.assert_close(static.contribution, dense.contribution[:, idx])
    torch.testing.assert_close(static.weight, dense.weight[idx])
    # The static edges of a unit are those of largest mean |contribution| on the calibration set.
    cal_dense = capture(model, calib, CaptureConfig(mode="dense", include_input=True))
    score = cal_dense.contribution.abs().mean(0)
    unit = 36 + 2  # third unit of the first hidden layer
    incoming = torch.nonzero(dense.edge_index[1] == unit).flatten()
    best = set(dense.edge_index[0, incoming[score[incoming].topk(3).indices]].tolist())
    assert set(static.edge_index[0, static.edge_index[1] == unit].tolist()) == best
    dynamic = capture(model, x, CaptureConfig(mode="dynamic", k=3, include_input=True))
    assert dynamic.edge_index.shape == (5, 2, 72) and dynamic.weight.shape == (5, 72)
    for n in range(5):
        incoming = torch.nonzero(dense.edge_index[1] == unit).flatten()
        top = incoming[dense.contribution[n, incoming].abs().topk(3).indices]
        mask = dynamic.edge_index[n, 1] == unit
        assert set(dynamic.edge_index[n, 0, mask].tolist()) == set(
            dense.edge_index[0, top].tolist()
        )
        assert sorted(dynamic.contribution[n, mask].tolist()) == sorted(
            dense.contribution[n, top].tolist()
        )
    data = dynamic.graph(2)
    assert data.edge_attr.shape == (72, 2) and data.num_nodes == 36 + 24


def test_static_mode_without_calibration_is_refused():
    model = MLP((1, 4, 4), 3, widths=(5,)).eval()
    with pytest.raises(ValueError, match="calibration"):
        capture(model, torch.rand(2, 1, 4, 4), CaptureConfig(mode="static"))
    with pytest.raises(ValueError, match="static, dynamic or dense"):
        CaptureConfig(mode="sparse")


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.soft = nn.Softmax(dim=1)

    def forward(self, x):
        return self.soft(self.fc(x))


def test_op_without_rule_names_op_and_module_path():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), _Head())
    with pytest.raises(UnsupportedOpError, match=r"Softmax at 2\.soft"):
        capture(model, torch.rand(2, 5), CaptureConfig(mode="dense"))

    class Mul(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(x) * x

    with pytest.raises(UnsupportedOpError, match="mul"):
        capture(Mul(), torch.rand(2, 5), CaptureConfig(mode="dense"))


def test_capture_refuses_bad_inputs_naming_the_input_and_the_expected_shape():
    torch.manual_seed(0)
    model = MLP((1, 4, 4), 3, widths=(5,)).eval()
    capturer = IPGCapture(model, torch.rand(1, 1, 4, 4), CaptureConfig(mode="dense"))
    x = torch.rand(6, 1, 4, 4)
    x[4, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"input 4 holds NaN or inf values \(1 inputs do\)"):
        capturer(x)
    with pytest.raises(ValueError, match=r"calibration inputs: input 4 holds NaN"):
        capturer.calibrate(x)
    with pytest.raises(
        ValueError, match=r"expected a batch of shape \(N, 1, 4, 4\), got \(6, 16\)"
    ):
        capturer(torch.rand(6, 16))
    with pytest.raises(ValueError, match="the batch is empty"):
        capturer(torch.rand(0, 1, 4, 4))
    with pytest.raises(ValueError, match="floating-point tensor, got torch.int64"):
        capturer(torch.zeros(2, 1, 4, 4, dtype=torch.long))


class SharedNormNet(nn.Module):
    """One BatchNorm module called after two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        return self.fc(torch.relu(self.bn(self.b(h))).mean((2, 3)))


def test_a_batchnorm_called_twice_is_folded_into_one_layer_only():
    """Folding records the BatchNorm as part of the layer's units (a repair of a unit frees its
    scale and shift), so one BatchNorm module may belong to one layer only; its second call is
    a unit-wise scaling, and the output is still reproduced."""
    model = _randomise_bn(SharedNormNet())
    x = torch.rand(2, 1, 6, 6)
    cap = IPGCapture(model, x, CaptureConfig(mode="dense"))
    assert {op.layer.name: op.norm for op in cap.plan.ops if op.weight is not None} == {
        "a": "bn",
        "b": None,
        "fc": None,
    }
    logits = cap(x).x[:, -2:, 0]
    torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
