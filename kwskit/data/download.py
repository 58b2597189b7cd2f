"""Fetch and safely extract the Speech Commands archives (Warden 2018, arXiv:1804.03209).

Layout produced by :func:`download_speech_commands`::

    OUT/                    train archive extracted: word folders, *_list.txt, _background_noise_
    OUT/test/               separate test archive extracted: word folders, _silence_, _unknown_
    OUT/.download/          archives while they download (``NAME.part``, resumable)
    OUT/.kwskit-complete    marker of a finished extraction (JSON with the archive sha256)

Downloads use only the standard library (``urllib``). A partial ``NAME.part`` is continued with
an HTTP ``Range`` request; every archive is checked against its size and SHA-256 when they are
known, and the SHA-256 computed here is written beside it as ``NAME.sha256``. Extraction never
trusts member names: absolute paths, ``..`` escapes, links leading outside the target and
device files are refused, and a failed extraction leaves the target as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from kwskit import __version__
from kwskit.errors import KwsError
from kwskit.fsutil import atomic_dir, write_json, write_text


@dataclass(frozen=True)
class Archive:
    """One downloadable archive. ``sha256`` (hex) and ``size`` (bytes) are None when unknown."""

    url: str
    sha256: str | None = None
    size: int | None = None


_BASE = "https://storage.googleapis.com/download.tensorflow.org/data/"

# Checksums and sizes, where a published record exists (never guessed):
# - v2 train and test: sha256 and byte size from TensorFlow Datasets,
#   tensorflow_datasets/url_checksums/speech_commands.txt.
# - v1 train: sha256 from torchaudio, torchaudio/datasets/speechcommands.py (_CHECKSUMS); no
#   size on record, so the server's Content-Length is used.
# - v1 test: nothing on record; verified by Content-Length plus gzip CRC and tar integrity.
ARCHIVES: dict[str, dict[str, Archive]] = {
    "v1": {
        "train": Archive(_BASE + "speech_commands_v0.01.tar.gz",
                         "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d"),
        "test": Archive(_BASE + "speech_commands_test_set_v0.01.tar.gz"),
    },
    "v2": {
        "train": Archive(_BASE + "speech_commands_v0.02.tar.gz",
                         "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
                         2_428_923_189),
        "test": Archive(_BASE + "speech_commands_test_set_v0.02.tar.gz",
                        "cc2a00c1147c2254e9be3fa0f779d8c17421dc349b86366567a8edfa9acd51df",
                        112_563_277),
    },
}

MARKER = ".kwskit-complete"
DOWNLOAD_DIR = ".download"
TEST_DIR = "test"
DEFAULT_TIMEOUT = 30.0  # seconds, per connect and per socket read
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Names in OUT that belong to kwskit, so the train archive may not bring its own.
_RESERVED = {TEST_DIR, DOWNLOAD_DIR, MARKER}
# A lone top-level folder holding one of these is a wrapper around the data, not a word.
_WRAPPER_HINTS = ("_background_noise_", "validation_list.txt", "testing_list.txt",
                  "_silence_", "_unknown_")


# ---------------------------------------------------------------------------------------------
# Choosing the archives


def _official_key(url: str) -> str:
    """Scheme-free key under which the two official hosts of the same file compare equal."""
    parts = urllib.parse.urlsplit(url)
    host, path = parts.netloc.lower(), parts.path
    prefix = "/download.tensorflow.org/"
    if host == "storage.googleapis.com" and path.startswith(prefix):
        host, path = "download.tensorflow.org", path[len(prefix) - 1:]
    return host + path


def _lookup_official(url: str) -> tuple[str, str, Archive] | None:
    key = _official_key(url)
    for version, roles in ARCHIVES.items():
        for role, arch in roles.items():
            if _official_key(arch.url) == key:
                return version, role, arch
    return None


def parse_archive_url(spec: str, field: str = "--url") -> Archive:
    """Parse ``URL`` or ``URL#sha256=HEX``. An official URL inherits the table's checksum/size.

    ``field`` names the option in error messages.
    """
    spec = spec.strip()
    parts = urllib.parse.urlsplit(spec)
    web = parts.scheme in ("http", "https")
    if not (web and parts.netloc) and parts.scheme != "file":
        raise KwsError(f"{field}: unsupported URL {spec!r} (use http://, https:// or file://)")
    sha = None
    if parts.fragment:
        key, _, value = parts.fragment.partition("=")
        value = value.strip().lower()
        if key.strip().lower() != "sha256" or not _HEX64.fullmatch(value):
            raise KwsError(f"{field}: bad URL fragment '#{parts.fragment}' "
                           "(expected #sha256=<64 hex digits>)")
        sha = value
    url = urllib.parse.urlunsplit(parts._replace(fragment=""))
    hit = _lookup_official(url)
    if hit is not None:
        known = hit[2]
        if sha is None or sha == known.sha256:
            return Archive(url, known.sha256, known.size)
    return Archive(url, sha, None)


def resolve_archives(version: str = "v2", url: str | None = None,
                     test_url: str | None = None) -> tuple[Archive, Archive | None]:
    """Return (train, test-or-None) for the CLI options.

    ``url`` replaces the train archive; ``test_url`` the test one (``"none"`` skips it). With a
    custom ``url`` and no ``test_url`` the test archive is skipped, unless ``url`` is itself an
    official train archive, whose official test archive then comes with it.
    """
    if version not in ARCHIVES:
        raise KwsError(f"--version: unknown Speech Commands version {version!r} "
                       f"(choose from {', '.join(ARCHIVES)})")
    official = ARCHIVES[version]
    train = parse_archive_url(url, "--url") if url else official["train"]
    if test_url is not None and test_url.strip().lower() == "none":
        test = None
    elif test_url:
        test = parse_archive_url(test_url, "--test-url")
    elif not url:
        test = official["test"]
    else:
        hit = _lookup_official(train.url)
        test = ARCHIVES[hit[0]]["test"] if hit is not None and hit[1] == "train" else None
    return train, test


def archive_filename(url: str, fallback: str = "archive.tar.gz") -> str:
    """A safe local file name for ``url`` (its last path part, odd characters replaced)."""
    name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or fallback


# ---------------------------------------------------------------------------------------------
# Downloading


def _bar(total: int | None, initial: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, disable=None, leave=False)


def _hash_file(path: Path, desc: str | None = None) -> str:
    """SHA-256 (hex) of a whole file."""
    h = hashlib.sha256()
    with open(path, "rb") as f, _bar(path.stat().st_size, 0, desc or f"hash {path.name}") as bar:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into (start, total); None if absent."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _open(url: str, have: int, timeout: float):
    headers = {"User-Agent": f"kwskit/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _check(archive: Archive, part: Path, got: int, digest: str) -> str:
    """Verify a finished ``.part``; on mismatch delete it and raise."""
    url = archive.url
    if archive.size is not None and got != archive.size:
        part.unlink(missing_ok=True)
        raise KwsError(f"{url}: size mismatch: expected {archive.size} bytes, got {got} "
                       "(download removed)")
    if archive.sha256 is not None and digest != archive.sha256:
        part.unlink(missing_ok=True)
        raise KwsError(f"{url}: sha256 mismatch: expected {archive.sha256}, got {digest} "
                       "(download removed)")
    return digest


def _transfer(archive: Archive, part: Path, timeout: float) -> str | None:
    """One HTTP request that completes ``part``. Returns its sha256, or None to ask for a clean
    restart (the server's range answer did not fit the partial file)."""
    url = archive.url
    have = part.stat().st_size if part.exists() else 0
    if archive.size is not None and have > archive.size:
        return None
    try:
        resp = _open(url, have, timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            # Nothing left to send: the partial file is complete if its size agrees.
            total = _content_range(exc.headers.get("Content-Range"))[1]
            expected = total if total is not None else archive.size
            if expected is not None and expected != have:
                return None
            return _check(archive, part, have, _hash_file(part))
        raise KwsError(f"{url}: HTTP error {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise KwsError(f"{url}: cannot connect ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise KwsError(f"{url}: request failed ({exc or type(exc).__name__})") from None

    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers carry no status
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                return None
            mode = "ab"
        elif status == 200:  # fresh file, or a server that ignores Range: start from zero
            have, mode = 0, "wb"
            length = (resp.headers.get("Content-Length") or "").strip()
            total = int(length) if length.isdigit() else None
        else:
            raise KwsError(f"{url}: unexpected HTTP status {status}")
        if archive.size is not None and total is not None and total != archive.size:
            part.unlink(missing_ok=True)
            raise KwsError(f"{url}: size mismatch: expected {archive.size} bytes, "
                           f"server reports {total}")
        total = total if total is not None else archive.size

        h = hashlib.sha256()
        if have:  # the hash must cover the bytes already on disk
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        got = have
        with open(part, mode) as f, _bar(total, have, part.name[: -len(".part")]) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise KwsError(f"{url}: download interrupted after {got} bytes "
                                   f"({exc or type(exc).__name__}); run again to resume") from None
                if not chunk:
                    break
                f.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got < total:
        raise KwsError(f"{url}: connection closed after {got} of {total} bytes; "
                       "run again to resume")
    return _check(archive, part, got, h.hexdigest())


def _reusable(final: Path, archive: Archive) -> str | None:
    """sha256 of an already downloaded ``final`` that still fits ``archive``, else None."""
    sidecar = final.with_name(final.name + ".sha256")
    size = final.stat().st_size
    if archive.size is not None and size != archive.size:
        return None
    recorded = sidecar.read_text().split()[:1] if sidecar.exists() else []
    if recorded and _HEX64.fullmatch(recorded[0].lower()):
        digest = recorded[0].lower()
    else:
        digest = _hash_file(final)
        write_text(sidecar, f"{digest}  {final.name}\n")
    return digest if archive.sha256 in (None, digest) else None


def fetch_archive(archive: Archive, folder: str | os.PathLike, name: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> tuple[Path, str]:
    """Download ``archive`` into ``folder`` (resuming ``NAME.part``); return (path, sha256).

    A finished download is verified (size and sha256 where known), renamed to ``NAME`` and its
    computed sha256 written to ``NAME.sha256``. An existing ``NAME`` that still verifies is
    reused. ``timeout`` is in seconds.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or archive_filename(archive.url)
    final, part = folder / name, folder / f"{name}.part"
    sidecar = folder / f"{name}.sha256"
    if final.is_file():
        digest = _reusable(final, archive)
        if digest is not None:
            return final, digest
        final.unlink()
        sidecar.unlink(missing_ok=True)
    # Bounded: a second pass only follows a range answer that did not fit the partial file.
    for _ in range(2):
        digest = _transfer(archive, part, timeout)
        if digest is not None:
            break
        part.unlink(missing_ok=True)
    else:
        raise KwsError(f"{archive.url}: the server's range answers do not fit the download; "
                       "giving up")
    os.replace(part, final)
    write_text(sidecar, f"{digest}  {name}\n")
    return final, digest


# ---------------------------------------------------------------------------------------------
# Safe extraction


class _CountingReader:
    """Read-only file wrapper that advances a progress bar by the compressed bytes read."""

    def __init__(self, raw, bar: tqdm):
        self.raw, self.bar = raw, bar

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.bar.update(len(data))
        return data


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _member_parts(name: str) -> list[str] | None:
    """Path parts of an archive name, with ``.``/``..`` resolved; None if it escapes."""
    stack: list[str] = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not stack:
                return None
            stack.pop()
        else:
            stack.append(p)
    return stack


def _extract_member(tf: tarfile.TarFile, m: tarfile.TarInfo, dest: Path, root: str,
                    archive_path: Path) -> bool:
    """Write one member under ``dest`` (real path ``root``). Returns True for a symlink."""

    def refuse(reason: str) -> KwsError:
        return KwsError(f"{archive_path}: refusing archive member {m.name!r}: {reason}")

    if m.name.startswith("/") or os.path.isabs(m.name) or re.match(r"[A-Za-z]:", m.name):
        raise refuse("absolute path")
    parts = _member_parts(m.name)
    if parts is None:
        raise refuse("path escapes the target folder")
    if not (m.isdir() or m.isreg() or m.issym() or m.islnk()):
        raise refuse("device, fifo or other special file")
    if m.issym() and (m.linkname.startswith("/") or os.path.isabs(m.linkname)):
        raise refuse(f"symlink to absolute path {m.linkname!r}")
    if not parts:
        if m.isdir():
            return False  # the archive's own "./" entry
        raise refuse("not a folder but names the target folder itself")
    target = dest.joinpath(*parts)
    parent_real = os.path.realpath(target.parent)  # follows links extracted so far
    if not _inside(parent_real, root):
        raise refuse("path leads outside the target folder through a link")
    src = None
    if m.issym():
        if not _inside(os.path.realpath(os.path.join(parent_real, m.linkname)), root):
            raise refuse(f"symlink points outside the target folder ({m.linkname!r})")
    elif m.islnk():
        src_parts = _member_parts(m.linkname)
        src = dest.joinpath(*src_parts) if src_parts else None
        if src is None or m.linkname.startswith("/") or not _inside(os.path.realpath(src), root):
            raise refuse(f"hard link points outside the target folder ({m.linkname!r})")
        if not src.is_file():
            raise refuse(f"hard link to a file not extracted before it ({m.linkname!r})")
    # Second opinion from the standard library's own policy where it exists (3.12, 3.11.4+).
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(m, str(dest))
        except tarfile.FilterError as exc:
            raise refuse(str(exc)) from None

    if m.isdir():
        if os.path.islink(target) or (target.exists() and not target.is_dir()):
            target.unlink()
        target.mkdir(parents=True, exist_ok=True)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        raise refuse("a folder of that name was already extracted")
    if os.path.lexists(target):
        target.unlink()  # later members replace earlier ones, as with tar itself
    if m.issym():
        os.symlink(m.linkname, target)
        return True
    if src is not None:
        shutil.copyfile(src, target)  # a copy: streams cannot re-read the linked data
    else:
        data = tf.extractfile(m)
        # O_EXCL: never write through a link that appeared at this name.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with data, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(data, out, _CHUNK)
    os.utime(target, (m.mtime, m.mtime))
    return False


def _check_links(dest: Path, root: str, archive_path: Path) -> None:
    """After extraction every symlink must still resolve inside the target (link chains)."""
    for folder, dirs, files in os.walk(dest):
        for n in dirs + files:
            p = os.path.join(folder, n)
            if os.path.islink(p) and not _inside(os.path.realpath(p), root):
                rel = os.path.relpath(p, dest)
                raise KwsError(f"{archive_path}: refusing archive member {rel!r}: "
                               "symlink resolves outside the target folder")


def safe_extract(archive_path: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a (gzip/bz2/xz) tar archive into the existing folder ``dest``, refusing unsafe
    members with a ``KwsError`` that names them.

    One sequential pass; a gzip archive is read to its end so its CRC-32 and length are checked.
    On error ``dest`` may hold part of the archive: callers extract into a temporary folder.
    """
    archive_path, dest = Path(archive_path), Path(dest)
    root = os.path.realpath(dest)
    any_links = False
    try:
        with open(archive_path, "rb") as raw, \
                _bar(archive_path.stat().st_size, 0, f"extract {archive_path.name}") as bar:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            counted = _CountingReader(raw, bar)
            stream = gzip.GzipFile(fileobj=counted, mode="rb") if gz else counted
            with tarfile.open(fileobj=stream, mode="r|" if gz else "r|*") as tf:
                for member in tf:
                    any_links |= _extract_member(tf, member, dest, root, archive_path)
            if gz:
                while stream.read(_CHUNK):  # reaching EOF makes gzip verify its trailer
                    pass
    except KwsError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise KwsError(f"{archive_path}: corrupt or truncated archive ({exc})") from None
    except OSError as exc:
        raise KwsError(f"{archive_path}: extraction failed ({exc})") from None
    if any_links:
        _check_links(dest, root, archive_path)


def _unwrap(folder: Path) -> None:
    """If everything sits in one top-level wrapper folder (e.g. ``speech_commands_v0.02/``),
    move its contents up one level."""
    entries = list(folder.iterdir())
    if len(entries) != 1 or entries[0].is_symlink() or not entries[0].is_dir():
        return
    wrapper = entries[0]
    if not (wrapper.name.startswith("speech_commands")
            or any(os.path.lexists(wrapper / h) for h in _WRAPPER_HINTS)):
        return
    moved = Path(tempfile.mkdtemp(prefix=".wrapper-", dir=folder))
    os.replace(wrapper, moved / "w")  # the wrapper may contain an entry of its own name
    for child in (moved / "w").iterdir():
        os.replace(child, folder / child.name)
    shutil.rmtree(moved)


# ---------------------------------------------------------------------------------------------
# Markers and installing an extraction


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path, archive: Archive) -> bool:
    """True when ``folder`` holds a finished extraction of ``archive``: same sha256 when it is
    known, else the same URL."""
    mark = _read_marker(folder)
    if mark is None:
        return False
    if archive.sha256 is not None:
        return mark.get("sha256") == archive.sha256
    return mark.get("url") == archive.url


def _marker(archive: Archive, digest: str, entries: list[str]) -> dict:
    return {"url": archive.url, "sha256": digest, "entries": entries}


def _install_test(path: Path, target: Path, archive: Archive, digest: str) -> None:
    """Extract the test archive to ``target`` whole, replacing it only on success."""
    with atomic_dir(target) as tmp:
        safe_extract(path, tmp)
        _unwrap(tmp)
        write_json(tmp / MARKER, _marker(archive, digest, sorted(os.listdir(tmp))))


def _plain_name(n) -> bool:
    return isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and os.sep not in n


def _install_train(path: Path, out: Path, archive: Archive, digest: str) -> None:
    """Extract the train archive into ``out`` itself (which also holds test/ and .download/).

    The archive goes to a temporary folder inside ``out`` first; only when all of it extracted
    are its top-level entries moved in, replacing those of a previous extraction (listed in the
    old marker) and any of the same name.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".kwskit-extract-", suffix=".tmp", dir=out))
    try:
        safe_extract(path, tmp)
        _unwrap(tmp)
        names = sorted(os.listdir(tmp))
        clash = [n for n in names if n in _RESERVED]
        if clash:
            raise KwsError(f"{path}: refusing archive member {clash[0]!r}: "
                           f"the name is reserved by kwskit in {out}")
        old = _read_marker(out) or {}
        stale = {n for n in old.get("entries", []) if _plain_name(n) and n not in _RESERVED}
        (out / MARKER).unlink(missing_ok=True)  # not complete until the new marker lands
        trash = Path(tempfile.mkdtemp(prefix=".kwskit-old-", suffix=".tmp", dir=out))
        try:
            for n in sorted(stale | set(names)):
                if os.path.lexists(out / n):
                    os.replace(out / n, trash / n)
            for n in names:
                os.replace(tmp / n, out / n)
            write_json(out / MARKER, _marker(archive, digest, names))
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_archive(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # only when empty
    except OSError:
        pass


def download_speech_commands(out: str | os.PathLike, version: str = "v2", url: str | None = None,
                             test_url: str | None = None, keep_archives: bool = False, *,
                             timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download and extract Speech Commands ``version`` ("v1" or "v2") into ``out``.

    ``url``/``test_url`` override the archive URLs (``URL#sha256=HEX`` adds a checksum,
    ``test_url="none"`` skips the test set; see :func:`resolve_archives`). Archives go to
    ``out/.download`` and are deleted after extraction unless ``keep_archives``. Parts already
    complete (marker present) are skipped, so the call can be repeated. ``timeout`` is in
    seconds per connect or read. Returns ``out``.
    """
    train, test = resolve_archives(version, url, test_url)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KwsError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    downloads = out / DOWNLOAD_DIR
    train_name = archive_filename(train.url, "train.tar.gz")
    jobs = [(train, out, train_name, _install_train)]
    if test is not None:
        test_name = archive_filename(test.url, "test.tar.gz")
        if test_name == train_name:
            test_name = f"test-{test_name}"
        jobs.append((test, out / TEST_DIR, test_name, _install_test))
    for archive, target, name, install in jobs:
        if _is_complete(target, archive):
            continue
        path, digest = fetch_archive(archive, downloads, name, timeout=timeout)
        install(path, target, archive, digest)
        if not keep_archives:
            _remove_archive(path)
    return out
