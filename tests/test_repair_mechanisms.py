"""Repair mechanisms beyond masked fine-tuning of whole units: low-rank and scale-and-bias
updates, plans over several layers, the annealed tolerance; on a tiny generated MLP."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ipg_gnn.data import Images
from ipg_gnn.errors import ConfigError
from ipg_gnn.plan import RepairPlan
from ipg_gnn.provenance import trace
from ipg_gnn.repair import (
    LowRank,
    MaskedFinetune,
    NormBias,
    PlanFinetune,
    RepairContext,
    ScaleBias,
    Update,
    all_masks,
    masked_finetune,
    params_per_target,
    plan_masks,
    unit_outputs,
)
from ipg_gnn.repair.finetune import AnnealedTolerance, Checkpoints
from ipg_gnn.repair.report import markdown_report
from ipg_gnn.runs.keys import model_fingerprint
from ipg_gnn.targets import MLP, SmallCNN


class CrossEntropy:
    def attach(self, model):
        return contextlib.nullcontext()

    def __call__(self, model, batch, step):
        return torch.nn.functional.cross_entropy(model(batch.x), batch.y)


class Objective:
    """The objective's part a repair method uses: its loss, and a report's columns."""

    def repair_loss(self, units, seed, **settings):
        return CrossEntropy()

    def columns(self, r, validation=False):
        return {"clean": f"{r['clean_acc']:.2%}"}

    def report_note(self, notes):
        return ""


@pytest.fixture
def tiny():
    """A 16-6-5-3 MLP and 96 random 4x4 images with random labels."""
    torch.manual_seed(0)
    model = MLP((1, 4, 4), 3, widths=(6, 5)).eval()
    images = Images(torch.rand(96, 1, 4, 4), torch.randint(0, 3, (96,)))
    return model, images


def context(model, images, targets, **finetune):
    plan = RepairPlan(model_fingerprint(model), "node", {}, targets)
    schedule = {"epochs": 2, "lr": 0.05, "batch_size": 16, "tolerance": 1.0, "progress": False}
    return RepairContext(
        model,
        plan,
        trace(model, images.x[:1]),
        images.subset(range(64)),
        images.subset(range(64, 96)),
        Objective(),
        {**schedule, **finetune},
        seed=0,
    )


def unchanged_except(before, after, changing):
    """Every parameter but the named (name -> rows) ones bit-identical; those outside rows."""
    for name, p in before.items():
        rows = changing.get(name, [])
        keep = torch.ones(p.shape[0], dtype=torch.bool)
        keep[rows] = False
        assert torch.equal(p[keep], after[name][keep]), name


def live_units(model, images, layer=2):
    """Hidden units of `model.net[:layer]` active on some input (a dead ReLU gets no gradient)."""
    with torch.no_grad():
        return (model.net[:layer](images.x) > 0).any(0).nonzero().flatten().tolist()


def test_low_rank_update_changes_planned_rows_by_a_rank_r_delta(tiny):
    model, images = tiny
    units = live_units(model, images)[:3]
    ctx = context(model, images, {"net.1": units})
    repaired, info = PlanFinetune(update=LowRank(rank=2))(ctx)
    before, after = model.state_dict(), repaired.state_dict()
    assert set(after) == set(before)  # baked back into the original architecture
    delta = after["net.1.weight"] - before["net.1.weight"]
    assert torch.linalg.matrix_rank(delta) == 2
    assert delta[units].abs().sum(1).gt(0).all()
    unchanged_except(before, after, {"net.1.weight": units, "net.1.bias": units})
    # rank x (planned units + inputs per unit), plus the three planned biases.
    assert info["dof"] == 2 * (3 + 16) + 3
    assert info["params_allowed"] == 3 * 17 and info["params_changed"] == 3 * 17


def test_scale_bias_only_scales_planned_rows_and_shifts_their_biases(tiny):
    model, images = tiny
    units = live_units(model, images, layer=4)[:2]
    ctx = context(model, images, {"net.3": units})
    repaired, info = PlanFinetune(update=ScaleBias())(ctx)
    before, after = model.state_dict(), repaired.state_dict()
    unchanged_except(before, after, {"net.3.weight": units, "net.3.bias": units})
    for unit in units:
        ratio = after["net.3.weight"][unit] / before["net.3.weight"][unit]
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))
        assert float(ratio[0]) != 1.0 and after["net.3.bias"][unit] != before["net.3.bias"][unit]
    assert info["dof"] == 2 * 2


def test_norm_bias_trains_the_planned_biases_alone(tiny):
    """On a plain layer a unit's only one-dimensional entry is its bias: the weights stay, the
    changed weights are the degrees of freedom; a plan that frees no such entry is refused."""
    model, images = tiny
    units = live_units(model, images, layer=4)[:2]
    ctx = context(model, images, {"net.3": units})
    repaired, info = PlanFinetune(update=NormBias())(ctx)
    before, after = model.state_dict(), repaired.state_dict()
    unchanged_except(before, after, {"net.3.bias": units})
    assert (after["net.3.bias"][units] != before["net.3.bias"][units]).all()
    assert info["dof"] == info["params_changed"] == 2
    weights_only = {"net.3.weight": torch.ones(5, 6, dtype=torch.bool)}
    with pytest.raises(ConfigError, match="no bias or BatchNorm"):
        NormBias().apply(model, weights_only, seed=0)


def test_plan_over_several_layers_frees_exactly_its_units(tiny):
    model, images = tiny
    targets = {"net.1": [4], "net.3": [0, 3], "net.5": [2]}
    ctx = context(model, images, targets)
    masks = plan_masks(model, ctx.plan, ctx.capture_plan)
    for layer, units in targets.items():
        weight, bias = masks[f"{layer}.weight"], masks[f"{layer}.bias"]
        assert weight.any(1).nonzero().flatten().tolist() == units and weight[units].all()
        assert bias.nonzero().flatten().tolist() == units
    repaired, info = PlanFinetune()(ctx)
    unchanged_except(
        dict(model.named_parameters()),
        dict(repaired.named_parameters()),
        {f"{lay}.{kind}": units for lay, units in targets.items() for kind in ("weight", "bias")},
    )
    assert info["dof"] == info["params_allowed"] == 1 * 17 + 2 * 7 + 1 * 6


def test_annealed_tolerance_falls_linearly_then_holds():
    schedule = AnnealedTolerance(0.01, 0.05, steps=10)
    assert [round(schedule(s), 4) for s in (0, 5, 10, 20)] == [0.05, 0.03, 0.01, 0.01]
    assert AnnealedTolerance(0.01, None, steps=10)(0) == 0.01


def test_checkpoints_give_the_last_state_within_each_tolerance():
    p = {"w": torch.nn.Parameter(torch.zeros(1))}
    kept = Checkpoints(p, 0.0, floor=0.01)
    for value, drop in [(1, 0.02), (2, 0.04), (3, 0.03), (4, 0.05)]:
        p["w"].data.fill_(value)
        kept.add(p, drop)
    assert [d for d, _ in kept.states] == [0.0, 0.02, 0.03, 0.05]  # (2, 0.04) is dominated
    assert kept.restore(p, 0.035) and p["w"].item() == 3
    assert kept.restore(p, 0.025) and p["w"].item() == 1
    p["w"].data.fill_(5)
    kept.add(p, 0.005)  # within the floor: every later query takes it
    assert [d for d, _ in kept.states] == [0.0, 0.005]


def test_annealed_run_follows_its_schedule_and_rolls_back_beyond_it(tiny):
    model, images = tiny
    repaired = MLP((1, 4, 4), 3, widths=(6, 5)).eval()
    repaired.load_state_dict(model.state_dict())
    val = images.subset(range(64, 96))
    # Every step checked (32 = 4 epochs of 8 batches), far beyond the tolerance at lr 0.5.
    annealed = {"tolerance": 0.0, "tolerance_start": 0.2, "anneal_fraction": 0.5}
    run = {"epochs": 4, "lr": 0.5, "batch_size": 8, "patience": 1, "rollback": True}
    train = images.subset(range(64))
    info = masked_finetune(
        repaired, all_masks(repaired), train, val, CrossEntropy(), **annealed, **run,
        progress=False, baseline_acc=0.5,
    )  # fmt: skip
    schedule = AnnealedTolerance(0.0, 0.2, steps=0.5 * 32)
    history = info["history"]
    assert len(history) == 32  # a rollback never stops the run
    for h in history:
        assert h["tolerance"] == pytest.approx(schedule(h["step"]))
        assert h.get("rolled_back", False) == (0.5 - h["val_clean_acc"] > h["tolerance"])
    assert any(h.get("rolled_back") for h in history)
    from ipg_gnn.targets import accuracy

    assert accuracy(repaired, val) >= 0.5 or not info["within_tolerance"]


def test_report_shows_each_models_trainable_dof(tiny):
    model, images = tiny
    ctx = context(model, images, {"net.1": [0, 2, 5]}, epochs=1)
    rows = {}
    for name, update in [("targeted", Update()), ("low_rank", LowRank(rank=1))]:
        _, info = PlanFinetune(update=update)(ctx)
        rows[name] = {"clean_acc": 0.5, **info}
    report = {
        "n_test": 32,
        "before": {"clean_acc": 0.5},
        "after": rows["targeted"],
        "baselines": {"low_rank": rows["low_rank"]},
        "plan": {"level": "node", "explainer": "x", "targets": {"net.1": 3}},
    }
    lines = markdown_report(report, Objective()).splitlines()
    head = next(line for line in lines if line.startswith("| model"))
    assert head.endswith("| params changed | trainable DOF | repair time |")
    dof = {line.split(" | ")[0][2:]: line.split(" | ")[-2] for line in lines if "| 50.00%" in line}
    assert dof == {"original": "-", "targeted repair": str(3 * 17), "low_rank": str(19 + 3)}


def test_bad_mechanism_settings_fail_with_one_line():
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        LowRank(rank=0)
    model = MLP((1, 4, 4), 3, widths=(6, 5))
    images = Images(torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long))
    for bad, match in [
        ({"rollback": True, "patience": None}, "rollback goes back after"),
        ({"tolerance_start": 0.001, "tolerance": 0.01}, "annealed tolerance starts at or above"),
    ]:
        with pytest.raises(ValueError, match=match):
            masked_finetune(model, all_masks(model), images, images, CrossEntropy(), **bad)


def test_mechanism_configs_build_and_any_method_takes_an_update(tmp_path):
    from ipg_gnn.jobs.repair import make_methods
    from ipg_gnn.jobs.stages import make_objective
    from tests.conftest import compose_config

    cfg = compose_config(
        "repair",
        tmp_path,
        [
            "+dataset=mnist_subset",  # repair.py takes it from the train run
            "repair.baselines=[random,low_rank,scale_bias,norm_bias,annealed]",
            "repair.methods.low_rank.update.rank=8",
            "+repair/update@repair.methods.random.update=scale_bias",
        ],
    )
    methods = make_methods(cfg, make_objective(cfg))
    assert isinstance(methods["low_rank"].update, LowRank) and methods["low_rank"].update.rank == 8
    assert isinstance(methods["scale_bias"].update, ScaleBias)
    assert isinstance(methods["norm_bias"].update, NormBias)
    assert isinstance(methods["random"].update, ScaleBias)
    assert type(methods["targeted"].update) is Update
    assert methods["annealed"].finetune["rollback"] and methods["annealed"].finetune["patience"]


def test_lookahead_scores_a_plan_under_an_update_and_leaves_the_model(tiny):
    from ipg_gnn.repair.lookahead import lookahead_gain

    model, images = tiny
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    plan = RepairPlan(model_fingerprint(model), "node", {}, {"net.1": [0, 1, 3]})
    masks = plan_masks(model, plan, trace(model, images.x[:1]))
    train, val = images.subset(range(64)), images.subset(range(64, 96))
    steps = {"steps": 4, "lr": 0.05, "batch_size": 16}
    gains = {
        name: lookahead_gain(model, masks, train, val, CrossEntropy(), **steps, update=u)["gain"]
        for name, u in [("entries", None), ("low_rank", LowRank(rank=1))]
    }
    assert gains["low_rank"] != gains["entries"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


@pytest.mark.parametrize(
    "update, dof",
    # Plain: 2 x (9 + 2); low rank 1: B's 2 planned rows + A's 9 columns + 4 BatchNorm entries;
    # scale and bias: 2 scales + 4 BatchNorm entries; norm and bias: the 4 BatchNorm entries.
    [(Update(), 22), (LowRank(rank=1), 2 + 9 + 4), (ScaleBias(), 2 + 4), (NormBias(), 4)],
    ids=["entries", "low_rank", "scale_bias", "norm_bias"],
)
def test_pruned_conv_unit_with_folded_batchnorm_is_silent(update, dof):
    """A node of a conv layer is the unit with its BatchNorm folded in: the plan frees the
    BatchNorm's scale and shift of that channel too, and pruning zeroes them, which silences the
    channel (a zeroed filter alone would leave the BatchNorm's shift as a constant output)."""
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 3, channels=(4, 4)).eval()
    for bn in (model.net[1], model.net[5]):  # eval-mode statistics of a trained model
        bn.running_mean.uniform_(-1, 1)
        bn.bias.data.uniform_(0.5, 1.0)
    images = Images(torch.rand(96, 1, 8, 8), torch.randint(0, 3, (96,)))
    ctx = context(model, images, {"net.0": [1, 2]}, epochs=1)
    masks = plan_masks(model, ctx.plan, ctx.capture_plan)
    assert {n: int(m.sum()) for n, m in masks.items()} == {
        "net.0.weight": 2 * 9,
        "net.1.weight": 2,
        "net.1.bias": 2,
    }
    assert params_per_target(model, ctx.capture_plan, "net.0", "node") == 9 + 2

    class Prune(MaskedFinetune):
        def targets(self, ctx, model, draw):
            return plan_masks(model, ctx.plan, ctx.capture_plan), ctx.plan.units()

    repaired, info = Prune(prune=True, update=update)(ctx)
    with torch.no_grad():
        channels = repaired.net[:3](images.x)  # conv, BatchNorm, ReLU
    assert channels[:, [1, 2]].abs().max() == 0 and channels[:, [0, 3]].abs().max() > 0
    # Silenced by the BatchNorm's scale and shift alone: the filters, dead, stay as they were.
    unchanged_except(
        dict(model.named_parameters()),
        dict(repaired.named_parameters()),
        {"net.1.weight": [1, 2], "net.1.bias": [1, 2]},
    )
    assert info["params_allowed"] == 2 * 11 and info["params_changed"] == 2 * 2
    # Not pruned, the folded BatchNorm's entries train as planned entries and every update
    # reaches them; the repair loss reads the units after the BatchNorm.
    _, info = Prune(update=update)(ctx)
    assert info["dof"] == dof and info["params_changed"] > 0
    assert unit_outputs(ctx.capture_plan, {"net.0": [1, 2], "net.10": [0]}) == {
        "net.1": [1, 2],
        "net.10": [0],
    }


