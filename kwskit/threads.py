"""How many CPU threads torch gets: a default that behaves on a shared machine.

torch's default (one thread per logical CPU) is fastest for a job alone and worst for two jobs
side by side: their threads pre-empt each other inside every parallel op, and each op waits for
its slowest thread (two 2-thread trainings on 2 cores ran 3-8x slower than one alone). The
default here is the number of physical cores this process may use minus the cores other
processes keep busy right now (read from /proc/stat over a fifth of a second), never below 1,
so a second job takes what is left instead of fighting for it. ``KWSKIT_THREADS`` or
``OMP_NUM_THREADS`` (capped at the physical cores), or an explicit count, override it.
"""

from __future__ import annotations

import os
import time

from kwskit.errors import KwsError


def available_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (hyper-threads counted once)."""
    cpus = available_cpus()
    try:
        allowed = os.sched_getaffinity(0)
        cores = set()
        for cpu in allowed:
            base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
            with open(f"{base}/core_id") as f1, open(f"{base}/physical_package_id") as f2:
                cores.add((f2.read().strip(), f1.read().strip()))
        return max(1, min(cpus, len(cores)))
    except (AttributeError, OSError, ValueError):
        return cpus


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(sample_s: float = 0.2) -> float | None:
    """Cores kept busy by other processes, measured over ``sample_s`` seconds while this one
    sleeps; None where the OS does not tell (then nothing is subtracted)."""
    a = _cpu_times()
    time.sleep(sample_s)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (os.cpu_count() or 1) * (b[0] - a[0]) / (b[1] - a[1])


def _env_threads(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        raise KwsError(f"{name}={text!r}: expected a whole number of threads") from None
    if n < 1:
        raise KwsError(f"{name}={text!r}: must be >= 1")
    return n


def choose_threads(requested: int = 0, field: str = "train.threads") -> tuple[int, str]:
    """(threads, why): ``requested`` when > 0, else the environment, else the idle cores."""
    if requested < 0:
        raise KwsError(f"config: {field}: must be >= 0 (0 = automatic), got {requested}")
    cores = physical_cores()
    if requested > 0:
        note = f" (more than the {cores} physical cores)" if requested > cores else ""
        return requested, f"{field}={requested}{note}"
    for name in ("KWSKIT_THREADS", "OMP_NUM_THREADS"):
        n = _env_threads(name)
        if n is not None:
            return min(n, cores), f"{name}={n}" + (f", capped at {cores} cores" if n > cores else "")
    busy = busy_cores()
    if busy is None or round(busy) < 1:
        return cores, f"{cores} idle physical core{'s' if cores != 1 else ''}"
    n = max(1, cores - round(busy))
    return n, f"{cores} physical cores, {busy:.1f} busy with other work"
