"""Vendor onnxruntime-web into ``kwskit/web/vendor/``: ``python -m kwskit.web.build``.

The page runs the exported model with onnxruntime-web's WASM (CPU) backend. Its files are a
build product, not sources: ``npm ci`` installs the version pinned by ``package.json`` and
``package-lock.json`` (beside this file) in a temporary folder, and only the files the page
loads are copied into ``vendor/`` (gitignored), with the version in ``vendor/VERSION``. After
that the page needs no network: ``kwskit serve`` serves everything itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kwskit.errors import KwsError
from kwskit.fsutil import atomic_dir

WEB_DIR = Path(__file__).resolve().parent
VENDOR = WEB_DIR / "vendor"
PACKAGE = "onnxruntime-web"
# The WASM-only ES module build (no WebGL/WebGPU code) with its Emscripten glue inlined, and the
# SIMD CPU kernels it instantiates; the page loads nothing else from the package.
FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")


def pinned_version() -> str:
    """The onnxruntime-web version ``package.json`` pins."""
    deps = json.loads((WEB_DIR / "package.json").read_text())["dependencies"]
    return deps[PACKAGE]


def is_built(vendor: Path = VENDOR) -> bool:
    """Every vendored file is there, from the pinned version."""
    version = vendor / "VERSION"
    return (all((vendor / f).is_file() for f in FILES) and version.is_file()
            and version.read_text().strip() == pinned_version())


def build(vendor: Path = VENDOR, log=print) -> Path:
    """Install the pinned onnxruntime-web with npm in a temporary folder and copy ``FILES``
    into ``vendor`` (replaced whole, so a failed build leaves the old one). KwsError when npm
    is missing or fails."""
    npm = shutil.which("npm")
    if npm is None:
        raise KwsError(f"the page needs {PACKAGE} {pinned_version()} in {vendor}, and npm (Node.js) "
                       "is not installed to fetch it: install Node.js with npm (e.g. apt-get "
                       "install npm), then run `python -m kwskit.web.build`")
    lock = WEB_DIR / "package-lock.json"
    with tempfile.TemporaryDirectory(prefix="kwskit-web-") as tmp:
        for f in (WEB_DIR / "package.json", lock):
            if f.is_file():
                shutil.copy(f, tmp)
        # `npm ci` installs exactly the lock file (integrity-checked); no package here needs
        # its install scripts, so none run
        cmd = [npm, "ci" if lock.is_file() else "install", "--ignore-scripts", "--no-audit",
               "--no-fund", "--loglevel=error"]
        log(f"building the page's {PACKAGE} {pinned_version()} files: `npm {cmd[1]}` "
            f"in a temporary folder, then copy {len(FILES)} files into {vendor}")
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
            raise KwsError(f"`npm {cmd[1]}` for {PACKAGE} failed ({last[:200]}); check the "
                           "npm registry is reachable, then run `python -m kwskit.web.build`")
        dist = Path(tmp) / "node_modules" / PACKAGE / "dist"
        missing = [f for f in FILES if not (dist / f).is_file()]
        if missing:
            raise KwsError(f"{PACKAGE} {pinned_version()} has no {', '.join(missing)} in dist/")
        with atomic_dir(vendor) as out:
            for f in FILES:
                shutil.copy(dist / f, out / f)
            (out / "VERSION").write_text(pinned_version() + "\n")
    return vendor


def main() -> int:
    try:
        out = build()
    except KwsError as exc:
        print(f"kwskit: error: {exc}", file=sys.stderr)
        return 2
    size = sum((out / f).stat().st_size for f in FILES)
    print(f"{out}: {', '.join(FILES)} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
