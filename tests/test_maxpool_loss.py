"""The max-pooled detection loss (train.loss: maxpool): contexts, the frames it trains, a run."""

from __future__ import annotations

import json

import pytest
import torch

from kwskit.cli import main as cli
from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.train.loop import default_objective, fit
from kwskit.train.maxpool_loss import MaxPoolDetection

LABELS = ["yes", "no", "_silence_", "_unknown_"]
pytestmark = pytest.mark.usefixtures("one_thread")


class FixedFrames(torch.nn.Module):
    """Stands in for a pipeline: returns its own per-frame logits whatever the audio."""

    def __init__(self, frames: torch.Tensor):
        super().__init__()
        self.frames = torch.nn.Parameter(frames)
        self.seen = None

    def forward(self, wave, frames_window=None):
        assert frames_window == 5
        self.seen = wave
        return self.frames


def _objective(first: int):
    obj = MaxPoolDetection(LABELS, context_s=0.25)
    # 5 frames per window; the context covers the first ``first`` frames
    obj._frames = lambda net, num_samples=None: 5 if num_samples is None else first
    return obj


def test_contexts_are_tails_of_non_keyword_clips():
    torch.manual_seed(0)
    obj = MaxPoolDetection(LABELS, context_s=0.25)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 0, 0])
    wave = torch.arange(8.0)[:, None] + torch.linspace(0, 0.5, 16000)[None]  # every row differs
    ctx = obj.contexts(wave, target)
    assert ctx.shape == (8, 4000)
    tails = {2: wave[2, -4000:], 3: wave[3, -4000:]}
    for row in ctx:  # each context is the tail of clip 2 (_silence_) or 3 (_unknown_)
        assert any(torch.equal(row, t) for t in tails.values())
    only_keywords = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    assert torch.count_nonzero(obj.contexts(wave, only_keywords)) == 0  # none to borrow: silence


def test_loss_trains_the_best_keyword_frame_and_the_worst_negative_frame():
    # rows: a "yes" clip, an "_unknown_" clip; 8 frames, the first 3 lie in the context
    frames = torch.zeros(2, 4, 8)
    frames[0, 0, 1] = 9.0  # "yes" peaks inside the context: not the clip's frame
    frames[0, 0, 5] = 4.0  # its best frame inside the clip
    frames[1, 1, 2] = 6.0  # the unknown clip's segment: "no" fires hardest at frame 2
    frames[1, 0, 6] = 3.0
    net = FixedFrames(frames.clone())
    loss, logits = _objective(first=3)(net, torch.zeros(2, 16000), torch.tensor([0, 3]))
    assert torch.equal(logits, net.frames[..., -1])
    assert net.seen.shape == (2, 16000 + 4000)  # the clip behind its context
    loss.backward()
    touched = [torch.nonzero(net.frames.grad[i].abs().sum(0))[:, 0].tolist() for i in range(2)]
    assert touched == [[5, 7], [2, 7]]  # the max-pooled frame and the last (clip) frame


class FramesAndClips(FixedFrames):
    """FixedFrames that also answers a bare clip pass (no frames_window) with its own logits."""

    def __init__(self, frames: torch.Tensor, clip_logits: torch.Tensor):
        super().__init__(frames)
        self.clip_logits = torch.nn.Parameter(clip_logits)
        self.bare = None

    def forward(self, wave, frames_window=None):
        if frames_window is None:
            self.bare = wave
            return self.clip_logits
        return super().forward(wave, frames_window)


def test_bare_clip_term_trains_the_clip_without_its_context():
    frames = torch.zeros(2, 4, 8)
    frames[0, 0, 5] = 4.0
    frames[1, 1, 2] = 6.0
    net = FramesAndClips(frames, torch.zeros(2, 4))
    obj = _objective(first=3)
    obj.clip = "bare"
    wave = torch.randn(2, 16000)
    loss, logits = obj(net, wave, torch.tensor([0, 3]))
    assert torch.equal(net.bare, wave) and net.seen.shape == (2, 20000)
    assert torch.equal(logits, net.clip_logits)  # accuracy counts the bare clips
    loss.backward()
    touched = [torch.nonzero(net.frames.grad[i].abs().sum(0))[:, 0].tolist() for i in range(2)]
    assert touched == [[5], [2]]  # only the max-pooled frames: the clip term is the bare pass
    assert net.clip_logits.grad.abs().sum() > 0
    assert obj.describe()["loss_clip"] == "bare"


def test_bad_loss_settings_name_the_field():
    with pytest.raises(KwsError, match="train.loss"):
        load_config(None, ["train.loss=max"])
    with pytest.raises(KwsError, match="train.loss_context_s"):
        load_config(None, ["train.loss_context_s=0"])
    with pytest.raises(KwsError, match="train.loss_clip"):
        load_config(None, ["train.loss_clip=both"])
    with pytest.raises(KwsError, match="train.loss_clip"):
        MaxPoolDetection(LABELS, clip="both")
    with pytest.raises(KwsError, match="train.loss"):
        MaxPoolDetection(["yes", "no"])  # nothing to count as a negative


def test_maxpool_refuses_to_hide_behind_another_objective(tmp_path):
    from kwskit.train.loop import CrossEntropy

    cfg = load_config(None, ["train.loss=maxpool"])
    with pytest.raises(KwsError, match="train.loss: maxpool cannot be combined"):
        fit(cfg, tmp_path / "run", objective=CrossEntropy())
    assert not (tmp_path / "run").exists()


def test_maxpool_needs_a_model_that_streams(tiny_data, tmp_path):
    cfg = load_config(None, ["model.name=kwt1", "data.labels=[yes, no]", "train.loss=maxpool",
                             "train.threads=1"])
    with pytest.raises(KwsError, match="cannot stream"):
        fit(cfg, tmp_path / "run", data=str(tiny_data), quiet=True, track=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_maxpool_run_trains_and_streams(tiny_data, tmp_path):
    cfg = load_config(None, ["model.name=tcresnet8", "model.args={causal: true}",
                             "data.labels=[yes, no, up, down]", "train.batch_size=16",
                             "optim.name=adam", "optim.lr=0.003", "optim.weight_decay=0",
                             "schedule.name=constant", "train.threads=1", "train.epochs=4",
                             "train.loss=maxpool"])
    assert isinstance(default_objective(cfg, LABELS), MaxPoolDetection)
    out = tmp_path / "run"
    result = fit(cfg, out, data=str(tiny_data), quiet=True, track=False)
    assert result["best"]["val_acc"] > 0.5  # six classes: chance is 1/6
    assert "loss: maxpool" in (out / "config.yaml").read_text()
    assert cli(["eval", str(out), "--data", str(tiny_data), "--split", "test", "--json"]) == 0
    assert cli(["eval-stream", str(out), "--data", str(tiny_data), "--split", "test",
                "--minutes", "0.5", "--json"]) == 0
    assert json.loads((out / "metrics.json").read_text())["best"]["val_acc"] > 0.5
