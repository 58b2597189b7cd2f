"""``kwskit serve`` and its page (kwskit/web): the server, the vendored onnxruntime-web, and
the page itself in a real headless Chromium.

The browser tests need Chromium (Debian's ``chromium``), Playwright for Python (only the
driver: it starts /usr/bin/chromium, no browser download) and npm (to vendor onnxruntime-web);
they are skipped, saying which is missing, without them. Chromium's fake microphone plays a
WAV of words synthesized by eSpeak NG; the page streams it live. The live test uses a toy
model that fires on loud frames (``energy_detector``), so "a word was spoken here" is
checkable on the file's clock; the file test also uses BC-ResNet-1 (random weights), whose
frames must equal kwskit's Python runtime and whose speed is the page's real-time factor.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kwskit.cli import main
from kwskit.errors import KwsError
from kwskit.runtime import OnnxStreamer, read_card
from kwskit.stream.detector import Detector
from kwskit.stream.longaudio import array_blocks, run_stream, stream_file
from kwskit.web import build as web_build
from kwskit.web.build import FILES, VENDOR, WEB_DIR
from kwskit.web.serve import _fresh, make_server, stream_model
from model_checks import NO_TORCH_PRELUDE
from test_streaming import SR, energy_detector, make_run

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = [("yes", 1.0), ("no", 2.6), ("up", 4.2), ("down", 5.8)]  # word, onset (s)
SECONDS = 8.0
ENERGY_LABELS = ["word", "_silence_"]
# what Chromium needs in this sandbox (no GPU, no sandboxing, no calls home)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def keywords_wav(tmp_path_factory):
    """8 s of faint noise with four words spoken by eSpeak NG at ``WORDS``' onsets (16-bit
    PCM WAV at 16 kHz); returns (path, [(word, onset, end)])."""
    from kwskit.data.synth import Speaker, speak

    rng = np.random.default_rng(0)
    x = (0.003 * rng.standard_normal(int(SECONDS * SR))).astype(np.float32)
    spoken = []
    for word, onset in WORDS:
        y = speak(word, Speaker("en-us", "", 150, 50, 50))
        i = int(onset * SR)
        x[i:i + len(y)] += 0.5 * y / np.abs(y).max()
        spoken.append((word, onset, onset + len(y) / SR))
    path = tmp_path_factory.mktemp("web") / "keywords.wav"
    sf.write(str(path), x, SR, subtype="PCM_16")
    return path, spoken


@pytest.fixture(scope="module")
def energy_onnx(tmp_path_factory):
    from kwskit.export.onnx import export_stream

    path = tmp_path_factory.mktemp("web") / "energy-stream.onnx"
    export_stream(energy_detector(), ENERGY_LABELS, path, chunk_ms=10, name="energy")
    return path


@pytest.fixture(scope="module")
def bcresnet_run(tmp_path_factory):
    """A BC-ResNet-1 run (random weights) and its streaming export made by kwskit serve's
    path (10-ms chunks)."""
    run = make_run(tmp_path_factory.mktemp("web"), "bcresnet1")
    return run, stream_model(str(run), log=lambda *_: None)


@pytest.fixture(scope="module")
def vendor():
    if not web_build.is_built():
        if shutil.which("npm") is None:
            pytest.skip("no npm to vendor onnxruntime-web into kwskit/web/vendor "
                        "(install Node.js + npm, or run python -m kwskit.web.build elsewhere)")
        web_build.build(log=lambda *_: None)
    return VENDOR


@pytest.fixture(scope="module")
def browser(vendor, keywords_wav):
    """Headless Chromium whose fake microphone plays ``keywords_wav`` once (%noloop)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser test: no Playwright for Python (pip install playwright; "
                    "it drives the system's chromium, no `playwright install` needed)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("browser test: no chromium on PATH (apt-get install chromium)")
    flags = CHROMIUM_FLAGS + ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                              f"--use-file-for-fake-audio-capture={keywords_wav[0]}%noloop"]
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium,
                                                    headless=True, args=flags)
        yield ctx
        ctx.close()