def test_fraction_budget_of_a_node_plan_counts_the_folded_batchnorm():
    """`repair.fraction` of a layer's parameters, the BatchNorm a node owns included: a quarter
    of 16 first-conv channels is 4 channels."""
    from omegaconf import OmegaConf

    from ipg_gnn.jobs.repair import plan_counts

    model = SmallCNN((1, 8, 8), 3, channels=(16, 4)).eval()
    cfg = OmegaConf.create({"repair": {"k": None, "fraction": 0.25, "level": "node"}})
    assert plan_counts(cfg, model, trace(model, torch.rand(1, 1, 8, 8)), ["net.0"]) == {"net.0": 4}


def test_per_layer_counts_and_their_check():
    """`repair.k` as a list gives each listed layer its own count; a list without a matching
    `repair.layer` list is refused before any work, as is a list item that is not a count."""
    from omegaconf import OmegaConf

    from ipg_gnn.jobs.checks import ConfigError, RepairSettings, check_settings
    from ipg_gnn.jobs.repair import check_counts, plan_counts

    model = SmallCNN((1, 8, 8), 3, channels=(16, 4)).eval()
    cfg = OmegaConf.create({"repair": {"k": [1, 3], "layer": ["net.0", "net.4"], "level": "node"}})
    check_counts(cfg)
    capture_plan = trace(model, torch.rand(1, 1, 8, 8))
    assert plan_counts(cfg, model, capture_plan, ["net.0", "net.4"]) == {"net.0": 1, "net.4": 3}
    cfg.repair.layer = "net.0"
    with pytest.raises(ConfigError, match="repair.layer must list 2 layers"):
        check_counts(cfg)
    cfg.repair.k = [1, 0]
    with pytest.raises(
        ConfigError, match=r"repair.k=.*a list whose items are each an integer >= 1"
    ):
        check_settings(cfg, RepairSettings)


