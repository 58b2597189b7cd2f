"""``kwskit serve``: the live keyword-spotting page, served on 127.0.0.1 only.

The server does no inference: it hands the browser the page (``kwskit/web``), the vendored
onnxruntime-web files (``vendor/``, see kwskit.web.build), the exported streaming model as
``/model.onnx``, its card as ``/card.json`` (the card kwskit wrote into the file, plus
``file_name`` and ``file_bytes``) and the detector settings as ``/settings.json`` (chosen as
``kwskit stream`` chooses them: ``--threshold``, else the card's calibration, else 0.5). The
page runs the model chunk by chunk in the browser. With an ``.onnx`` file nothing here imports
torch; with a run directory the streaming model is exported first (that needs torch).
"""

from __future__ import annotations

import io
import json
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

from kwskit.errors import KwsError
from kwskit.runtime import read_card
from kwskit.stream.chunking import check_chunk_ms, chunk_samples
from kwskit.stream.cli import detector_options, parse_threshold
from kwskit.stream.detector import Detector
from kwskit.web.build import FILES, VENDOR, WEB_DIR, build, is_built

HOST = "127.0.0.1"  # never another interface: the page is for this machine's browser


def _fresh(path: Path, checkpoint: Path, chunk_ms: float, window_s: float,
           calibration: dict | None) -> bool:
    """``path`` is an export of ``checkpoint`` made after it, for the same chunk, window and
    calibration."""
    if not path.is_file() or path.stat().st_mtime <= checkpoint.stat().st_mtime:
        return False
    try:
        card = read_card(path)
    except KwsError:
        return False
    if card.get("kind") != "stream":
        return False
    chunk = chunk_samples(chunk_ms, card["sample_rate"], card["step_samples"])
    return (card["chunk_samples"] == chunk and abs(card["window_s"] - window_s) < 1e-9
            and card.get("calibration") == calibration)


def stream_model(target: str, checkpoint: str = "best", chunk_ms: float = 10.0,
                 window_s: float = 1.0, log=print) -> Path:
    """The streaming model to serve: ``target`` itself when it is an ``.onnx`` file, else
    ``RUN/export/MODEL-stream.onnx`` of the run directory or checkpoint ``target``, exported
    now (with the run's calibration, as ``kwskit export --stream``) unless it is newer than
    the checkpoint and made for the same chunk, window and calibration."""
    path = Path(target)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise KwsError(f"{path}: no such ONNX file")
        return path
    check_chunk_ms(chunk_ms)  # a bad --chunk-ms is an error before torch loads
    from kwskit.export.onnx import default_export_path, export_stream  # torch from here on
    from kwskit.models.io import load_model, resolve_checkpoint
    from kwskit.stream.calibrate import detector_settings

    ckpt = resolve_checkpoint(path, checkpoint)
    pipeline, cfg, labels = load_model(ckpt)
    cal = detector_settings(ckpt)
    out = default_export_path(ckpt, cfg.model.name, stream=True)
    if _fresh(out, ckpt, chunk_ms, window_s, cal):
        log(f"model: {out} (exported after {ckpt.name})")
        return out
    log(f"exporting the streaming model of {ckpt} to {out}")
    export_stream(pipeline, labels, out, chunk_ms=chunk_ms, window_s=window_s,
                  name=cfg.model.name, calibration=cal)
    return out


class _Handler(SimpleHTTPRequestHandler):
    """Serves a fixed table of URL paths only: no directory listing, nothing outside it."""

    files: dict[str, Path] = {}  # URL path -> file
    blobs: dict[str, bytes] = {}  # URL path -> JSON made at start
    extensions_map = {".html": "text/html; charset=utf-8", ".css": "text/css",
                      ".js": "text/javascript", ".mjs": "text/javascript",
                      ".json": "application/json", ".wasm": "application/wasm",
                      ".onnx": "application/octet-stream"}

    def translate_path(self, path: str) -> str:
        return str(self.files[urlsplit(path).path])  # send_head checked it is in the table

    def send_head(self):
        path = urlsplit(self.path).path
        body = self.blobs.get(path)
        if body is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)
        if path not in self.files:
            self.send_error(404, "not part of the page")
            return None
        return super().send_head()  # a file: Content-Length, Last-Modified, If-Modified-Since

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")  # a re-exported model shows on reload
        super().end_headers()

    def log_request(self, code="-", size="-"):
        pass  # quiet: errors still go to stderr (log_error)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the browser closed the connection mid-transfer (a reload): not an error
        super().handle_error(request, client_address)


def _check_port(port) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise KwsError(f"--port: must be 0..65535, got {port!r}")


def make_server(model: str | Path, port: int = 8000, threshold: str | None = None):
    """A ThreadingHTTPServer on 127.0.0.1:``port`` (0: any free port) serving the page for
    the exported streaming ``model``; call ``serve_forever()``. ``threshold`` is
    ``kwskit stream --threshold``'s text (None: the card's calibration, else 0.5). The line
    saying which settings the page starts with is ``server.settings["why"]``."""
    model = Path(model)
    card = read_card(model)
    if card["kind"] != "stream":
        raise KwsError(f"{model}: a {card['kind']} model; the page needs a streaming model "
                       "(kwskit export RUN --stream)")
    _check_port(port)
    labels = list(card["labels"])
    args = SimpleNamespace(threshold=threshold, smoothing_s=None, refractory_s=None,
                           min_duration_s=0.0)
    opts, why = detector_options(args, labels, card.get("calibration"))
    det = Detector(labels, **opts)  # checks the keywords and values
    settings = {"threshold": dict(zip(labels, det.thresholds.tolist())),
                "smoothing_s": det.smoothing_s, "refractory_s": det.refractory_s,
                "min_duration_s": det.min_duration_s, "ignore": list(det.ignore), "why": why}
    card = card | {"file_name": model.name, "file_bytes": model.stat().st_size}
    files = {f"/{f.name}": f for f in WEB_DIR.iterdir() if f.suffix in (".html", ".js", ".css")}
    files |= {"/": WEB_DIR / "index.html", "/model.onnx": model.resolve()}
    files |= {f"/vendor/{name}": VENDOR / name for name in FILES}
    blobs = {"/card.json": json.dumps(card).encode(), "/settings.json": json.dumps(settings).encode()}
    handler = type("Handler", (_Handler,), {"files": files, "blobs": blobs})
    try:
        server = _Server((HOST, port), handler)
    except OSError as exc:
        raise KwsError(f"--port {port}: cannot listen on {HOST}:{port} ({exc.strerror or exc}); "
                       "pick another port") from None
    server.model, server.settings = model, settings
    return server


def serve(target: str, port: int = 8000, threshold: str | None = None, checkpoint: str = "best",
          chunk_ms: float = 10.0) -> int:
    """``kwskit serve``: export the model if needed, vendor onnxruntime-web if missing, then
    serve until Ctrl-C."""
    _check_port(port)
    if threshold is not None:
        parse_threshold(threshold)  # a typo is an error before the model loads
    server = make_server(stream_model(target, checkpoint, chunk_ms), port, threshold)
    try:
        if not is_built():
            build()
        print(f"serving {server.model} at http://{HOST}:{server.server_address[1]}/ "
              f"(Ctrl-C stops); {server.settings['why']}", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0
