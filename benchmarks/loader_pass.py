"""Time one pass over a data set through kwskit's loader, cold (empty cache) and warm.

    python benchmarks/loader_pass.py [--data ../shared/data/gsc-dev] [--labels mini10]

Cold = scan + decode every file into the cache + iterate; warm = scan + content-hash check +
iterate the memory-mapped cache. Prints a table (seconds, clips/s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_pass(data: str, labels: str, cache: str, augment: bool) -> tuple[float, int]:
    import torch

    from kwskit.data.augment import AugmentConfig, WaveAugment
    from kwskit.data.loader import KwsDataset, load_noises, prepare_split
    from kwskit.data.speech_commands import resolve_labels, scan_dataset

    t0 = time.perf_counter()
    index = scan_dataset(data)
    names = resolve_labels(labels)
    n = 0
    for split in ("training", "validation"):
        sd = prepare_split(index, names, split, cache_dir=cache)
        aug = WaveAugment(AugmentConfig.from_dict({}), load_noises(index.background)) if augment else None
        loader = torch.utils.data.DataLoader(KwsDataset(sd, augment=aug), batch_size=100)
        for wave, _ in loader:
            n += len(wave)
    return time.perf_counter() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gsc-dev"))
    ap.add_argument("--labels", default="mini10")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name, aug in (("cold (decode + cache)", False), ("warm", False), ("warm + augmentation", True)):
            s, n = one_pass(a.data, a.labels, cache, aug)
            rows.append((name, s, n))
    print("| pass | seconds | clips | clips/s |\n|---|---|---|---|")
    for name, s, n in rows:
        print(f"| {name} | {s:.1f} | {n} | {n / s:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
