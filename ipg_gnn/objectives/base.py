"""What an objective is: the one place that knows which failure a run studies.

The chain capture -> IPG datasets -> detector -> attribution -> repair plan -> masked fine-tuning
-> evaluation is the same for every failure. An objective supplies only what differs:

- the populations whose IPGs are contrasted: a *reference* population and named *contrast*
  populations, each a :class:`Population`: which inputs it holds (`select`: by default every
  input of the split, e.g. the benign inputs; a fairness group selects its members; a membership
  objective would select members from `target_train`) and how they are changed against the model
  (a :class:`Contrast`: adversarial or triggered versions of the selected inputs). A contrast is
  *paired* when its graph `i` is made from the reference population's input `i`;
- how the target model is prepared (`training_set`: the data it is trained on);
- the repair loss (`repair_loss`), which the generic mask loop minimises on batches of
  :class:`Images` (inputs, labels and groups);
- the evaluation of a model and the columns a report shows of it.

Stages take these from an objective and never ask which one it is.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from ipg_gnn.data import Images


@dataclass(frozen=True)
class Contrasted:
    """Inputs of a contrast population made from its selected inputs (same order), the model's
    predictions on them, and whether each achieved the population's effect on the model (for
    an attack: the model was right before and is wrong after)."""

    x: torch.Tensor
    pred: torch.Tensor
    success: torch.Tensor


@dataclass(frozen=True)
class Selection:
    """Inputs a population holds and each one's index in the dataset (a graph's
    `source_index`)."""

    images: Images
    source_index: np.ndarray

    def subset(self, positions: np.ndarray) -> Selection:
        return Selection(self.images.subset(positions), self.source_index[positions])


#: The inputs of a split, by split name: what a population selects from.
SplitInputs = Callable[[str], Selection]
#: Trains a fresh model like the target on the given inputs, seeded (a reference model).
FitModel = Callable[[Images, int], nn.Module]


class Population:
    """Graphs of one population in an IPG split: the inputs `select` picks, as they are. A
    subclass may pick a subset of the split (a group) or inputs of another split (members of
    `target_train` for the IPG split it builds); `paired` says whether its input `i` is the
    reference population's input `i`, so graphs may be compared input by input."""

    paired: ClassVar[bool] = True

    def __init__(self, name: str, key: str | None = None) -> None:
        self.name = name
        self.key = key  # a short hash of its settings: stores of other settings are not reused

    def select(self, split: str, inputs: SplitInputs) -> Selection:
        """The inputs this population holds in the IPG split `split` (default: all of them)."""
        return inputs(split)


class Contrast(Population, ABC):
    """A population contrasted with the reference one: its selected inputs, changed (or not)
    against the model."""

    def __init__(self, name: str, key: str) -> None:
        super().__init__(name, key)

    @abstractmethod
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> Contrasted:
        """The contrast versions of `x` (labels `y`) against `model`; `seed` fixes any
        randomness, so a resumed build writes what an uninterrupted one would."""


class RepairLoss(Protocol):
    """The loss a repair minimises on a batch (inputs, labels and groups: a fairness penalty
    needs the groups); `attach` holds whatever it records on the model
    (e.g. forward hooks) for the length of a fine-tuning run."""

    def attach(self, model: nn.Module) -> AbstractContextManager: ...

    def __call__(self, model: nn.Module, batch: Images, step: int) -> torch.Tensor: ...


class UnitOutputs:
    """Forward hooks that record the outputs of `units` (layer -> unit indices) at each forward
    pass while `attach` holds: what a repair loss reads of the repaired units."""

    def __init__(self, units: Mapping[str, Sequence[int]]) -> None:
        self.units = units
        self.outputs: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        hooks = []
        for layer, idx in self.units.items():
            index = torch.as_tensor(list(idx), dtype=torch.long)

            def hook(module, args, out, layer=layer, index=index):
                self.outputs[layer] = out[:, index.to(out.device)]

            hooks.append(model.get_submodule(layer).register_forward_hook(hook))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()


