"""Run plumbing under faults: one run per directory, checked artifacts, damaged files named,
content-keyed caches, files that honour the umask."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from ipg_gnn.errors import MissingFileError
from ipg_gnn.jobs import stages
from ipg_gnn.runs.io import ArtifactError, atomic_write_text
from ipg_gnn.runs.keys import target_cache_key
from ipg_gnn.runs.run_dir import RunDirectoryError, claim, read_record
from ipg_gnn.runs.train_run import latest_train_run, load_train_run, target_arch


def cfg(seed: int):
    return OmegaConf.create({"seed": seed, "paths": {"output_dir": "x"}})


def test_a_directory_belongs_to_one_run_which_may_resume_it(tmp_path):
    with claim(tmp_path, "train", cfg(0)) as record:
        atomic_write_text("{}", tmp_path / "splits.npz")
        record.add("splits.npz")
        with pytest.raises(RunDirectoryError, match="in use by another run"):
            with claim(tmp_path, "train", cfg(0)):
                pass
    with pytest.raises(RunDirectoryError, match=f"holds another run \\(train run {record.run_id}"):
        with claim(tmp_path, "train", cfg(1)):
            pass
    with claim(tmp_path, "train", cfg(0)) as resumed:  # the same run resumes
        assert resumed.run_id == record.run_id and not resumed.complete
        resumed.finish()
    assert read_record(tmp_path).complete
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "target.pt").write_bytes(b"")
    with pytest.raises(RunDirectoryError, match=r"another run's artifacts \(target.pt\)"):
        with claim(legacy, "train", cfg(0)):
            pass


def test_changed_artifacts_unfinished_runs_and_the_latest_finished_run(tmp_path):
    runs = tmp_path / "train" / "runs"
    for name, finish in (("a", True), ("b", False)):
        with claim(runs / name, "train", cfg(0)) as record:
            for f in ("train_config.yaml", "splits.npz", "splits.json", "target.pt"):
                atomic_write_text(name, runs / name / f)
            record.add("train_config.yaml", "splits.npz", "splits.json", "target.pt")
            if finish:
                record.finish()
    assert latest_train_run(tmp_path) == runs / "a"  # b is newer but unfinished
    with pytest.raises(ArtifactError, match="unfinished train run"):
        load_train_run(runs / "b")
    (runs / "a" / "target.pt").write_text("another run's target")
    with pytest.raises(ArtifactError, match=r"a/target.pt is missing or changed since run"):
        load_train_run(runs / "a")
    (runs / "a" / "run.json").write_text("{")
    # A user error (repair.py shows it as one line), still a FileNotFoundError for callers.
    with pytest.raises(MissingFileError, match="no finished train.py run"):
        latest_train_run(tmp_path)


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text("x", tmp_path / "f.txt")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_the_target_cache_is_keyed_on_the_data_and_a_damaged_entry_is_retrained(
    trained_default, monkeypatch
):
    d = trained_default
    train = d["splits"].images(d["data"], "target_train")
    arch = target_arch(d["cfg"], d["data"])
    inverted = type(train)(1 - train.x, train.y)
    key = target_cache_key(d["cfg"], arch, train.fingerprint())
    assert target_cache_key(d["cfg"], arch, inverted.fingerprint()) != key
    path = d["origin"]["checkpoint"]
    with open(path, "r+b") as f:
        f.truncate(200)
    with pytest.raises(ArtifactError, match="is damaged"):
        stages.load_checkpoint(path, arch)
    monkeypatch.setattr(stages, "train_target", lambda model, *a, **k: d["model"])
    model, origin = stages.obtain_target(d["cfg"], d["data"], d["splits"], d["objective"])
    assert origin["origin"] == "trained" and torch.equal(
        model.net[1].weight, d["model"].net[1].weight
    )


@pytest.mark.parametrize(
    "task,override,key",
    [
        ("train", "dataset.eps=5", "dataset.eps"),
        ("train", "dataset.eps=0", "dataset.eps"),
        ("train", "ipg.shard_size=0", "ipg.shard_size"),
        ("train", "target.train.batch_size=0", "target.train.batch_size"),
        ("repair", "repair.val_fraction=1.0", "repair.val_fraction"),
        ("repair", "repair.finetune.tolerance=-1", "repair.finetune.tolerance"),
        ("repair", "repair.fraction=0", "repair.fraction"),
        ("repair", "repair.fraction=-0.5", "repair.fraction"),
        ("repair", "repair.k=0", "repair.k"),
        ("repair", "repair.level=unit", "repair.level"),
        ("repair", "eval_batch_size=0", "eval_batch_size"),
        ("repair", "repair.k=some", "repair.k"),
        ("train", "ipg.capture.k=2.5", "ipg.capture.k"),
        ("train", "dataset.eps=true", "dataset.eps"),
    ],
)
def test_bad_settings_stop_at_the_door_naming_the_key(task, override, key, tmp_path):
    from ipg_gnn.jobs.checks import ConfigError
    from ipg_gnn.jobs.repair import run_repair
    from ipg_gnn.jobs.train import run_train
    from tests.conftest import compose_config

    job = run_train if task == "train" else run_repair
    with pytest.raises(ConfigError, match=f"^{key}="):
        job(compose_config(task, tmp_path, [override]))
    assert not (tmp_path / "run").exists()  # nothing was started


def test_user_errors_end_as_one_line_and_bugs_keep_their_traceback(capsys):
    from ipg_gnn.errors import one_line_errors
    from ipg_gnn.jobs.checks import ConfigError

    with pytest.raises(SystemExit) as stop, one_line_errors():
        raise ConfigError("repair.k=0 is not allowed: it must be null or an integer >= 1")
    assert stop.value.code == 1
    assert capsys.readouterr().err == (
        "error: repair.k=0 is not allowed: it must be null or an integer >= 1\n"
    )
    with pytest.raises(ZeroDivisionError), one_line_errors():
        _ = 1 / 0
