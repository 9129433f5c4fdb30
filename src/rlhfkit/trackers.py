"""Where a trainer's numbers go besides OUT/metrics.jsonl (always written): TensorBoard
(OUT/tensorboard), MLflow and Weights & Biases, as a stage's `report_to` names them.

`report_to` None means TensorBoard when it is installed (the default install has it; the
core package works without it). A tracker named explicitly must be installed, or the stage
stops before training with one line. MLflow logs where MLFLOW_TRACKING_URI points (else
MLflow's own default), into the experiment MLFLOW_EXPERIMENT_NAME or "rlhfkit"; wandb into
the project WANDB_PROJECT or "rlhfkit", its files under OUT/wandb, online only with an API
key (WANDB_MODE=offline logs locally, for `wandb sync` later). A resumed run goes on in the
same MLflow and wandb runs: their ids are kept in OUT/trackers.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

from rlhfkit.errors import RlhfkitError

Tracker = Literal["tensorboard", "wandb", "mlflow"]
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
IDS_FILE = "trackers.json"


def installed(tracker: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(tracker) is not None
    except (ImportError, ValueError):  # blocked, or half-imported
        return False


def check_trackers(report_to: list[str] | None) -> list[str]:
    """The trackers to open: `report_to`, each installed, or by default TensorBoard if it
    is; a missing one is a one-line error."""
    if report_to is None:
        return ["tensorboard"] if installed("tensorboard") else []
    for tracker in report_to:
        if not installed(tracker):
            raise RlhfkitError(
                f"report_to {tracker}: the package is not installed "
                f"(pip install {PACKAGES[tracker]})"
            )
    online = os.environ.get("WANDB_MODE", "online") == "online"
    if "wandb" in report_to and online and not _wandb_key():
        raise RlhfkitError(
            "report_to wandb: no API key (run `wandb login`, or set WANDB_MODE=offline to "
            "log locally and `wandb sync` later)"
        )
    return list(dict.fromkeys(report_to))


def scalars(record: dict) -> dict[str, float]:
    """The record's finite numbers, but its step."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        if math.isfinite(v)
    }


def flat_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as name -> text, for trackers that take flat parameters."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= flat_settings(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)[:500]
    return flat


class TensorBoard:
    def __init__(self, out: Path, name: str, settings: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, numbers: dict[str, float], step: int) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, out: Path, name: str, settings: dict, run_id: str | None):
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its store's INFO lines
        self.client = MlflowClient()
        if run_id is None:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "rlhfkit")
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
            run = self.client.create_run(experiment_id, run_name=name)
            run_id = run.info.run_id
            for key, value in sorted(flat_settings(settings).items()):
                self.client.log_param(run_id, key, value)
            self.client.set_tag(run_id, "rlhfkit.out", str(out))
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numbers.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Wandb:
    def __init__(self, out: Path, name: str, settings: dict, run_id: str | None):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rlhfkit"),
            name=name,
            dir=str(out),
            config=settings,
            id=run_id,
            resume="allow",
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run_id = self.run.id

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


def _wandb_key() -> bool:
    """Whether wandb has an API key (the environment's, or `wandb login`'s in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def open_trackers(out: Path, report_to: list[str] | None, name: str, settings: dict) -> list:
    """Open each tracker for a run in `out` (going on with the runs trackers.json names)."""
    ids_path = out / IDS_FILE
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    opened = []
    for tracker in check_trackers(report_to):
        if tracker == "tensorboard":
            opened.append(TensorBoard(out, name, settings))
            continue
        kind = MLflow if tracker == "mlflow" else Wandb
        opened.append(kind(out, name, settings, ids.get(tracker)))
        ids[tracker] = opened[-1].run_id
    if ids:
        ids_path.write_text(json.dumps(ids, indent=2) + "\n")
    return opened
