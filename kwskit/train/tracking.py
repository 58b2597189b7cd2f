"""Experiment tracking in MLflow (as in the BC-ResNet seed), plus metrics.json in the run.

By default MLflow writes a local file store under RUN/mlruns (``mlflow ui --backend-store-uri
RUN/mlruns`` shows it); ``--tracking-uri`` points at a server or database instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from kwskit.errors import KwsError


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    """Thin MLflow wrapper; a disabled tracker (rank != 0, or tracking off) does nothing."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, enabled: bool = True):
        self.enabled = enabled
        self.run_id = None
        if not enabled:
            return
        # MLflow 3 keeps the plain-file store only behind this switch; it needs no server or
        # database, which is what a local default should be.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the progress output clean
        self.mlflow = mlflow
        self.uri = tracking_uri or (Path(run_dir).resolve() / "mlruns").as_uri()
        mlflow.set_tracking_uri(self.uri)

    def start(self, run_name: str, params: dict, resume_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        try:
            self.mlflow.set_experiment("kwskit")
            run = self.mlflow.start_run(run_id=resume_id) if resume_id else self.mlflow.start_run(run_name=run_name)
            if not resume_id:
                flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
                self.mlflow.log_params(flat)
        except Exception as exc:  # a server that is down or a bad URI
            raise KwsError(f"--tracking-uri {self.uri}: MLflow failed ({str(exc).splitlines()[0][:200]})") from None
        self.run_id = run.info.run_id
        return self.run_id

    def log(self, metrics: dict, step: int) -> None:
        if self.enabled:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.mlflow.end_run(status=status)
