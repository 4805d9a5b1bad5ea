"""The rules registry: one small rule per primitive (ATen) op of a traced model.

A rule reads the unit maps of its operands from the :class:`~ipg_gnn.provenance.plan.PlanBuilder`
and either gives its output a unit map (ops that only move or transform units) or adds an IPG
layer and an edge-producing op (weight layers, residual adds). Adding an op means writing one
function in a module here, decorating it with :func:`rule`, and testing it; the "Supported"
list of the unsupported-op error and the table in docs/capture.md come from this registry.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.fx

if TYPE_CHECKING:
    from ipg_gnn.provenance.plan import PlanBuilder

Apply = Callable[["PlanBuilder", torch.fx.Node], None]


@dataclass(frozen=True)
class Rule:
    """A rule and the ops it handles; `module` is the rules module it lives in."""

    module: str
    ops: tuple[Any, ...]
    apply: Apply


RULES: dict[Any, Rule] = {}


def op_name(op: Any) -> str:
    """Short printable name of an ATen op packet or Python callable (`conv2d`, `getitem`)."""
    return str(getattr(op, "_qualified_op_name", getattr(op, "__name__", op))).split("::")[-1]


def rule(*ops: Any) -> Callable[[Apply], Apply]:
    """Register the decorated function as the rule for `ops` (ATen op packets or callables)."""

    def register(fn: Apply) -> Apply:
        entry = Rule(fn.__module__.rsplit(".", 1)[-1], ops, fn)
        for op in ops:
            if op in RULES:
                raise ValueError(f"two rules for {op_name(op)}: {RULES[op].module}, {entry.module}")
            RULES[op] = entry
        return fn

    return register


def supported_ops() -> str:
    """Every op with a rule, for error messages."""
    return ", ".join(sorted({op_name(op) for op in RULES}))


def rule_table() -> list[tuple[str, str, str]]:
    """(rules module, its ops, first paragraph of its docstring) per module, for the docs."""
    rows: dict[str, set[str]] = {}
    for entry in RULES.values():
        rows.setdefault(entry.module, set()).update(op_name(op) for op in entry.ops)
    return [
        (
            module,
            ", ".join(sorted(ops)),
            " ".join((sys.modules[f"{__name__}.{module}"].__doc__ or "").split("\n\n")[0].split()),
        )
        for module, ops in sorted(rows.items())
    ]


MODULES = (
    "linear",
    "conv",
    "batchnorm",
    "add",
    "unitwise",
    "pooling",
    "reduce",
    "product",
    "reshape",
    "slicing",
    "cat",
    "tuples",
)
for _module in MODULES:
    importlib.import_module(f"{__name__}.{_module}")