class ConsistencyTerm(UnitOutputs):
    """The optional term of a repair loss that keeps the repaired units' (layer -> unit indices)
    outputs on a contrast input close to their values on the clean input: the units' outputs
    are recorded while `attach` holds (nothing when `weight` is 0)."""

    def __init__(self, units: Mapping[str, Sequence[int]], weight: float) -> None:
        if weight and not units:
            raise ValueError("the consistency term needs the repaired units")
        super().__init__(units if weight else {})
        self.weight = weight

    def clean(self) -> dict[str, torch.Tensor]:
        """The outputs of the last forward pass (a clean input), cut from the graph."""
        return {k: v.detach() for k, v in self.outputs.items()}

    def __call__(self, clean: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        """`weight` x the mean squared distance of the last forward pass's outputs (a contrast
        input) to `clean`, summed over layers (0 when off)."""
        if not (self.weight and clean):
            return 0.0
        return self.weight * sum((self.outputs[k] - clean[k]).pow(2).mean() for k in clean)


class ConsistencyLoss:
    """Base of a repair loss with a `ConsistencyTerm` on the repaired units, recorded while the
    loss is attached to the model being repaired."""

    def __init__(self, units: Mapping[str, Sequence[int]], consistency_weight: float) -> None:
        self.consistency = ConsistencyTerm(units, consistency_weight)

    def attach(self, model: nn.Module) -> AbstractContextManager:
        return self.consistency.attach(model)


class Objective(ABC):
    """The failure a run studies; see the module docstring for what it supplies."""

    #: Name of the reference population (IPG stores `<split>-<reference>`).
    reference: ClassVar[str]
    #: What one contrast population is called in reports ("attack": `per_attack`).
    noun: ClassVar[str]

    @abstractmethod
    def contrasts(self) -> dict[str, Contrast]:
        """The contrast populations, by name, in report order."""

    def reference_population(self) -> Population:
        """The reference population (default: every input of a split, as it is)."""
        return Population(self.reference)

    def training_set(self, images: Images, seed: int) -> Images:
        """The data the target is trained on (a poisoning objective changes it)."""
        return images

    def repair_set(
        self, fine_tune: Images, inputs: SplitInputs, fit: FitModel, seed: int, model: nn.Module
    ) -> Images:
        """The inputs a repair fine-tunes on, given the repair split's fine-tuning part and the
        original `model`; whatever the repair loss needs from them is made or kept here (default:
        that part; a privacy repair adds the target's training members and the predictions of
        reference models it trains with `fit`; a backdoor repair keeps the model and inputs its
        trigger reversal runs on when a loss first asks for it)."""
        return fine_tune

    def repair_artifacts(self, out: Path) -> dict[str, Any]:
        """After the repair methods ran: write what the objective made for their losses that a
        reader should see (a backdoor's reversed triggers) into the repair directory `out`, and
        return its summary for the report (default: nothing; empty when no loss made any)."""
        return {}

    def draw_notes(self) -> dict[str, Any]:
        """What the objective noted during the repair draw that just ended (a backdoor's stamps
        refreshed during it), kept with that draw's result so a resumed run keeps it too, and
        forgotten here (default: nothing)."""
        return {}

    @abstractmethod
    def population_report(
        self, reference: Mapping[str, torch.Tensor], contrasts: Mapping[str, Mapping]
    ) -> dict[str, Any]:
        """Numbers of the target on the populations, from IPG store metadata (`pred`,
        `true_label`, `success` per graph): what train.py reports before any detector."""

    @abstractmethod
    def format_population_report(self, report: Mapping[str, Any]) -> str:
        """`population_report` as a small text table."""

    @abstractmethod
    def population_metrics(self, report: Mapping[str, Any]) -> dict[str, float]:
        """`population_report` as flat metrics for the loggers."""

    def check_loss(self, settings: Mapping[str, Any]) -> None:
        """Refuse loss setting values this objective cannot use (`settings`: its loss config
        with a method's overrides) at configuration, before any repair work; names are checked
        by the methods. Every value passes by default."""
        return None

    @abstractmethod
    def repair_loss(self, units: Mapping[str, Sequence[int]], seed: int, **settings) -> RepairLoss:
        """The loss of a repair that changes `units` (per layer), with the objective's loss
        `settings` (its `loss` config, with a method's overrides)."""

    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        images: Images,
        batch_size: int,
        seed: int,
        only: Sequence[str] | None = None,
        transfer_from: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The model's numbers on `images` (`only`: a subset of the evaluations, by name), and
        the contrast inputs made against it; `transfer_from` are contrast inputs made against
        another model, scored as they are."""

    @abstractmethod
    def evaluation_names(self) -> list[str]:
        """Names `evaluate(only=...)` accepts."""

    @abstractmethod
    def columns(self, result: Mapping[str, Any], validation: bool = False) -> dict[str, str]:
        """A report row of one evaluated model: column header -> formatted cell."""

    @abstractmethod
    def report_note(self, notes: Mapping[str, Any]) -> str:
        """One sentence a report table opens with: what its columns measure (`notes`: the
        report's summary from `repair_artifacts`, which may come from an earlier process)."""
