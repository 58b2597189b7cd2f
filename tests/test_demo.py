"""The demo's closing summary tells what its accuracy does and does not mean."""

from __future__ import annotations

from kwskit.demo import summary_lines


def test_demo_summary_warns_about_real_speech_and_points_onward():
    text = "\n".join(summary_lines({"accuracy": 0.967, "n": 300}, "runs/demo-x", "runs/demo-x/eval"))
    assert "test accuracy 0.9670 on 300 synthetic clips" in text
    assert "does not transfer" in text and "real Speech Commands" in text
    assert "kwskit data download" in text and "kwskit train --config configs/bcresnet1.yaml" in text
