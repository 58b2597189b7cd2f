"""ONNX export and the torch-free runtime: ONNX Runtime gives PyTorch's numbers.

For one model of every registered family (the sizes of a family share their code): the
exported clip model equals the pipeline's softmax to 1e-4, and the exported streaming model
fed a long random signal in uneven blocks equals ``scores_whole`` to 1e-4 (two chunk sizes
for BC-ResNet and DS-CNN). The runtime imports and streams with torch blocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime", reason="the ONNX tests need onnxruntime (kwskit[onnx])")
pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (kwskit[onnx])")

from kwskit.errors import KwsError  # noqa: E402
from kwskit.export.onnx import export_clip, export_stream  # noqa: E402
from kwskit.models import list_models, model_info  # noqa: E402
from kwskit.runtime import OnnxClassifier, OnnxStreamer, read_card  # noqa: E402
from kwskit.stream.streaming import Streamer, scores_whole  # noqa: E402
from test_streaming import (LABELS, make_run, make_signal, randomize, recipe_pipeline,  # noqa: E402
                            scale_head, stream_cli)
from model_checks import NO_TORCH_PRELUDE  # noqa: E402

SR = 16000
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def _first_of_each_family(streamable: bool) -> list[str]:
    seen, out = set(), []
    for name in list_models():
        fam = model_info(name).get("family")
        p = recipe_pipeline(name)
        if fam not in seen and p.streamable == streamable:
            seen.add(fam)
            out.append(name)
    return out


STREAM_FAMILIES = _first_of_each_family(True)
CHUNKS = {"bcresnet1": (10, 100), "dscnn_s": (40, 200)}


def _pipeline(name: str):
    p = randomize(recipe_pipeline(name), seed=zlib.crc32(name.encode()))
    scale_head(p, make_signal(2.0, seed=1)) if p.streamable else None
    return p.eval()


def _blocks(signal: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(signal):
        n = int(rng.choice([1, 77, 160, 1000, 4321]))
        yield signal[i:i + n]
        i += n


@pytest.mark.parametrize("name", STREAM_FAMILIES)
def test_onnx_runtime_equals_pytorch(name, tmp_path):
    p = _pipeline(name)
    clip = make_signal(2.0, seed=3).reshape(2, SR)
    card = export_clip(p, LABELS, tmp_path / "clip.onnx", name=name)
    assert card["kind"] == "clip" and card["labels"] == LABELS
    with torch.no_grad():
        want = torch.softmax(p(torch.from_numpy(clip)), -1).numpy()
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "clip.onnx").probs(clip), want,
                               atol=1e-4, rtol=0)

    signal = make_signal(Streamer(p).delay_s + 2.0, seed=4)
    whole = scores_whole(p, signal)
    for chunk_ms in CHUNKS.get(name, (10,)):
        path = tmp_path / f"stream{chunk_ms}.onnx"
        card = export_stream(p, LABELS, path, chunk_ms=chunk_ms, name=name)
        assert card["chunk_samples"] % card["step_samples"] == 0
        ort = OnnxStreamer(path)
        got = np.concatenate([ort.step(b) for b in _blocks(signal, chunk_ms)])
        n = got.shape[0]
        assert n >= whole.shape[0] - (ort.warmup_frames + 2 * ort.feed // ort.unit) and n > 0
        np.testing.assert_allclose(got, whole[:n], atol=1e-4, rtol=0)
        np.testing.assert_allclose(ort.frame_times(), Streamer(p).frame_time(np.arange(n)))


def test_card_states_and_checker(tmp_path):
    import onnx

    p = _pipeline("bcresnet1")
    card = export_stream(p, LABELS, tmp_path / "s.onnx", chunk_ms=10, name="bcresnet1")
    onnx.checker.check_model(onnx.load(str(tmp_path / "s.onnx")), full_check=True)
    assert read_card(tmp_path / "s.onnx") == json.loads(json.dumps(card))
    assert card["chunk_samples"] == card["step_samples"] == 160
    assert card["delay_s"] == pytest.approx(Streamer(p).delay_s)
    states = p.init_state(1, card["window_frames"])
    assert [s["shape"] for s in card["states"]] == [list(t.shape) for t in states]
    assert {s["dtype"] for s in card["states"]} == {"float32", "int64"}
    for key in ("labels", "sample_rate", "warmup_frames", "kwskit_version", "frame_step_s"):
        assert key in card


def test_models_that_cannot_stream_export_as_clip_models(tmp_path):
    name = next(n for n in list_models() if not recipe_pipeline(n).streamable)
    p = _pipeline(name)
    export_clip(p, LABELS, tmp_path / "c.onnx", name=name)
    clip = make_signal(1.0, seed=5)[None]
    with torch.no_grad():
        want = torch.softmax(p(torch.from_numpy(clip)), -1).numpy()
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "c.onnx").probs(clip), want, atol=1e-4)
    with pytest.raises(KwsError, match="cannot stream"):
        export_stream(p, LABELS, tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()
    with pytest.raises(KwsError, match="a clip model, not a stream model"):
        OnnxStreamer(tmp_path / "c.onnx")


def test_export_and_stream_commands(tmp_path, capsys):
    from kwskit.cli import main

    run = make_run(tmp_path, name="bcresnet1")
    assert main(["export", str(run), "--stream", "--chunk-ms", "10"]) == 0
    onnx_path = run / "export" / "bcresnet1-stream.onnx"
    assert onnx_path.is_file() and "160 samples per call" in capsys.readouterr().out
    sf.write(str(tmp_path / "a.wav"), make_signal(3.0, seed=6), SR)
    runs = {}
    for model in (str(run), str(onnx_path)):
        assert stream_cli(["stream", model, str(tmp_path / "a.wav"), "--json",
                           "--threshold", "0.2"]) == 0
        runs[model] = json.loads(capsys.readouterr().out)["files"][0]
    assert runs[str(run)] == runs[str(onnx_path)] and runs[str(run)]["detections"]
    assert main(["export", str(run), "--out", str(tmp_path / "clip.onnx")]) == 0
    with pytest.raises(KwsError, match="a clip model"):
        stream_cli(["stream", str(tmp_path / "clip.onnx"), str(tmp_path / "a.wav")])
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(KwsError, match="not a loadable ONNX model"):
        stream_cli(["stream", str(tmp_path / "bad.onnx"), str(tmp_path / "a.wav")])


BLOCK_TORCH = NO_TORCH_PRELUDE + """import json, kwskit.runtime
from kwskit.stream.detector import Detector
from kwskit.stream.longaudio import stream_file
s = kwskit.runtime.OnnxStreamer(sys.argv[1])
res = stream_file(s, sys.argv[2], Detector(s.labels, threshold=0.3), keep_scores=True,
                  progress=False)