def test_repair_device_setting():
    """`device=auto` takes the GPU only where torch sees one; `device=cuda` without one and an
    unknown device name are refused before any work."""
    from omegaconf import OmegaConf

    from ipg_gnn.jobs.checks import ConfigError, RepairSettings, check_settings
    from ipg_gnn.jobs.repair import repair_device

    gpu = torch.cuda.is_available()
    assert repair_device("auto").type == ("cuda" if gpu else "cpu")
    assert repair_device("cpu").type == "cpu"
    if not gpu:
        with pytest.raises(ConfigError, match="device=cuda, but torch sees no CUDA GPU"):
            repair_device("cuda")
    with pytest.raises(ConfigError, match="device"):
        check_settings(OmegaConf.create({"device": "gpu"}), RepairSettings)


def test_draws_split_over_jobs():
    """`first_draw` numbers a job's draws after another job's, so parallel jobs never repeat a
    random plan; a lone draw 0 keeps the method's name; negative numbers are refused."""
    from ipg_gnn.errors import ConfigError
    from ipg_gnn.repair import RandomPlanFinetune

    assert RandomPlanFinetune().draw_tags("random") == {0: "random"}
    assert RandomPlanFinetune(draws=2).draw_tags("random") == {0: "random_0", 1: "random_1"}
    assert RandomPlanFinetune(draws=2, first_draw=2).draw_tags("r") == {2: "r_2", 3: "r_3"}
    assert RandomPlanFinetune(first_draw=3).draw_tags("r") == {3: "r_3"}
    with pytest.raises(ConfigError, match="first_draw >= 0"):
        RandomPlanFinetune(first_draw=-1)