@contextlib.contextmanager
def served(model, threshold=None):
    """make_server on a free port, serving in a thread; yields (base URL, server)."""
    server = make_server(model, 0, threshold)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def page_at(browser, url):
    """A page of ``url`` whose model is loaded; on leaving, no page error, no failed request
    and no request to anything but the server (the page works offline)."""
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
    page.on("request", lambda r: r.url.startswith((url, "blob:", "data:"))
            or problems.append(f"foreign request: {r.url}"))
    page.goto(url + "/")
    page.evaluate("() => window.kws.ready")
    try:
        yield page
    finally:
        page.close()
    assert not problems, problems


def lag_of(captured: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(lag, normalised peak) of the cross-correlation: captured[n] ~ reference[n - lag]."""
    n = 1 << (len(captured) + len(reference)).bit_length()
    c = np.fft.irfft(np.fft.rfft(captured, n) * np.conj(np.fft.rfft(reference, n)), n)
    lag = int(np.argmax(c))
    peak = c[lag] / np.sqrt(np.dot(captured, captured) * np.dot(reference, reference))
    return (lag - n if lag > n // 2 else lag), float(peak)


def same_detections(page: list[dict], python: list[dict]) -> None:
    assert [(d["keyword"], round(d["start"], 4), round(d["end"], 4)) for d in page] == \
        [(d["keyword"], d["start"], d["end"]) for d in python]
    np.testing.assert_allclose([d["score"] for d in page], [d["score"] for d in python], atol=1e-3)


# ------------------------------------------------------------------------------ no browser
def test_serve_command_errors(tmp_path, energy_onnx, capsys):
    from kwskit.export.onnx import export_clip

    def error(*argv) -> str:
        assert main(["serve", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kwskit: error: "), lines
        return lines[0]

    assert "no such ONNX file" in error(str(tmp_path / "none.onnx"))
    assert "no such run directory or checkpoint" in error(str(tmp_path / "none"))
    assert "no checkpoints/best.pt" in error(str(tmp_path))
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert "not a loadable ONNX model" in error(str(tmp_path / "bad.onnx"))
    export_clip(energy_detector(), ENERGY_LABELS, tmp_path / "clip.onnx")
    assert "a clip model; the page needs a streaming model" in error(str(tmp_path / "clip.onnx"))
    assert "--port: must be 0..65535" in error(str(energy_onnx), "--port", "70000")
    assert "--threshold" in error(str(energy_onnx), "--threshold", "maybe")
    assert "unknown keyword(s) yes" in error(str(energy_onnx), "--threshold", "yes=0.9")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert "cannot listen on 127.0.0.1" in error(str(energy_onnx), "--port",
                                                     str(busy.getsockname()[1]))


def test_build_without_npm_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(web_build.shutil, "which", lambda name: None)
    with pytest.raises(KwsError, match=r"npm \(Node.js\) is not installed.*python -m kwskit.web.build"):
        web_build.build(tmp_path / "vendor")
    assert not (tmp_path / "vendor").exists()


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers["Content-Type"], r.read()


def test_server_serves_page_model_and_card_on_loopback_only(energy_onnx):
    with served(energy_onnx, threshold="0.7") as (url, server):
        assert server.server_address[0] == "127.0.0.1"
        ctype, body = _get(url + "/")
        assert ctype.startswith("text/html") and b'src="app.js"' in body
        for name in ("app.js", "stream.js", "detector.js", "plot.js", "capture-worklet.js"):
            assert _get(f"{url}/{name}")[0] == "text/javascript"
        assert _get(url + "/model.onnx")[1] == energy_onnx.read_bytes()
        card = json.loads(_get(url + "/card.json")[1])
        assert card == read_card(energy_onnx) | {"file_name": energy_onnx.name,
                                                 "file_bytes": energy_onnx.stat().st_size}
        settings = json.loads(_get(url + "/settings.json")[1])
        assert settings["threshold"]["word"] == 0.7 and settings["smoothing_s"] == 0.1
        assert settings["refractory_s"] == 1.0 and settings["ignore"] == ["_silence_", "_unknown_"]
        # nothing but the page's table: no sources, no listing, no way out of the folder
        for path in ("/serve.py", "/build.py", "/package.json", "/vendor/", "/vendor/VERSION",
                     "/../serve.py", "/%2e%2e/serve.py", "/nothing"):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(url + path)
            assert err.value.code == 404, path
        # and this machine's other addresses do not reach it
        port = server.server_address[1]
        for ip in sorted(_own_addresses() - {"127.0.0.1"}):
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=2):
                pass


def _own_addresses() -> set[str]:
    """This machine's IPv4 addresses: its host name's and its outgoing interface's (a UDP
    'connect' only picks the route; nothing is sent)."""
    ips = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: any routable address will do
        ips.add(s.getsockname()[0])
    return ips


def test_page_settings_are_kwskit_streams(energy_onnx, tmp_path):
    """--threshold, else the calibration in the card, else 0.5 / 0.1 s / 1 s."""
    import onnx

    model = onnx.load(str(energy_onnx))
    entry = model.metadata_props.add()
    entry.key, entry.value = "calibration", json.dumps(
        {"thresholds": {"word": 0.83}, "smoothing_s": 0.2, "refractory_s": 0.5,
         "target_fa_per_hour": 1.0})
    onnx.save(model, str(tmp_path / "calibrated.onnx"))
    for threshold, want in ((None, (0.83, 0.2, 0.5)), ("0.6", (0.6, 0.1, 1.0))):
        with served(tmp_path / "calibrated.onnx", threshold) as (url, server):
            got = json.loads(_get(url + "/settings.json")[1])
        assert (got["threshold"]["word"], got["smoothing_s"], got["refractory_s"]) == want
        assert ("calibrated for 1 false alarm" in got["why"]) == (threshold is None)


def test_a_run_is_exported_once_and_reused(bcresnet_run):
    run, onnx = bcresnet_run
    assert onnx == run / "export" / "bcresnet1-stream.onnx" and read_card(onnx)["kind"] == "stream"
    said, before = [], onnx.stat().st_mtime_ns
    assert stream_model(str(run), log=said.append) == onnx
    assert onnx.stat().st_mtime_ns == before and said[0].startswith(f"model: {onnx}")
    ckpt = run / "checkpoints" / "best.pt"
    assert not _fresh(onnx, ckpt, 20.0, 1.0, None)  # another chunk size: export again
    assert not _fresh(onnx, ckpt, 10.0, 1.0, {"thresholds": {"yes": 0.6}})  # calibrated since
    with pytest.raises(KwsError, match="--chunk-ms: must be > 0"):
        stream_model(str(run), chunk_ms=0)


def test_vendor_holds_what_the_page_loads(vendor):
    text = "\n".join(f.read_text() for f in WEB_DIR.iterdir() if f.suffix in (".html", ".js", ".css"))
    # every vendor/ file the page names is there after a build, and nothing else is vendored
    named = set(re.findall(r"vendor/([\w.-]+\.\w+)", text))
    assert named == set(FILES), named
    assert all((vendor / f).is_file() and (vendor / f).stat().st_size > 1000 for f in FILES)
    assert (vendor / "VERSION").read_text().strip() == web_build.pinned_version()
    # every page file it imports or links exists; nothing comes from another host
    refs = set(re.findall(r"""(?:from |src=|href=|addModule\()["']\.?/?([\w-]+\.(?:js|css))["']""", text))
    assert {"app.js", "stream.js", "detector.js", "plot.js", "capture-worklet.js", "style.css"} <= refs
    assert all((WEB_DIR / r).is_file() for r in refs)
    assert not re.search(r"https?://", text)


NODE_DETECT = """
import { readFileSync } from "node:fs";
import { Detector } from "%s";
const inp = JSON.parse(readFileSync(0, "utf8"));
const det = new Detector(inp.labels, inp.opts);
const out = [];
let i = 0;
for (const n of inp.chunks) {
  out.push(...det.update(inp.scores.slice(i, i + n), inp.times.slice(i, i + n)));
  i += n;
}
out.push(...det.finish());
console.log(JSON.stringify(out));
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_page_detector_is_the_python_detector(seed):
    """detector.js (in Node) and kwskit.stream.detector on the same score track, fed in the
    same uneven chunks: the same detections, to the last bit of their times."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to run the page's detector.js")
    rng = np.random.default_rng(seed)
    labels = ["yes", "no", "up", "down", "_silence_", "_unknown_"]
    n = 3000
    walk = np.cumsum(rng.normal(0, 0.35, (n, len(labels))), axis=0)  # slow ups and downs
    scores = (1 / (1 + np.exp(-(walk - walk.mean(0)) / 2))).astype(np.float32)
    times = np.arange(n) * 0.01 + 0.015
    chunks = np.diff([0, *sorted(rng.choice(np.arange(1, n), 40, replace=False)), n]).tolist()
    opts = {"threshold": {"yes": 0.6, "no": 0.7, "up": 0.55, "down": 0.8, "_silence_": 0.1,
                          "_unknown_": 0.1},
            "smoothing_s": [0.1, 0.05, 0.3][seed], "refractory_s": [1.0, 0.5, 0.0][seed],
            "min_duration_s": [0.0, 0.05, 0.2][seed]}
    det = Detector(labels, **opts)
    ref, i = [], 0
    for c in chunks:
        ref += det.update(scores[i:i + c], times[i:i + c])
        i += c
    ref += det.finish()
    assert len(ref) > 5
    script = NODE_DETECT % (WEB_DIR / "detector.js").as_uri()
    payload = {"labels": labels, "opts": opts | {"ignore": ["_silence_", "_unknown_"]},
               "scores": scores.tolist(), "times": times.tolist(), "chunks": chunks}
    out = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps(payload),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [(d["keyword"], d["start"], d["end"]) for d in got] == \
        [(d.keyword, d.start, d.end) for d in ref]
    np.testing.assert_allclose([d["score"] for d in got], [d.score for d in ref], rtol=0,
                               atol=1e-12)


BLOCK_TORCH = NO_TORCH_PRELUDE + """from kwskit.cli import main
import signal
# a shell that started the tests in the background leaves SIGINT ignored, and children inherit it
signal.signal(signal.SIGINT, signal.default_int_handler)
rc = main(["serve", sys.argv[1], "--port", "0"])
assert "torch" not in sys.modules
sys.exit(rc)
"""


def test_serve_an_onnx_file_without_torch_then_ctrl_c(vendor, energy_onnx):
    proc = subprocess.Popen([sys.executable, "-c", BLOCK_TORCH, str(energy_onnx)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops\)", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert "threshold 0.5" in line
        assert json.loads(_get(url.group(1) + "card.json")[1])["model"] == "energy"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "stopped" and "Traceback" not in err


# ------------------------------------------------------------------------------ browser
@pytest.mark.timeout(300)
def test_page_spots_words_live_from_the_microphone(browser, energy_onnx, keywords_wav, capsys):
    wav, spoken = keywords_wav
    with served(energy_onnx) as (url, _), page_at(browser, url) as page:
        page.click("#mic")  # a real click: the AudioContext may start
        page.wait_for_function(f"() => kws.stats().seconds > {SECONDS + 0.5}", timeout=60_000,
                               polling=200)
        page.click("#mic")  # stop: the stream ends and is flushed, as a file's end
        page.evaluate("() => kws.idle()")
        captured = np.array(page.evaluate("() => kws.getCaptured()"), np.float32)
        frames = page.evaluate("() => kws.getFrames()")
        found = page.evaluate("() => kws.getDetections()")
        rtf = page.evaluate("() => kws.stats().rtf")
    # the page's frames are kwskit's runtime on the very samples the page captured
    s = OnnxStreamer(energy_onnx)
    ref = run_stream(s, array_blocks(captured, 128), Detector(s.labels), keep_scores=True,
                     progress=False)
    assert len(frames["times"]) == len(ref.times) > 0.9 * SECONDS / s.frame_step_s
    np.testing.assert_allclose(frames["times"], ref.times, atol=1e-9, rtol=0)
    diff = float(np.abs(np.array(frames["scores"]) - ref.scores).max())
    assert diff < 1e-3
    same_detections(found, [d.to_dict() for d in ref.detections])
    # where the file sits in the capture (the live start is unknown), then the words
    x, _ = sf.read(str(wav), dtype="float32")
    lag, peak = lag_of(captured, x)
    assert peak > 0.9, "the capture is not the file"
    on_file = [d["start"] - lag / SR for d in found]
    assert [d["keyword"] for d in found] == ["word"] * len(spoken)
    for (word, onset, end), t in zip(spoken, on_file):
        assert onset <= t < min(end, onset + 0.1), (word, onset, t)
    py = stream_file(OnnxStreamer(energy_onnx), wav, Detector(ENERGY_LABELS), progress=False)
    np.testing.assert_allclose(on_file, [d.start for d in py.detections], atol=0.02)
    with capsys.disabled():
        print(f"\n  web live: {len(captured) / SR:.2f} s captured at lag {lag / SR * 1e3:.1f} ms, "
              f"max |page - python| {diff:.1e}, {len(found)} words at "
              f"{', '.join(f'{t:.3f}' for t in on_file)} s; toy model RTF {rtf:.3f}")


@pytest.mark.timeout(300)
def test_page_runs_a_dropped_file_like_kwskit_stream(browser, energy_onnx, bcresnet_run,
                                                     keywords_wav, capsys):
    wav, spoken = keywords_wav
    bc_onnx = bcresnet_run[1]
    refs = {m: stream_file(OnnxStreamer(m), wav, keep_scores=True, progress=False)
            for m in (energy_onnx, bc_onnx)}
    # BC-ResNet-1's threshold half way up its busiest keyword's range: a few detections
    sc = refs[bc_onnx].scores[:, :4]
    k = int(np.argmax(sc.max(axis=0) - np.median(sc, axis=0)))
    thr = f"{(np.median(sc[:, k]) + sc[:, k].max()) / 2:.4f}"
    report = {}
    for model, threshold in ((energy_onnx, None), (bc_onnx, thr)):
        argv = ["stream", str(model), str(wav), "--json"] + (["--threshold", threshold] if threshold else [])
        assert main(argv) == 0
        cli = json.loads(capsys.readouterr().out)["files"][0]
        ref = refs[model]
        with served(model, threshold) as (url, _), page_at(browser, url) as page:
            page.set_input_files("#file", str(wav))  # as a user choosing the file
            got = page.evaluate("() => kws.lastFile()")
            again = page.evaluate("() => kws.runFile(URL.createObjectURL("
                                  "document.getElementById('file').files[0]))")
        assert got["seconds"] == pytest.approx(SECONDS)
        # frame for frame, to the flushed end of the file
        assert len(got["times"]) == len(ref.times) and got["times"][-1] > SECONDS - 0.011
        np.testing.assert_allclose(got["times"], ref.times, atol=1e-9, rtol=0)
        diff = float(np.abs(np.array(got["scores"]) - ref.scores).max())
        assert diff < 1e-3
        assert cli["detections"], "the test needs detections to compare"
        same_detections(got["detections"], cli["detections"])
        assert again["scores"] == got["scores"] and again["detections"] == got["detections"]
        report[read_card(model)["model"]] = (diff, got, again)
    starts = [d["start"] for d in report["energy"][1]["detections"]]
    assert len(starts) == len(spoken)
    assert all(onset <= t < onset + 0.1 for (_, onset, _), t in zip(spoken, starts))
    diff, cold, warm = report["bcresnet1"]
    with capsys.disabled():
        print(f"\n  web file: BC-ResNet-1 (10-ms chunks) inference RTF {cold['rtf']:.3f} first "
              f"run, {warm['rtf']:.3f} second ({warm['rtf'] * 1e3:.0f} ms per s of audio); "
              f"max |page - python| {max(diff, report['energy'][0]):.1e}; "
              f"{len(cold['detections'])} + {len(starts)} detections equal")
    # the page reports its speed (a number, not a goal: timing belongs to benchmarks/)
    assert np.isfinite(cold["rtf"]) and warm["rtf"] > 0
