"""Trackers: MLflow for real (a local store, read back through MLflow's own client), wandb
offline (its run directory), TensorBoard by default and the core without it."""

from __future__ import annotations

import json
import sys

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.train.loop import MetricsLog
from rlhfkit.train.sft import SFTConfig


def _records(n: int, start: int = 1):
    return [
        {"step": s, "loss": 1.0 / s, "accuracy": 0.5, "note": "text"}
        for s in range(start, start + n)
    ]


def test_mlflow_gets_params_and_every_step_and_a_resumed_run_goes_on_in_it(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = SFTConfig(report_to=["mlflow"], lr=3e-4)
    log = MetricsLog(tmp_path / "run", settings, "sft")
    for record in _records(3):
        log.write(record)
    log.close()
    resumed = MetricsLog(tmp_path / "run", settings, "sft")  # as --resume opens it again
    for record in _records(2, start=4):
        resumed.write(record)
    resumed.close()

    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name("rlhfkit")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    params = run.data.params
    assert params["lr"] == "0.0003" and params["policy"] == "smollm2-135m-instruct"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in range(1, 6)]
    assert "note" not in run.data.metrics and run.info.status == "FINISHED"
    ids = json.loads((tmp_path / "run" / "trackers.json").read_text())
    assert ids["mlflow"] == run.info.run_id


def test_train_rm_reports_to_mlflow(tmp_path, monkeypatch, cli):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"Q{i}?", "chosen": f"A kind answer {i}.", "rejected": "No."})
            + "\n"
            for i in range(16)
        )
    )
    out = tmp_path / "rm"
    cli("train-rm", "--pairs", pairs, "--out", out, "--epochs", "1", "--report-to", "mlflow")
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("rlhfkit").experiment_id])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    with_loss = [r for r in logged if "loss" in r]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) == len(with_loss) > 0
    assert run.data.params["base"] == "minilm-l6"
    assert not (out / "tensorboard").exists()  # only what was asked for


def test_wandb_offline_writes_its_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(tmp_path / "run", SFTConfig(report_to=["wandb"]), "sft")
    for record in _records(3):
        log.write(record)
    log.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "no run file written"
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["wandb"]
    assert runs[0].name.endswith(run_id)


def test_wandb_online_without_a_key_is_one_line_before_training(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    with pytest.raises(RlhfkitError, match="no API key .* WANDB_MODE=offline"):
        MetricsLog(tmp_path / "run", SFTConfig(report_to=["wandb"]), "sft")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(
        RlhfkitError,
        match=r"report_to mlflow: the package is not installed \(pip install mlflow-skinny\)",
    ):
        MetricsLog(tmp_path / "run", SFTConfig(report_to=["mlflow"]), "sft")


def test_tensorboard_by_default_and_the_core_without_it(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "with", SFTConfig(), "sft")
    log.write(_records(1)[0])
    log.close()
    assert list((tmp_path / "with" / "tensorboard").glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed
    log = MetricsLog(tmp_path / "without", SFTConfig(), "sft")
    log.write(_records(1)[0])
    log.close()
    assert not (tmp_path / "without" / "tensorboard").exists()
    assert (tmp_path / "without" / "metrics.jsonl").read_text().count("\n") == 1


def test_an_unknown_tracker_is_one_line(cli, tmp_path):
    answer = cli("dpo", "--pairs", "x.jsonl", "--out", tmp_path, "--report-to", "comet", ok=False)
    assert "report_to" in answer.output and "Traceback" not in answer.output
