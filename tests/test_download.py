"""kwskit.data.download against a local HTTP server with Range support (no internet needed)."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from kwskit.cli import main
from kwskit.data import download as dl
from kwskit.data.audio import load_audio, write_audio
from kwskit.errors import KwsError


# ------------------------------------------------------------------------------ archives

def _wav_bytes(tmp: Path, seed: int) -> bytes:
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, 800).astype(np.float32)
    p = tmp / f"clip{seed}.wav"
    write_audio(p, x)
    return p.read_bytes()


def _tar_gz(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A .tar.gz from (name, data) files and/or ready TarInfo objects (links, devices)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                name, data = e
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_500_000_000
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wavs")
    lists = b"yes/a_nohash_0.wav\n"
    train = _tar_gz([
        ("./yes/a_nohash_0.wav", _wav_bytes(tmp, 0)),
        ("./yes/b_nohash_0.wav", _wav_bytes(tmp, 1)),
        ("./no/a_nohash_0.wav", _wav_bytes(tmp, 2)),
        ("./_background_noise_/white_noise.wav", _wav_bytes(tmp, 3)),
        ("./validation_list.txt", lists),
        ("./testing_list.txt", b"no/a_nohash_0.wav\n"),
        ("./LICENSE", b"CC-BY-4.0\n" * 2000),  # makes the archive span several chunks
    ])
    test = _tar_gz([
        ("./yes/c_nohash_0.wav", _wav_bytes(tmp, 4)),
        ("./_silence_/s0.wav", _wav_bytes(tmp, 5)),
        ("./_unknown_/u0.wav", _wav_bytes(tmp, 6)),
    ])
    return {"/sc/train.tar.gz": train, "/sc/test.tar.gz": test}


# ------------------------------------------------------------------------------ server

class _State:
    def __init__(self, files):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.truncate_at: int | None = None


def _handler(state: _State):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and not state.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate_at is not None:
                body = body[: state.truncate_at]
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server(archives):
    state = _State(archives)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _urls(server):
    return server.base + "/sc/train.tar.gz", server.base + "/sc/test.tar.gz"


def _assert_layout(out: Path):
    assert sorted(p.name for p in (out / "yes").iterdir()) == ["a_nohash_0.wav", "b_nohash_0.wav"]
    assert (out / "no" / "a_nohash_0.wav").is_file()
    assert (out / "_background_noise_" / "white_noise.wav").is_file()
    assert (out / "validation_list.txt").read_bytes() == b"yes/a_nohash_0.wav\n"
    assert (out / "test" / "_silence_" / "s0.wav").is_file()
    assert (out / "test" / "_unknown_" / "u0.wav").is_file()
    assert (out / "test" / "yes" / "c_nohash_0.wav").is_file()
    assert load_audio(out / "yes" / "a_nohash_0.wav").shape == (800,)
    assert not list(out.glob(".kwskit-extract-*")) and not list(out.glob(".kwskit-old-*"))


# ------------------------------------------------------------------------------ URL choice

def test_resolve_defaults_and_overrides():
    train, test = dl.resolve_archives("v2")
    assert train == dl.ARCHIVES["v2"]["train"] and test == dl.ARCHIVES["v2"]["test"]
    assert train.url.startswith("https://")
    # A custom train URL drops the test archive ...
    train, test = dl.resolve_archives("v2", url="http://h/x.tar.gz")
    assert train == dl.Archive("http://h/x.tar.gz") and test is None
    # ... unless it is an official one (any host alias), which keeps its checksum and test set.
    train, test = dl.resolve_archives(
        "v1", url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz")
    assert train.sha256 == dl.ARCHIVES["v2"]["train"].sha256
    assert test == dl.ARCHIVES["v2"]["test"]
    assert dl.resolve_archives("v2", test_url="None")[1] is None
    hexd = "AB" * 32
    train, test = dl.resolve_archives("v1", url=f"http://h/t.tgz#sha256={hexd}",
                                      test_url="http://h/s.tgz")
    assert train == dl.Archive("http://h/t.tgz", hexd.lower())
    assert test == dl.Archive("http://h/s.tgz")


@pytest.mark.parametrize("kw, field", [
    ({"url": "http://h/x.tgz#sha256=123"}, "--url"),
    ({"url": "http://h/x.tgz#md5=" + "0" * 64}, "--url"),
    ({"test_url": "ftp://h/x.tgz"}, "--test-url"),
    ({"version": "v3"}, "--version"),
])
def test_resolve_rejects_bad_options(kw, field):
    with pytest.raises(KwsError, match=re.escape(field)):
        dl.resolve_archives(**kw)


# ------------------------------------------------------------------------------ downloads

def test_download_success_layout_and_idempotent(server, archives, tmp_path):
    out = tmp_path / "gsc"
    url, turl = _urls(server)
    got = dl.download_speech_commands(out, url=f"{url}#sha256={_sha(archives['/sc/train.tar.gz'])}",
                                      test_url=turl)
    assert got == out
    _assert_layout(out)
    assert not (out / ".download").exists()  # archives removed after extraction
    marker = dl._read_marker(out)
    assert marker["sha256"] == _sha(archives["/sc/train.tar.gz"])
    assert "yes" in marker["entries"] and "test" not in marker["entries"]
    assert dl._read_marker(out / "test")["sha256"] == _sha(archives["/sc/test.tar.gz"])
    n = len(server.requests)
    dl.download_speech_commands(out, url=url, test_url=turl)  # marker present: no request
    assert len(server.requests) == n


def test_keep_archives_writes_sha256_sidecar(server, archives, tmp_path):
    out = tmp_path / "gsc"
    url, _ = _urls(server)
    dl.download_speech_commands(out, url=url, keep_archives=True)
    kept = out / ".download" / "train.tar.gz"
    assert kept.read_bytes() == archives["/sc/train.tar.gz"]
    sidecar = (out / ".download" / "train.tar.gz.sha256").read_text().split()
    assert sidecar == [_sha(archives["/sc/train.tar.gz"]), "train.tar.gz"]
    assert not (out / "test").exists()  # custom --url without --test-url: no test set


def test_resume_sends_range_and_completes(server, archives, tmp_path):
    data = archives["/sc/train.tar.gz"]
    out = tmp_path / "gsc"
    (out / ".download").mkdir(parents=True)
    half = len(data) // 2
    (out / ".download" / "train.tar.gz.part").write_bytes(data[:half])
    url, _ = _urls(server)
    dl.download_speech_commands(out, url=f"{url}#sha256={_sha(data)}", test_url="none",
                                keep_archives=True)
    assert ("/sc/train.tar.gz", f"bytes={half}-") in server.requests
    assert (out / ".download" / "train.tar.gz").read_bytes() == data
    assert (out / "yes" / "b_nohash_0.wav").is_file()


def test_server_ignoring_range_restarts_from_zero(server, archives, tmp_path):
    data = archives["/sc/train.tar.gz"]
    out = tmp_path / "gsc"
    (out / ".download").mkdir(parents=True)
    # Garbage in the partial file: appending to it would break the checksum.
    (out / ".download" / "train.tar.gz.part").write_bytes(b"x" * 100)
    server.ignore_range = True
    url, _ = _urls(server)
    path, digest = dl.fetch_archive(dl.Archive(url, _sha(data)), out / ".download", "train.tar.gz")
    assert server.requests[-1] == ("/sc/train.tar.gz", "bytes=100-")
    assert path.read_bytes() == data and digest == _sha(data)
    assert not (out / ".download" / "train.tar.gz.part").exists()


def test_complete_part_gets_416_and_is_used(server, archives, tmp_path):
    data = archives["/sc/test.tar.gz"]
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "t.tgz.part").write_bytes(data)
    path, digest = dl.fetch_archive(dl.Archive(server.base + "/sc/test.tar.gz"), folder, "t.tgz")
    assert server.requests == [("/sc/test.tar.gz", f"bytes={len(data)}-")]
    assert path.read_bytes() == data and digest == _sha(data)


def test_checksum_mismatch_removes_everything(server, tmp_path):
    out = tmp_path / "gsc"
    url, turl = _urls(server)
    bad = "0" * 64
    with pytest.raises(KwsError) as err:
        dl.download_speech_commands(out, url=f"{url}#sha256={bad}", test_url=turl)
    msg = str(err.value)
    assert url in msg and bad in msg and "sha256 mismatch" in msg
    assert not (out / "yes").exists() and not (out / "test").exists()
    assert not list((out / ".download").iterdir())  # .part removed, nothing renamed
    assert main(["data", "download", str(out), "--url", f"{url}#sha256={bad}"]) == 2


def test_size_mismatch_removes_part(server, archives, tmp_path):
    data = archives["/sc/train.tar.gz"]
    url, _ = _urls(server)
    with pytest.raises(KwsError, match=r"size mismatch: expected %d bytes" % (len(data) + 5)):
        dl.fetch_archive(dl.Archive(url, None, len(data) + 5), tmp_path, "a.tgz")
    assert not (tmp_path / "a.tgz.part").exists() and not (tmp_path / "a.tgz").exists()


def test_truncated_body_keeps_part_then_resumes(server, archives, tmp_path):
    data = archives["/sc/train.tar.gz"]
    url, _ = _urls(server)
    server.truncate_at = 1000
    with pytest.raises(KwsError, match=r"closed after 1000 of %d bytes" % len(data)):
        dl.fetch_archive(dl.Archive(url), tmp_path, "a.tgz")
    assert (tmp_path / "a.tgz.part").read_bytes() == data[:1000]
    server.truncate_at = None
    path, _ = dl.fetch_archive(dl.Archive(url, _sha(data)), tmp_path, "a.tgz")
    assert server.requests[-1] == ("/sc/train.tar.gz", "bytes=1000-")
    assert path.read_bytes() == data


def test_http_404_and_connection_refused_are_clean(server, tmp_path):
    missing = server.base + "/sc/missing.tar.gz"
    with pytest.raises(KwsError, match=r"HTTP error 404") as err:
        dl.fetch_archive(dl.Archive(missing), tmp_path)
    assert missing in str(err.value)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(KwsError, match="cannot connect") as err:
        dl.download_speech_commands(tmp_path / "o", url=dead, timeout=2)
    assert dead in str(err.value)


def test_silent_server_times_out(tmp_path):
    with socket.socket() as s:  # accepts the connection (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.tar.gz"
        with pytest.raises(KwsError, match="timed out") as err:
            dl.fetch_archive(dl.Archive(url), tmp_path, timeout=0.3)
    assert url in str(err.value)


def test_corrupt_gzip_is_reported_and_target_untouched(server, archives, tmp_path):
    data = bytearray(archives["/sc/test.tar.gz"])
    data[-6] ^= 0xFF  # inside the gzip trailer's CRC-32: only a full read notices
    server.files["/sc/bad.tgz"] = bytes(data)
    out = tmp_path / "gsc"
    with pytest.raises(KwsError, match="corrupt or truncated"):
        dl.download_speech_commands(out, url=server.base + "/sc/bad.tgz", test_url="none")
    assert sorted(p.name for p in out.iterdir()) == [".download"]


# ------------------------------------------------------------------------------ hostile archives

def _dev() -> tarfile.TarInfo:
    info = tarfile.TarInfo("./dev/null0")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


HOSTILE = {
    "dotdot": [("./yes/ok.wav", b"RIFF"), ("../evil", b"pwned")],
    "nested-dotdot": [("./yes/ok.wav", b"RIFF"), ("yes/../../evil", b"pwned")],
    "absolute": [("./yes/ok.wav", b"RIFF"), ("/tmp/kwskit-evil-abs", b"pwned")],
    "symlink-out": [("./yes/ok.wav", b"RIFF"), _link("./yes/link", "../../evil")],
    "symlink-abs": [_link("./link", "/etc")],
    "link-then-dotdot": [_link("./link", "."), ("./link/../../evil", b"pwned")],
    "symlink-chain": [("./x/keep", b"1"), _link("./x/y", ".."), _link("./x/y/w", "..")],
    # Each link looks inside when written; only together do they lead out (q is root, q/..
    # its parent): caught by the sweep after extraction.
    "late-link-chain": [_link("./p", "q/.."), _link("./q", ".")],
    "hardlink-out": [_link("./hl", "../evil", tarfile.LNKTYPE)],
    "device": [("./yes/ok.wav", b"RIFF"), _dev()],
}


@pytest.mark.parametrize("stdlib_filter", [True, False], ids=["filter", "nofilter"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused_nothing_extracted(case, stdlib_filter, tmp_path, monkeypatch):
    if not stdlib_filter:  # as on Python 3.10 / early 3.11: our own checks alone must hold
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    arc = tmp_path / "bad.tgz"
    arc.write_bytes(_tar_gz(HOSTILE[case]))
    target = tmp_path / "root" / "target"
    target.mkdir(parents=True)
    with pytest.raises(KwsError, match="refusing archive member"):
        dl.safe_extract(arc, target)
    assert not (tmp_path / "root" / "evil").exists() and not (tmp_path / "evil").exists()


def test_hostile_archive_leaves_previous_extraction(server, archives, tmp_path):
    out = tmp_path / "gsc"
    url, turl = _urls(server)
    dl.download_speech_commands(out, url=url, test_url=turl)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    server.files["/sc/evil.tgz"] = _tar_gz(HOSTILE["dotdot"])
    server.files["/sc/evil-test.tgz"] = _tar_gz(HOSTILE["symlink-out"])
    with pytest.raises(KwsError, match=r"refusing archive member '\.\./evil'"):
        dl.download_speech_commands(out, url=server.base + "/sc/evil.tgz", test_url="none")
    with pytest.raises(KwsError, match=r"refusing archive member '\./yes/link'"):
        dl.download_speech_commands(out, url=url, test_url=server.base + "/sc/evil-test.tgz")
    after = sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".download" not in p.parts)
    assert after == before and not (tmp_path / "evil").exists()
    assert dl._read_marker(out)["sha256"] == _sha(archives["/sc/train.tar.gz"])


def test_new_archive_replaces_old_entries_and_unwraps(server, tmp_path):
    out = tmp_path / "gsc"
    url, _ = _urls(server)
    dl.download_speech_commands(out, url=url)
    (out / "mine.txt").write_text("user file")  # not from an archive: must survive
    server.files["/sc/v2.tgz"] = _tar_gz([
        ("speech_commands_v0.02/cat/a.wav", b"RIFF"),
        ("speech_commands_v0.02/_background_noise_/n.wav", b"RIFF"),
    ])
    dl.download_speech_commands(out, url=server.base + "/sc/v2.tgz")
    names = sorted(p.name for p in out.iterdir())
    assert names == [".kwskit-complete", "_background_noise_", "cat", "mine.txt"]
    assert sorted(p.name for p in (out / "_background_noise_").iterdir()) == ["n.wav"]


def test_train_archive_may_not_bring_a_test_folder(server, tmp_path):
    server.files["/sc/clash.tgz"] = _tar_gz([("./test/x.wav", b"RIFF"), ("./yes/a.wav", b"R")])
    out = tmp_path / "gsc"
    with pytest.raises(KwsError, match="reserved"):
        dl.download_speech_commands(out, url=server.base + "/sc/clash.tgz")
    assert not (out / "yes").exists()


def test_safe_extract_keeps_inside_links(tmp_path):
    arc = tmp_path / "ok.tgz"
    arc.write_bytes(_tar_gz([("./a/f.txt", b"hello"), _link("./a/g.txt", "f.txt"),
                             _link("./h.txt", "a/f.txt", tarfile.LNKTYPE)]))
    target = tmp_path / "t"
    target.mkdir()
    dl.safe_extract(arc, target)
    assert (target / "a" / "g.txt").is_symlink() and (target / "a" / "g.txt").read_text() == "hello"
    assert (target / "h.txt").read_text() == "hello" and not (target / "h.txt").is_symlink()


# ------------------------------------------------------------------------------ CLI

def test_cli_download(server, tmp_path, capsys):
    out = tmp_path / "gsc"
    url, turl = _urls(server)
    assert main(["data", "download", str(out), "--url", url, "--test-url", turl]) == 0
    assert "ready in" in capsys.readouterr().out
    _assert_layout(out)
    assert main(["data", "download", str(out), "--url", url + "#sha256=12"]) == 2
    assert "--url" in capsys.readouterr().err
