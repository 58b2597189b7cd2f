"""MLflow tracking: the default SQLite store in the run directory, a live `mlflow server`, and a
server that is down (one quick KwsError before the first epoch)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.train.loop import fit
from kwskit.train.tracking import Tracker

TINY = ["model.name=dscnn_s", "data.labels=[yes, no]", "train.batch_size=32", "optim.name=adam",
        "schedule.name=constant", "train.threads=1"]


def tiny_cfg(epochs: int):
    return load_config(None, [*TINY, f"train.epochs={epochs}"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_run(uri: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kwskit")
    (run,) = client.search_runs([exp.experiment_id])
    return client, exp, run


def check_history(client, run, history):
    """One metric entry per epoch, at steps 1..E, equal to metrics.json."""
    for name in ("val_acc", "train_loss"):
        got = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in got] == [row["epoch"] for row in history], name
        assert [m.value for m in got] == pytest.approx([row[name] for row in history]), name


def test_default_store_is_sqlite_in_the_run_dir(tiny_data, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # MLflow's own defaults (./mlruns, ./mlartifacts) would land here
    out = tmp_path / "run"
    result = fit(tiny_cfg(1), out, data=str(tiny_data), quiet=True)
    assert (out / "mlflow.db").is_file() and not (out / "mlruns").exists()
    assert list(cwd.iterdir()) == []
    client, exp, run = only_run(f"sqlite:///{out.resolve()}/mlflow.db")
    assert exp.artifact_location == (out.resolve() / "mlartifacts").as_uri()
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "dscnn_s"
    check_history(client, run, result["history"])


def test_old_file_store_run_dir_keeps_its_store(tmp_path, monkeypatch):
    # A run begun under the old default (RUN/mlruns) resumes into the same MLflow run.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the test
    (tmp_path / "mlruns").mkdir()
    first = Tracker(tmp_path, None)
    assert first.uri == (tmp_path.resolve() / "mlruns").as_uri()
    run_id = first.start("old", {"a": 1})
    first.end()
    again = Tracker(tmp_path, None)
    assert again.start("old", {}, resume_id=run_id) == run_id
    again.end()
    assert not (tmp_path / "mlflow.db").exists()


def test_server_down_is_one_quick_error_before_training(tiny_data, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    t0 = time.time()
    with pytest.raises(KwsError, match="not reachable"):
        Tracker(tmp_path / "t", uri)  # the check is in the constructor: nothing written yet
    assert not (tmp_path / "t").exists()
    with pytest.raises(KwsError, match="not reachable") as exc:
        fit(tiny_cfg(1), tmp_path / "run", data=str(tiny_data), quiet=True, tracking_uri=uri)
    assert time.time() - t0 < 15  # not MLflow's minutes of retries
    assert uri in str(exc.value)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # no epoch ran


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A live `mlflow server` on a free port (SQLite store, artifacts under tmp); its URI."""
    pytest.importorskip("flask", reason="`mlflow server` needs the full mlflow: pip install 'kwskit[tracking]'")
    pytest.importorskip("mlflow.server", reason="`mlflow server` needs the full mlflow: pip install 'kwskit[tracking]'")
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(tmp / "server.log", "w")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/db.sqlite",
           "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    # Own session: the server starts uvicorn and a job runner as children; killpg ends them all.
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    uri = f"http://127.0.0.1:{port}"
    try:
        t0, deadline = time.time(), time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        print(f"mlflow server up in {time.time() - t0:.1f}s")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_train_logs_to_a_live_server(mlflow_server, tiny_data, tmp_path):
    out = tmp_path / "run"
    result = fit(tiny_cfg(2), out, data=str(tiny_data), quiet=True, tracking_uri=mlflow_server)
    assert not (out / "mlflow.db").exists()  # everything went to the server
    client, _, run = only_run(mlflow_server)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model.name"] == "dscnn_s" and run.data.params["train.epochs"] == "2"
    check_history(client, run, result["history"])
