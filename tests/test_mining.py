"""Hard-negative mining: keyword-free audio, what a round adds, and resuming a mining run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.models.io import read_checkpoint
from kwskit.train import loop
from kwskit.train.mining import mine, mining_epochs, negative_audio

LABELS = ["_silence_", "_unknown_", "yes", "no", "up", "down"]
TINY = ["model.name=dscnn_s", "data.labels=[yes, no, up, down]", "train.batch_size=16",
        "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0", "schedule.name=constant",
        "train.threads=1", "augment.noise_prob=0.3", "mining.minutes=0.3", "mining.threshold=0.05"]


class LoudIsYes(torch.nn.Module):
    """Fires "yes" in proportion to a window's loudness: a stand-in that fires on anything."""

    def forward(self, x):
        rms = x.pow(2).mean(dim=1).sqrt()
        logits = torch.zeros(len(x), len(LABELS))
        logits[:, LABELS.index("yes")] = 200 * rms
        return logits


def test_negative_audio_holds_no_keyword(tiny_data):
    audio, words = negative_audio(str(tiny_data), LABELS, minutes=0.5, seed=1)
    assert audio.dtype == np.float32 and len(audio) == pytest.approx(30 * 16000, abs=16000)
    assert words and all(not w["keyword"] for w in words)
    assert {w["word"] for w in words} == {"bed"}  # the tiny set's only non-keyword word
    again, _ = negative_audio(str(tiny_data), LABELS, minutes=0.5, seed=1)
    assert np.array_equal(audio, again)


def test_mining_adds_only_windows_of_the_negative_audio(tiny_data):
    audio, words = negative_audio(str(tiny_data), LABELS, minutes=0.5, seed=2)
    got = mine(LoudIsYes(), audio, words, LABELS, threshold=0.3, limit=20)
    assert 0 < len(got.labels) <= 20 and got.fired >= len(got.labels)
    assert set(got.labels) <= {LABELS.index("_unknown_"), LABELS.index("_silence_")}
    assert np.all(got.scores >= 0.3) and np.all(np.diff(got.scores) <= 1e-6)  # strongest first
    starts = []
    for w in got.waves:  # every mined window is a slice of the negative audio
        hits = np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(audio, 16000)[::1600]
                                     == w, axis=1))
        assert len(hits) == 1
        starts.append(hits[0] * 1600)
    starts = np.sort(starts)
    assert np.all(np.diff(starts) >= 8000)  # thinned: one window per half clip
    # a model that never fires mines nothing
    none = mine(LoudIsYes(), audio * 0, words, LABELS, threshold=0.3, limit=20)
    assert len(none.labels) == 0 and none.waves.shape == (0, 16000)


def test_mining_rounds_are_spread_over_training():
    assert mining_epochs(15, 2) == {5: 1, 10: 2}
    assert mining_epochs(2, 1) == {1: 1}
    assert all(e >= 1 for e in mining_epochs(4, 3))


@pytest.mark.parametrize("override,field", [("mining.rounds=3", "mining.rounds"),
                                            ("mining.threshold=1.5", "mining.threshold"),
                                            ("mining.share=0", "mining.share")])
def test_bad_mining_settings_name_the_field(override, field):
    with pytest.raises(KwsError, match=field):
        load_config(None, [*TINY, "train.epochs=3", override])


def test_a_mining_run_resumes_to_the_same_weights(tiny_data, tmp_path, monkeypatch):
    cfg = load_config(None, [*TINY, "train.epochs=3", "mining.rounds=1"])
    loop.fit(cfg, tmp_path / "unbroken", data=str(tiny_data), quiet=True, track=False)
    a = read_checkpoint(tmp_path / "unbroken/checkpoints/last.pt")
    assert a["history"][0].get("hard_negatives") == 0  # the round runs before epoch 2
    added = a["history"][-1]["hard_negatives"]
    assert added > 0 and (tmp_path / "unbroken/hard_negatives.npz").exists()

    real, calls = loop.evaluate_loss_acc, []

    def dies_in_epoch_3(*args, **kw):  # a kill after epoch 2 was saved
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "evaluate_loss_acc", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(cfg, tmp_path / "killed", data=str(tiny_data), quiet=True, track=False)
    monkeypatch.setattr(loop, "evaluate_loss_acc", real)
    loop.fit(cfg, tmp_path / "killed", data=str(tiny_data), resume=True, quiet=True, track=False)
    b = read_checkpoint(tmp_path / "killed/checkpoints/last.pt")
    assert b["history"][-1]["hard_negatives"] == added
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "resumed weights differ"
