"""Experiment tracking in MLflow (as in the BC-ResNet seed), plus metrics.json in the run.

By default MLflow writes a SQLite store in the run directory, RUN/mlflow.db (MLflow 3 put its
plain-file store in maintenance mode); open it with
``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``. Artifacts, if any are ever logged, go
to RUN/mlartifacts, never to the current directory. ``--tracking-uri`` points at a server
(``http://127.0.0.1:5000``, see ``mlflow server``; needs ``pip install 'kwskit[tracking]'``) or
another database instead. A server that does not answer is one KwsError before training starts.

A run directory begun under the old default (RUN/mlruns, no RUN/mlflow.db) keeps its file store,
so that ``--resume`` continues the same MLflow run.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from kwskit.errors import KwsError

EXPERIMENT = "kwskit"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_server(uri: str, timeout: float = 5.0) -> None:
    """KwsError unless the http(s) tracking server ``uri`` answers at all.

    MLflow's own client retries a dead server 7 times with exponential backoff (minutes); this
    single short request fails in at most ``timeout`` seconds instead. Any HTTP answer, even an
    error status (a server without /health), counts as reachable: only a connection that cannot
    be made or times out is refused here.
    """
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    # URLError (refused, DNS, timeout), a malformed URL, or something that does not speak HTTP
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise KwsError(f"--tracking-uri {uri}: the MLflow server is not reachable ({reason}); start it "
                       f"(mlflow server ...), fix the URI or train with --no-mlflow") from None


class Tracker:
    """Thin MLflow wrapper; a disabled tracker (rank != 0, or tracking off) does nothing."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, enabled: bool = True):
        self.enabled = enabled
        self.run_id = None
        if not enabled:
            return
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the progress output clean
        self.mlflow = mlflow
        run_dir = Path(run_dir).resolve()
        self.artifacts = None  # our own artifact root for the local default store
        if tracking_uri:
            self.uri = tracking_uri
        elif (run_dir / "mlruns").is_dir() and not (run_dir / "mlflow.db").exists():
            # The old default: MLflow 3 opens a plain-file store only behind this switch.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.uri = (run_dir / "mlruns").as_uri()
        else:
            self.uri = f"sqlite:///{run_dir / 'mlflow.db'}"
            # Without this MLflow records ./mlruns (the current directory) as the artifact root.
            self.artifacts = (run_dir / "mlartifacts").as_uri()
        self.run_dir = run_dir
        if self.uri.startswith(("http://", "https://")):
            check_server(self.uri)  # here, so that a caller can fail before any work is done
        mlflow.set_tracking_uri(self.uri)

    def start(self, run_name: str, params: dict, resume_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        try:
            if self.artifacts:  # the local default: our database, our artifact root
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if self.mlflow.get_experiment_by_name(EXPERIMENT) is None:
                    self.mlflow.create_experiment(EXPERIMENT, artifact_location=self.artifacts)
            self.mlflow.set_experiment(EXPERIMENT)
            run = self.mlflow.start_run(run_id=resume_id) if resume_id else self.mlflow.start_run(run_name=run_name)
            if not resume_id:
                flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
                self.mlflow.log_params(flat)
        except Exception as exc:  # a bad URI, a database it cannot open, a server error
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise KwsError(f"MLflow tracking URI {self.uri}: failed ({first[:200]})") from None
        self.run_id = run.info.run_id
        return self.run_id

    def log(self, metrics: dict, step: int) -> None:
        if self.enabled:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.mlflow.end_run(status=status)
