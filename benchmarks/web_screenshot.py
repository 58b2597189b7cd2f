"""A screenshot of the `kwskit serve` page mid-stream: benchmarks/results/web_page.png.

    python benchmarks/web_screenshot.py [RUN_OR_MODEL] [--at 9] [--out PNG]

Synthesizes the eight mini10 keywords (eSpeak NG, one unseen speaker each, 1.5 s apart, over
faint noise), serves the model with `kwskit serve`'s server, and lets headless Chromium's
fake microphone play the recording into the page (as tests/test_web.py does); the screenshot
is taken ``--at`` seconds into the live stream. Needs chromium on PATH, Playwright for Python
and the vendored onnxruntime-web (built here when missing). The default model is the demo
run (`make demo ARGS="--out runs/demo"`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from kwskit.data.synth import make_speakers, speak
from kwskit.fsutil import atomic_path
from kwskit.web.build import build, is_built
from kwskit.web.serve import make_server, stream_model

SR = 16000
WORDS = ["yes", "no", "up", "down", "left", "right", "stop", "go"]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def words_wav(path: Path) -> None:
    rng = np.random.default_rng(1)
    x = (0.002 * rng.standard_normal(int((2 + 1.5 * len(WORDS)) * SR))).astype(np.float32)
    speakers = make_speakers(0, 40)[10:]  # not the demo data's first speakers
    for k, word in enumerate(WORDS):
        y = speak(word, speakers[k])
        i = int((1 + 1.5 * k) * SR)
        x[i:i + len(y)] += 0.4 * y / np.abs(y).max()
    sf.write(str(path), x, SR, subtype="PCM_16")  # Chromium's fake microphone: 16-bit PCM


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="runs/demo", help="run directory or streaming .onnx")
    ap.add_argument("--at", type=float, default=9.8, help="seconds into the stream")
    ap.add_argument("--out", default="benchmarks/results/web_page.png", help="PNG to write")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    if not is_built():
        build()
    server = make_server(stream_model(a.model), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        wav = Path(tmp) / "words.wav"
        words_wav(wav)
        ctx = pw.chromium.launch_persistent_context(
            Path(tmp) / "profile", executable_path=shutil.which("chromium"), headless=True,
            args=FLAGS + [f"--use-file-for-fake-audio-capture={wav}%noloop"],
            viewport={"width": 1280, "height": 760})
        page = ctx.new_page()
        page.goto(url)
        page.evaluate("() => kws.ready")
        page.click("#mic")
        page.wait_for_function(f"() => kws.stats().seconds > {a.at}", timeout=120_000)
        time.sleep(0.1)  # one more paint
        with atomic_path(a.out) as out:
            page.screenshot(path=str(out), type="png")
        stats = page.evaluate("() => kws.stats()")
        found = page.evaluate("() => kws.getDetections()")
        ctx.close()
    server.shutdown()
    print(f"{a.out}: {stats['seconds']:.1f} s streamed, RTF {stats['rtf']:.3f}; detections: "
          + ", ".join(f"{d['keyword']} {d['start']:.2f} s" for d in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
