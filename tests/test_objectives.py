"""The objective seam: an objective written here, in a few lines, runs train.py and repair.py
end to end with nothing in the package changed."""

from __future__ import annotations

import contextlib
import json

import torch
from torch import nn

from ipg_gnn.objectives import Contrast, Contrasted, Objective
from ipg_gnn.targets import accuracy, predict
from tests.conftest import ROOT, compose_config


class NoiseContrast(Contrast):
    def __init__(self, sigma: float) -> None:
        super().__init__("noise", key=f"{sigma:g}")
        self.sigma = sigma

    def __call__(self, model, x, y, seed):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        noisy = (x + self.sigma * noise).clamp(0, 1)
        pred = predict(model, noisy)
        return Contrasted(noisy, pred, (predict(model, x) == y) & (pred != y))


class NoiseLoss:
    def __init__(self, contrast: NoiseContrast, seed: int) -> None:
        self.contrast, self.seed = contrast, seed

    def attach(self, model):
        return contextlib.nullcontext()

    def __call__(self, model, batch, step):
        noisy = self.contrast(model, batch.x, batch.y, self.seed + step).x
        return nn.functional.cross_entropy(model(noisy), batch.y)


class Noise(Objective):
    """Clean inputs against Gaussian-noise versions of them."""

    reference = "clean"
    noun = "noise"

    def __init__(self, sigma: float) -> None:
        self.noise = NoiseContrast(sigma)

    def contrasts(self):
        return {"noise": self.noise}

    def population_report(self, reference, contrasts):
        def acc(m):
            return float((m["pred"] == m["true_label"]).float().mean())

        return {
            "n": len(reference["pred"]),
            "clean_acc": acc(reference),
            "noisy_acc": acc(contrasts["noise"]),
        }

    def format_population_report(self, report):
        return f"clean {report['clean_acc']:.2%}, noisy {report['noisy_acc']:.2%}"

    def population_metrics(self, report):
        return {"test/clean_acc": report["clean_acc"], "test/noisy_acc": report["noisy_acc"]}

    def repair_loss(self, units, seed, **settings):
        return NoiseLoss(self.noise, seed)

    def evaluation_names(self):
        return ["noise"]

    def evaluate(self, model, images, batch_size, seed, only=None, transfer_from=None):
        noisy = self.noise(model, images.x, images.y, seed)
        report = {
            "n": len(images),
            "clean_acc": accuracy(model, images, batch_size),
            "noisy_acc": float((noisy.pred == images.y).float().mean()),
        }
        return report, {"noise": noisy.x}

    def columns(self, result, validation=False):
        return {"clean": f"{result['clean_acc']:.2%}", "noisy": f"{result['noisy_acc']:.2%}"}

    def report_note(self, notes):
        return "Noisy: Gaussian noise of the objective's sigma."


def test_an_objective_from_outside_the_package_runs_both_jobs(tmp_path):
    from ipg_gnn.jobs.repair import run_repair
    from ipg_gnn.jobs.train import run_train

    common = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "objective=noise"]
    common += ["logger=none"]
    trained = run_train(
        compose_config(
            "train",
            tmp_path,
            [
                *common,
                "+trainer.fast_dev_run=true",
                "split.max_size={ipg_train:60,ipg_val:30,repair:40,test:30}",
                f"paths.output_dir={tmp_path}/logs/train/r1",
                "detector.baselines={}",
            ],
        )
    )
    assert set(trained["attack"]) >= {"clean_acc", "noisy_acc"}
    detection = json.loads((tmp_path / "logs/train/r1/detector_report.json").read_text())
    assert set(detection["per_noise"]) == {"noise"} and detection["test"]["n_contrast"] == 30
    report = run_repair(
        compose_config(
            "repair",
            tmp_path,
            [
                *common,
                "explainer.contrast=noise",
                "repair.val_evaluations=[noise]",
                "repair.layer=net.3",
                "repair.k=2",
                "repair.finetune.epochs=1",
                "repair.baselines=[random]",
            ],
        )
    )
    assert report["plan"]["targets"] == {"net.3": 2}
    assert 0 < report["after"]["params_changed"] <= 2 * 351
    assert set(report["after"]) >= {"clean_acc", "noisy_acc", "val", "history"}
    assert "| targeted repair |" in (tmp_path / "run" / "repair_report.md").read_text()
