"""The capture benchmark runs and reports every model and mode (numbers are not asserted)."""

from __future__ import annotations

import json

from ipg_gnn.tools.bench import MODELS, main


def test_capture_benchmark_prints_one_json_object_last(capsys):
    report = main(["capture", "--batch", "16", "--repeats", "1", "--skip-build", "--skip-resnet18"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == report
    assert set(report["models"]) == set(MODELS)
    for modes in report["models"].values():
        for entry in modes.values():
            assert {"forward_ms", "capture_ms", "ratio", "graphs_per_s", "peak_rss_mb"} <= set(
                entry
            )
            assert entry["capture_ms"] > 0 and entry["graphs_per_s"] > 0
