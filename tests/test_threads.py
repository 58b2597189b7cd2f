"""Thread count: explicit > KWSKIT_THREADS > OMP_NUM_THREADS > idle physical cores; printed at
the start of training; `make demo ARGS=...` passes options through."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kwskit import threads
from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.threads import choose_threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.delenv("KWSKIT_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)


def test_environment_wins_and_is_capped_at_the_cores(four_cores, monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda: pytest.fail("must not sample the load"))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(0)[0] == 3
    monkeypatch.setenv("KWSKIT_THREADS", "2")  # kwskit's own variable first
    assert choose_threads(0) == (2, "KWSKIT_THREADS=2")
    monkeypatch.setenv("KWSKIT_THREADS", "16")
    n, why = choose_threads(0)
    assert n == 4 and "capped" in why
    assert choose_threads(6)[0] == 6  # an explicit count is taken as asked
    monkeypatch.setenv("KWSKIT_THREADS", "lots")
    with pytest.raises(KwsError, match="KWSKIT_THREADS"):
        choose_threads(0)


def test_automatic_leaves_the_busy_cores_to_other_jobs(four_cores, monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.2)
    assert choose_threads(0)[0] == 4
    monkeypatch.setattr(threads, "busy_cores", lambda: 2.1)
    n, why = choose_threads(0)
    assert n == 2 and "busy" in why
    monkeypatch.setattr(threads, "busy_cores", lambda: 7.0)
    assert choose_threads(0)[0] == 1  # never below one
    monkeypatch.setattr(threads, "busy_cores", lambda: None)  # no /proc/stat
    assert choose_threads(0)[0] == 4
    with pytest.raises(KwsError, match="train.threads"):
        choose_threads(-1)


def test_busy_cores_measures_this_machine():
    busy = threads.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (threads.available_cpus() + 1)
    assert 1 <= threads.physical_cores() <= threads.available_cpus()


def test_training_prints_its_thread_count(tiny_data, tmp_path, capsys, monkeypatch):
    from kwskit.train.loop import fit

    monkeypatch.setenv("KWSKIT_THREADS", "1")
    cfg = load_config(None, ["model.name=dscnn_s", "train.epochs=1", "data.labels=yes,no",
                             "train.batch_size=32"])
    fit(cfg, tmp_path / "run", data=str(tiny_data), track=False)
    assert "threads: 1 (KWSKIT_THREADS=1" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_passes_args_through():
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "demo",
                          "ARGS=--set train.threads=1"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    line = [x for x in out.splitlines() if "kwskit.demo" in x]
    assert line and line[-1].endswith("kwskit.demo --set train.threads=1")
