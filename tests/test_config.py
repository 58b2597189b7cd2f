import pytest

from kwskit.config import ExperimentConfig, load_config, save_config
from kwskit.errors import KwsError


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=3", "optim.lr=0.01", "frontend.n_mels=64",
                             "data.labels=[yes, no, on, off]", "train.amp=false"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.01
    # an override edits the front-end instead of replacing it
    assert cfg.frontend == {"type": "logmel", "n_mels": 64}
    # YAML 1.1 would read yes/no/on/off as booleans; labels must stay words
    assert cfg.data.labels == ["yes", "no", "on", "off"]
    assert cfg.train.amp is False


def test_yaml_file_and_roundtrip(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model:\n  name: dscnn_s\n  args: {dropout: 0.2}\ntrain:\n  epochs: 7\n"
                 "data:\n  labels: [yes, no]\n")
    cfg = load_config(f)
    assert cfg.model.name == "dscnn_s" and cfg.model.args == {"dropout": 0.2}
    assert cfg.train.epochs == 7 and cfg.data.labels == ["yes", "no"]
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("override, needle", [
    (["train.epoch=3"], "train.epoch: unknown key (did you mean 'epochs'?)"),
    (["train.epochs=abc"], "train.epochs: expected an integer"),
    (["optim.lr=-1"], "optim.lr: must be > 0"),
    (["optim.name=rmsprop"], "optim.name: must be adam, adamw or sgd"),
    (["schedule.name=poly"], "schedule.name"),
    (["bogus.key=1"], "bogus: unknown key"),
    (["train.label_smoothing=1.5"], "train.label_smoothing"),
    (["train.amp=maybe"], "train.amp: must be true, false or auto"),
    (["noequals"], "expected key=value"),
    (["data.min_clip_fraction=1"], "data.min_clip_fraction: must be in [0, 1)"),
    (["data.min_clip_fraction=-0.1"], "data.min_clip_fraction: must be in [0, 1)"),
    (["data.train_speakers=0"], "data.train_speakers: must be in (0, 1]"),
    (["data.train_speakers=1.5"], "data.train_speakers: must be in (0, 1]"),
    (["data.train_speakers=0.5", "data.stream_windows=1.0"],
     "data.train_speakers: below 1 cannot be combined with data.stream_windows"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(KwsError) as err:
        load_config(None, override)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(KwsError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(KwsError, match="bad.yaml"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epochz: 3\n")
    with pytest.raises(KwsError, match=r"typo.yaml: config: train.epochz: unknown key"):
        load_config(typo)


def test_lr_schedule_shapes():
    from kwskit.train.loop import lr_at

    cfg = load_config(None, ["train.epochs=10", "optim.lr=1.0", "schedule.name=cosine",
                             "schedule.warmup_epochs=2"])
    assert lr_at(cfg, 0.0) < 0.01 and abs(lr_at(cfg, 1.0) - 0.5) < 1e-6
    assert abs(lr_at(cfg, 2.0) - 1.0) < 1e-6 and lr_at(cfg, 10.0) < 1e-6
    step = load_config(None, ["optim.lr=1.0", "schedule.name=step", "schedule.step_epochs=10",
                              "schedule.gamma=0.5", "train.epochs=60"])
    assert [lr_at(step, e) for e in (0, 9.9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_budget_compresses_the_schedule():
    from kwskit.config import budget_overrides
    from kwskit.train.loop import lr_at

    base = ["train.epochs=200", "optim.lr=1.0", "schedule.name=cosine",
            "schedule.warmup_epochs=10", "train.batch_size=256"]
    recipe = load_config(None, base)
    short = load_config(None, base + budget_overrides(recipe, 20, 100))
    assert short.train.epochs == 20 and short.train.batch_size == 100
    assert short.schedule.warmup_epochs == 1.0  # 10 of 200 -> 1 of 20
    for frac in (0.02, 0.05, 0.3, 0.7, 1.0):  # the same lr curve, squeezed
        assert abs(lr_at(short, 20 * frac) - lr_at(recipe, 200 * frac)) < 1e-9
    step = load_config(None, ["train.epochs=135", "schedule.name=step", "schedule.step_epochs=45"])
    assert "schedule.step_epochs=5" in budget_overrides(step, 15)
    assert budget_overrides(recipe) == []
    # the warm-up stays at least one epoch (a third of a shorter budget); longer budgets scale
    for budget, warm in ((3, 1.0), (2, 2 / 3), (400, 20.0)):
        assert load_config(None, base + budget_overrides(recipe, budget)).schedule.warmup_epochs \
            == pytest.approx(warm)
    cold = load_config(None, ["train.epochs=200", "schedule.warmup_epochs=0"])
    assert "schedule.warmup_epochs=0" in budget_overrides(cold, 3)
    with pytest.raises(KwsError, match="train.epochs"):
        budget_overrides(recipe, 0)


def test_default_config_is_complete():
    assert set(ExperimentConfig().to_dict()) == {"model", "frontend", "augment", "data",
                                                  "optim", "schedule", "train", "mining"}


@pytest.mark.parametrize("name, payload", [
    ("clip.wav", None),  # a real WAV: invalid UTF-8
    ("random.bin", bytes(range(128, 256)) * 4),  # invalid UTF-8
    ("zeros.yaml", b"train:\x00\x00\x00 1\n"),  # decodes, but NUL is not YAML text
])
def test_binary_config_file_is_one_clear_error(tmp_path, capsys, name, payload):
    from kwskit.cli import main
    from kwskit.data.audio import write_audio

    f = tmp_path / name
    if payload is None:
        import numpy as np

        write_audio(f, np.random.default_rng(0).uniform(-0.5, 0.5, 1600).astype(np.float32))
    else:
        f.write_bytes(payload)
    with pytest.raises(KwsError) as err:
        load_config(f)
    msg = str(err.value)
    assert msg == f"{f}: not a text (YAML) config file"
    assert main(["train", "--config", str(f), "--no-mlflow", "--out", str(tmp_path / "run")]) == 2
    stderr = capsys.readouterr().err
    assert stderr == f"kwskit: error: {msg}\n"
    assert not (tmp_path / "run").exists()


def test_min_clip_fraction_default_matches_the_data_code():
    from kwskit.data.speech_commands import MIN_CLIP_FRACTION

    assert ExperimentConfig().data.min_clip_fraction == MIN_CLIP_FRACTION == 0.1
