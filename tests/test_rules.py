"""Single rules of the capture registry, each against a hand computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ipg_gnn.provenance import (
    CaptureConfig,
    IPGCapture,
    LayerKind,
    UnsupportedOpError,
    capture,
    trace,
)
from ipg_gnn.provenance.rules import RULES, op_name
from ipg_gnn.targets import MLP


def test_grouped_conv_edges_stay_in_group_and_match_brute_force():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    x = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    ipg = capture(conv, x, CaptureConfig(mode="dense", include_input=True))
    src, dst = ipg.edge_index[0], ipg.edge_index[1] - 4
    # Output channel i (group i // 3) receives from input channels 2 (i // 3), 2 (i // 3) + 1 only.
    assert sorted(zip(src.tolist(), dst.tolist(), strict=True)) == [
        (j, i) for j in range(4) for i in range(6) if j // 2 == i // 3
    ]
    for e in range(len(src)):
        j, i = int(src[e]), int(dst[e])
        alone = torch.zeros_like(x)
        alone[:, j] = x[:, j]  # contribution of j: the conv of j alone, without bias
        out = F.conv2d(alone, conv.weight, None, padding=1, groups=2)[:, i].sum((1, 2))
        torch.testing.assert_close(ipg.contribution[:, e], out, rtol=1e-12, atol=1e-12)


def test_channel_shuffle_permutes_source_nodes():
    class Shuffle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 6, 1)
            self.b = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            out = self.a(x)
            n, c, h, w = out.size()
            out = out.view(n, 3, c // 3, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
            return self.b(out)

    plan = trace(Shuffle(), torch.rand(1, 2, 3, 3))
    # Channels (0..5) in 3 groups of 2 interleave: 0, 2, 4, 1, 3, 5 (nodes of `a` start at 0).
    assert plan.op("b").src_nodes.tolist() == [0, 2, 4, 1, 3, 5]


def test_gate_keeps_carrier_units_and_unrelated_product_is_refused():
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.se = nn.Conv2d(4, 4, 1)
            self.b = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            out = self.a(x)
            out = out * torch.sigmoid(self.se(out.mean((2, 3), keepdim=True)))
            return self.b(out * 2)

    plan = trace(Gated(), torch.rand(1, 3, 4, 4))
    assert [layer.name for layer in plan.layers] == ["a", "se", "b"]
    assert plan.op("b").src_nodes.tolist() == [0, 1, 2, 3]  # from `a`, not from the gate

    class Product(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.a(x) * self.b(x)

    with pytest.raises(UnsupportedOpError, match="mul in Product at <top level>.*neither a gate"):
        trace(Product(), torch.rand(1, 3, 4, 4))


def test_in_place_ops_capture_like_out_of_place():
    class Net(nn.Module):
        def __init__(self, inplace: bool) -> None:
            super().__init__()
            self.inplace = inplace
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=inplace)
            self.fc = nn.Linear(4 * 16, 3)

        def forward(self, x):
            out = self.relu(self.c1(x))
            if self.inplace:
                out += self.c2(out)
                out = F.relu_(out)
            else:
                out = F.relu(out + self.c2(out))
            return self.fc(out.reshape(out.shape[0], -1))

    torch.manual_seed(0)
    a, b = Net(True), Net(False)
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 3, 4, 4)
    cfg = CaptureConfig(mode="dense", include_input=True)
    one, two = capture(a, x, cfg), capture(b, x, cfg)
    for field in ("x", "contribution", "edge_index", "weight"):
        assert torch.equal(getattr(one, field), getattr(two, field))


def test_edge_entries_select_the_weights_of_one_edge():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 9, 3),
    )
    plan = trace(model, torch.rand(1, 2, 3, 3), include_input=True)
    assert plan.weight_layers() == ["0", "1", "3"]
    assert [layer.kind for layer in plan.layers] == ["input", "conv", "conv", "linear"]
    conv, grouped, linear = plan.op("0"), plan.op("1"), plan.op("3")
    mask = conv.edge_entries(3, 1)  # input channel 1 -> unit 3: W[3, 1, :, :]
    assert mask.shape == (4, 2, 3, 3) and mask.sum() == 9 and mask[3, 1].all()
    node = plan.layer("0").offset + 3  # channel 3 of "0" feeds unit 2 of "1" as local input 1
    mask = grouped.edge_entries(2, node)
    assert mask.shape == (4, 2, 3, 3) and mask.sum() == 9 and mask[2, 1].all()
    with pytest.raises(ValueError, match="does not feed"):
        grouped.edge_entries(0, node)
    node = plan.layer("1").offset + 2  # flattened channel 2: features 18..26 of the Linear
    mask = linear.edge_entries(1, node)
    assert mask[1, 18:27].all() and mask.sum() == 9
    assert (conv.weights_per_edge, linear.weights_per_edge) == (9, 9)


def test_layer_kind_is_a_string_and_knows_weight_layers():
    assert LayerKind("conv") == "conv" and LayerKind.LINEAR.is_weight
    assert not LayerKind.ADD.is_weight and not LayerKind.INPUT.is_weight
    assert trace(MLP((1, 4, 4), 3, widths=(5, 4)), torch.rand(1, 1, 4, 4)).weight_layers() == [
        "net.1",
        "net.3",
        "net.5",
    ]


def test_errors_name_op_path_and_the_registry():
    class Crop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x[1:])

    with pytest.raises(UnsupportedOpError, match="slicing the batch") as err:
        trace(Crop(), torch.rand(1, 4))
    assert all(op_name(op) in str(err.value) for op in RULES)
    with pytest.raises(UnsupportedOpError, match="view in Flatten at 1 .*changes the batch"):
        trace(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(0)), torch.rand(1, 3, 2, 2))

    class ChannelMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(x).mean(1)

    with pytest.raises(UnsupportedOpError, match="reducing over the batch or unit"):
        trace(ChannelMean(), torch.rand(1, 3, 2, 2))


def test_untraceable_model_is_one_line(capfd):
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(UnsupportedOpError, match="torch.export cannot trace DataDependent") as err:
        IPGCapture(DataDependent(), torch.rand(1, 4))
    assert "\n" not in str(err.value) and err.value.__cause__ is None
    out, printed = capfd.readouterr()
    assert "def forward" not in out + printed and "symbolic_shapes" not in printed


def test_the_docs_table_of_supported_ops_is_the_registry():
    from ipg_gnn.provenance.rules import rule_table
    from tests.conftest import ROOT

    docs = (ROOT / "docs" / "capture.md").read_text()
    for module, ops, _ in rule_table():
        assert f"| `rules/{module}.py` | {ops} |" in docs, module