from kwskit.cli import main
assert main(["stream", sys.argv[1], sys.argv[2], "--json", "--threshold", "0.3"]) == 0
assert main(["train", "--data", "nowhere"]) == 2  # needs torch: one clear line, no traceback
assert "torch" not in sys.modules
print(json.dumps({"n": len(res.times), "last": res.scores[-1].tolist(),
                  "detections": [d.to_dict() for d in res.detections]}))
"""


def test_runtime_runs_without_torch(tmp_path):
    from kwskit.stream.detector import Detector
    from kwskit.stream.longaudio import stream_file

    p = _pipeline("bcresnet1")
    export_stream(p, LABELS, tmp_path / "s.onnx", chunk_ms=100)
    sf.write(str(tmp_path / "a.wav"), make_signal(2.5, seed=7), SR)
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(tmp_path / "s.onnx"),
                          str(tmp_path / "a.wav")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'kwskit[train]'" in out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    cli = json.loads(out.stdout.strip().splitlines()[-2])["files"][0]
    assert cli["detections"] == got["detections"]
    ref = stream_file(Streamer(p), tmp_path / "a.wav", Detector(LABELS, threshold=0.3),
                      keep_scores=True, progress=False)
    assert got["n"] == len(ref.times)  # flushed to the end of the file in both
    np.testing.assert_allclose(got["last"], ref.scores[-1], atol=1e-4)
    assert got["detections"] == [d.to_dict() for d in ref.detections]
