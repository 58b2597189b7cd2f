"""C++ kernels built on first use with the machine's compiler (torch.utils.cpp_extension).

``cpu_training_kernels()`` returns the compiled module of ``cpu_training.cpp`` (see
``kwskit.layers.fused``), or None where it cannot be had: no C++ compiler or ninja, a failed
build, or ``KWSKIT_CPU_KERNELS=0`` in the environment. Callers then keep PyTorch's own ops, so
nothing depends on the build. The build (~25 s) happens once per machine and source version and
is cached under torch's extension directory (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) in ``kwskit/``; it is compiled for the CPU it runs on
(``-march=native``) against this torch and Python, so the cache name hashes all of these and
the compiler flags.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_training.cpp")
ENV_SWITCH = "KWSKIT_CPU_KERNELS"
# -fassociative-math & co. let GCC vectorise the float reductions (sums in any order)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fassociative-math",
          "-fno-signed-zeros", "-fno-trapping-math"]

_lock = threading.Lock()
_state: dict = {}


def enabled_by_env() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def build_name() -> str:
    import torch

    key = SOURCE.read_bytes() + f"{_cpu_id()} {torch.__version__} {sys.version} {CFLAGS}".encode()
    return f"kwskit_cpu_training_{hashlib.sha256(key).hexdigest()[:12]}"


def build_directory(name: str) -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "kwskit" / name


def unavailable_reason() -> str | None:
    """Why the kernels cannot be built here (None: they can be tried)."""
    if not enabled_by_env():
        return f"{ENV_SWITCH}=0"
    if sys.platform != "linux":
        return "built on Linux only"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) on PATH"
    return None


def cpu_training_kernels():
    """The compiled kernels, built on the first call (None where they cannot be had; the
    reason is printed once to stderr)."""
    if not enabled_by_env():
        return None
    with _lock:
        if "module" not in _state:
            _state["module"] = _load()
    return _state["module"]


def _drop_stale_lock(where: Path, max_age_s: float = 600.0) -> None:
    """torch's builder waits while a ``lock`` file exists in the build directory; one left by
    a build that was killed would make every later build wait forever."""
    lock = where / "lock"
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
    except FileNotFoundError:
        pass


def _load():
    reason = unavailable_reason()
    if reason is None:
        from torch.utils.cpp_extension import load

        name = build_name()
        where = build_directory(name)
        if not (where / f"{name}.so").exists():
            print("kwskit: building the CPU training kernels (once per machine, ~30 s)",
                  file=sys.stderr)
        try:
            where.mkdir(parents=True, exist_ok=True)
            _drop_stale_lock(where)
            return load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS,
                        extra_ldflags=["-fopenmp"], build_directory=str(where), verbose=False)
        except Exception as exc:  # a compiler error: PyTorch's ops still train
            reason = f"build failed ({type(exc).__name__}: {str(exc).strip().splitlines()[-1]})"
    print(f"kwskit: CPU training kernels not used ({reason}); training runs PyTorch's own ops",
          file=sys.stderr)
    return None
