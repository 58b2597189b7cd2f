"""End-to-end training on the tiny synthetic data set: learning, run layout, resume, DDP, eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kwskit.cli import main as cli
from kwskit.config import load_config
from kwskit.models.io import read_checkpoint
from kwskit.train.loop import fit

TINY = ["model.name=dscnn_s", "data.labels=[yes, no, up, down]", "train.batch_size=16",
        "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0", "schedule.name=constant",
        "train.threads=1", "augment.noise_prob=0.3"]


def tiny_cfg(epochs: int, *extra: str):
    return load_config(None, [*TINY, f"train.epochs={epochs}", *extra])


def test_train_beats_chance_and_writes_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = fit(tiny_cfg(8), out, data=str(tiny_data), quiet=True)
    labels = result["labels"]
    assert labels == ["yes", "no", "up", "down", "_silence_", "_unknown_"]
    for name in ("config.yaml", "labels.json", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert (out / "mlflow.db").is_file() and not (out / "mlruns").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 8
    # six classes: chance is 1/6
    assert metrics["best"]["val_acc"] > 0.6
    code = cli(["eval", str(out), "--data", str(tiny_data), "--split", "test", "--json"])
    assert code == 0
    assert (out / "eval" / "data-test" / "confusion.png").is_file()
    assert (out / "eval" / "data-test" / "far_frr.png").is_file()


def test_same_seed_same_weights(tiny_data, tmp_path):
    a = fit(tiny_cfg(2), tmp_path / "a", data=str(tiny_data), quiet=True, track=False)
    b = fit(tiny_cfg(2), tmp_path / "b", data=str(tiny_data), quiet=True, track=False)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    wa = read_checkpoint(tmp_path / "a/checkpoints/last.pt")["model"]
    wb = read_checkpoint(tmp_path / "b/checkpoints/last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # both checkpoints carry the architecture spec, as plain JSON (kwskit.models.io.arch_of)
    for name in ("best", "last"):
        arch = read_checkpoint(tmp_path / f"a/checkpoints/{name}.pt")["arch"]
        assert json.loads(json.dumps(arch)) == arch
        assert arch["name"] == "dscnn_s" and arch["input"] == "2d"
        assert arch["args"]["num_classes"] == len(a["labels"]) and arch["args"]["in_features"] == 40


def _kwskit(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "kwskit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_resume_after_kill_matches_unbroken_run(tiny_data, tmp_path):
    epochs = 4
    overrides = [x for o in [*TINY, f"train.epochs={epochs}"] for x in ("--set", o)]
    killed = tmp_path / "killed"
    proc = _kwskit("train", "--data", str(tiny_data), "--out", str(killed), "--no-mlflow", *overrides)
    deadline = time.time() + 120
    # kill -9 as soon as the first epoch is checkpointed, while the second is running
    while time.time() < deadline:
        metrics = killed / "metrics.json"
        if metrics.exists() and len(json.loads(metrics.read_text())["history"]) >= 1:
            break
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stdout.read()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads((killed / "metrics.json").read_text())["history"])
    assert done < epochs, "the run finished before it could be killed"
    resumed = _kwskit("train", "--resume", str(killed), "--no-mlflow")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    fit(tiny_cfg(epochs), tmp_path / "unbroken", data=str(tiny_data), quiet=True, track=False)
    a = read_checkpoint(killed / "checkpoints/last.pt")
    b = read_checkpoint(tmp_path / "unbroken/checkpoints/last.pt")
    assert a["epoch"] == b["epoch"] == epochs
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]), "resumed weights differ"
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_cli_budget_epochs_compresses_the_recipe(tiny_data, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: {epochs: 40}\nschedule: {name: cosine, warmup_epochs: 4}\n")
    out = tmp_path / "run"
    assert cli(["train", "--config", str(recipe), "--data", str(tiny_data), "--out", str(out),
                "--no-mlflow", "--budget-epochs", "1", *sum((["--set", t] for t in TINY), [])]) == 0
    saved = load_config(out / "config.yaml")
    # 4 of 40 warm-up epochs scale to 0.1 of 1; the floor is a third of the budget
    assert saved.train.epochs == 1 and saved.schedule.warmup_epochs == pytest.approx(1 / 3, abs=1e-5)
    assert cli(["train", "--resume", str(out), "--budget-epochs", "2"]) == 2


def test_label_word_missing_from_data_is_named(tiny_data, tmp_path):
    from kwskit.errors import KwsError

    with pytest.raises(KwsError, match=r"data.labels: sheila not in .*its words: .*yes"):
        fit(tiny_cfg(1, "data.labels=[yes, sheila]"), tmp_path / "run", data=str(tiny_data), quiet=True)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_config_and_missing_run(tiny_data, tmp_path, capsys):
    assert cli(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert cli(["train", "--resume", str(tmp_path), "--set", "train.epochs=3"]) == 2


def test_existing_run_is_not_overwritten(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    fit(tiny_cfg(1), out, data=str(tiny_data), quiet=True, track=False)
    before = (out / "checkpoints/last.pt").read_bytes()
    assert cli(["train", "--data", str(tiny_data), "--out", str(out), "--no-mlflow", "--set", "train.epochs=1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoints/last.pt").read_bytes() == before


def test_out_folder_with_other_files_is_refused(tiny_data, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    argv = ["train", "--data", str(tiny_data), "--no-mlflow", "--set", "train.epochs=1"]
    assert cli([*argv, "--out", str(mine)]) == 2
    assert "not a kwskit run" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert cli([*argv, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    fit(tiny_cfg(1), tmp_path / "empty", data=str(tiny_data), quiet=True, track=False)
    assert (tmp_path / "empty" / "checkpoints" / "best.pt").exists()


def test_truncated_checkpoint_says_what_to_do(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    fit(tiny_cfg(1), out, data=str(tiny_data), quiet=True, track=False)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:3000])
    assert cli(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged or truncated" in err
    assert err.endswith("evaluate its best.pt (--checkpoint best) or train it again")


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    overrides = [x for o in [*TINY, "train.epochs=2"] for x in ("--set", o)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "kwskit", "train", "--data", str(tiny_data), "--out", str(out), *overrides],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = read_checkpoint(out / "checkpoints/last.pt")
    assert state["epoch"] == 2
    # only rank 0 writes: one MLflow run, one history of 2 epochs with the full clip count
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("kwskit").experiment_id])
    assert len(runs) == 1
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert len(hist) == 2


def test_eval_on_test_archive_layout(tiny_data, tmp_path):
    from conftest import make_clip

    from kwskit.data.audio import write_audio
    from kwskit.eval.evaluate import evaluate_run

    run = tmp_path / "run"
    fit(tiny_cfg(6), run, data=str(tiny_data), quiet=True, track=False)
    archive = tmp_path / "speech_commands_test_set"
    files = 0
    for folder, word in [("yes", "yes"), ("no", "no"), ("up", "up"), ("down", "down"), ("_unknown_", "bed")]:
        (archive / folder).mkdir(parents=True)
        for s in range(20, 24):
            write_audio(archive / folder / f"{word}_{s:08x}_nohash_0.wav", make_clip(word, s, 0))
            files += 1
    (archive / "_silence_").mkdir()
    for s in range(3):
        write_audio(archive / "_silence_" / f"silence_{s}.wav", torch.zeros(16000).numpy())
        files += 1
    metrics, report = evaluate_run(run, archive, split="test")
    assert metrics["layout"] == "test_archive"
    assert metrics["n"] == files
    assert metrics["per_class"]["_silence_"]["support"] == 3
    assert metrics["per_class"]["_unknown_"]["support"] == 4
    assert metrics["accuracy"] > 0.5
    assert (report / "metrics.json").is_file()


def test_eval_json_last_line(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny_cfg(1), run, data=str(tiny_data), quiet=True, track=False)
    capsys.readouterr()
    assert cli(["eval", str(run), "--data", str(tiny_data), "--split", "validation", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert {"accuracy", "n", "per_class"} <= set(summary)
    assert summary["n"] > 0 and 0.0 <= summary["accuracy"] <= 1.0


def test_info_known_model(capsys):
    assert cli(["info", "dscnn_s", "--json", "--no-latency"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["params"] == 23180  # 12 classes; see tests/test_models.py for the paper check
    assert prof["macs_with_frontend"] > prof["macs"] > 2_000_000
    assert cli(["info", "dscnn_z"]) == 2
    assert "dscnn_s" in capsys.readouterr().err


def test_plot_pareto_from_runs(tiny_data, tmp_path, capsys):
    runs = []
    for name in ("dscnn_s", "tcresnet8"):
        run = tmp_path / name
        fit(tiny_cfg(1, f"model.name={name}"), run, data=str(tiny_data), quiet=True, track=False)
        runs.append(str(run))
    out = tmp_path / "pareto.png"
    assert cli(["plot", "pareto", *runs, "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "dscnn_s" in printed and "tcresnet8" in printed
    assert cli(["plot", "pareto", str(tmp_path / "nope")]) == 2


def test_loud_noise_is_silence_when_training_covers_loud_rooms(tiny_data, tmp_path):
    """With silence_rms_dbfs covering -60..-10 dBFS, noise windows from RMS 0.003 to 0.3 are
    classified as silence, not as a word. (The data's noise file is white noise at RMS 0.1;
    trained on its own level, the same model calls RMS 0.01 noise _unknown_.)"""
    import numpy as np

    from kwskit.models.io import load_model

    out = tmp_path / "loud"
    fit(tiny_cfg(8, "augment.silence_rms_dbfs=[-60, -10]", "data.silence_share=2.0"), out,
        data=str(tiny_data), quiet=True, track=False)
    pipeline, _, labels = load_model(out)
    rng = np.random.default_rng(0)
    silence = labels.index("_silence_")
    for rms in (0.003, 0.03, 0.3):
        noise = torch.from_numpy((rms * rng.standard_normal((10, 16000))).astype(np.float32))
        with torch.no_grad():
            pred = pipeline(noise).argmax(-1)
        assert int((pred == silence).sum()) >= 9, (rms, [labels[i] for i in pred])


def test_train_unknown_share_widens_training_only(tiny_data):
    """data.train_unknown_share draws more of the other words as training _unknown_ examples;
    validation keeps data.unknown_share's."""
    from kwskit.errors import KwsError
    from kwskit.train.data import TrainData

    def unknowns(split):
        unk = split.labels.index("_unknown_")
        return [e.path for e in split.examples if e.label == unk]

    base = TrainData(tiny_cfg(1, "data.labels=[yes, no]", "data.unknown_share=0.5"),
                     str(tiny_data), quiet=True)
    wide = TrainData(tiny_cfg(1, "data.labels=[yes, no]", "data.unknown_share=0.5",
                              "data.train_unknown_share=2.0"), str(tiny_data), quiet=True)
    n_kw = sum(1 for e in base.train.examples if e.source == "clip") / 2
    assert len(unknowns(base.train)) == round(0.5 * n_kw)
    assert len(unknowns(wide.train)) == round(2.0 * n_kw) > len(unknowns(base.train))
    assert [e.path for e in wide.val.examples] == [e.path for e in base.val.examples]
    with pytest.raises(KwsError, match="data.train_unknown_share"):
        tiny_cfg(1, "data.train_unknown_share=-1")


