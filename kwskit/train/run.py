"""Run-directory files only training writes (the layout: kwskit.models.io).

Model building and checkpoint I/O live in kwskit.models.io, where eval, stream and export
load models from.
"""

from __future__ import annotations

import json
from pathlib import Path

from kwskit.fsutil import write_text


def write_labels(run_dir: Path, labels: list[str]) -> None:
    """labels.json: the ordered label list, one JSON array."""
    write_text(run_dir / "labels.json", json.dumps(labels) + "\n")