def test_lookahead_allocation_takes_the_best_gain_per_parameter_within_the_budget():
    from ipg_gnn.repair.allocation import LookaheadAllocation

    # Layer a: 4 targets of 1 parameter, 0.1 gain each; layer b: 10 targets of 5, 0.01 each.
    def gain_of(counts):
        return 0.1 * counts["a"] + 0.01 * counts["b"]

    allocation = LookaheadAllocation(chunks=4)
    counts, rounds = allocation.allocate({"a": 4, "b": 10}, {"a": 1, "b": 5}, 20, gain_of)
    # Slices of 20 / 4 = 5 parameters: a offers all 4 of its targets (0.1 per parameter against
    # b's 0.002) and is emptied; b then takes one target a round until less than 5 is left.
    assert counts == {"a": 4, "b": 3}
    assert [r["taken"] for r in rounds] == ["a", "b", "b", "b"]
    assert rounds[0]["offers"] == {"a": 4, "b": 1} and rounds[-1]["params"] == 19
    assert rounds[0]["gains"] == {"a": pytest.approx(0.4), "b": pytest.approx(0.01)}
    # Where b gains more per parameter it is taken first, a slice at a time.
    counts, rounds = allocation.allocate(
        {"a": 4, "b": 10}, {"a": 1, "b": 5}, 20, lambda c: 0.001 * c["a"] + 0.1 * c["b"]
    )
    assert counts == {"b": 4} and [r["taken"] for r in rounds] == ["b"] * 4
    # Slices of 10 / 3 parameters leave 1 after three rounds: a last offer of what fits spends it.
    counts, rounds = LookaheadAllocation(chunks=3).allocate(
        {"a": 20}, {"a": 1}, 10, lambda c: 0.1 * c["a"]
    )
    assert counts == {"a": 10} and [r["offers"]["a"] for r in rounds] == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="chunks, steps and batch_size >= 1"):
        LookaheadAllocation(chunks=0)