def test_unknown_holdout_and_extra_unknown_words(tiny_data, tmp_path):
    """Held-out words never become _unknown_; another data set's words add _unknown_ training
    examples (never keywords, never held-out words), and validation stays as it was."""
    from conftest import build_tiny_dataset

    from kwskit.errors import KwsError
    from kwskit.train.data import TrainData

    extra = build_tiny_dataset(tmp_path / "extra", speakers=4, takes=1)  # yes no up down bed
    for w in ("yes", "no"):  # rename two word folders: words the main set does not have
        (extra / w).rename(extra / f"{w}x")
    cfg = tiny_cfg(1, "data.labels=[yes, no]", "data.unknown_holdout=[up]",
                   f"data.unknown_extra=[{extra}]", "data.unknown_extra_share=1.0")
    td = TrainData(cfg, str(tiny_data), quiet=True)
    unk = td.labels.index("_unknown_")
    train_unknown = [e.path for e in td.train.examples if e.label == unk]
    from_extra = [p for p in train_unknown if p.startswith(str(extra))]
    n_kw = sum(1 for e in td.train.examples if e.source == "clip")
    assert len(from_extra) == min(round(n_kw / 2), 4 * 5)  # share 1.0 of one keyword's count
    assert all("/up/" not in p for p in train_unknown)  # held out, in both data sets
    assert {p.split("/")[-2] for p in from_extra} <= {"yesx", "nox", "down", "bed"}
    base = TrainData(tiny_cfg(1, "data.labels=[yes, no]", "data.unknown_holdout=[up]"),
                     str(tiny_data), quiet=True)
    assert [e.path for e in base.val.examples] == [e.path for e in td.val.examples]
    with pytest.raises(KwsError, match="data.unknown_extra_share"):
        tiny_cfg(1, "data.unknown_extra_share=-1")
    with pytest.raises(KwsError, match="hold no words outside"):
        TrainData(tiny_cfg(1, f"data.unknown_extra=[{tiny_data}]",
                           "data.labels=[yes, no, up, down, bed]"), str(tiny_data), quiet=True)
