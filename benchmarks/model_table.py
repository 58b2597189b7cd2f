"""Print the model zoo as a markdown table: our params, MACs and look-ahead next to the papers'.

    python benchmarks/model_table.py > /tmp/zoo.md

Params are trainable parameters for 12 classes; MACs are for one 1-s clip through the recipe
front-end, model only (kwskit.eval.profile.count_macs); look-ahead is the streaming delay.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kwskit.eval.info import profile_target  # noqa: E402
from kwskit.models import create_model, list_models, model_info  # noqa: E402
from train_gsc_dev import paper_figures  # noqa: E402


def lookahead_ms(name: str) -> str:
    model = create_model(name, num_classes=12)
    if not model.streamable:
        return "does not stream"
    fe = model_info(name).get("frontend") or {}
    hop_s = fe.get("hop_length", 1) / 16000 if fe.get("type", "none") != "none" else 1 / 16000
    return f"{1000 * model.lookahead_frames * hop_s:.0f} ms"


def main() -> int:
    print("| model | family | params | MACs / 1 s | look-ahead | paper: params / MACs / GSC acc |")
    print("|---|---|---|---|---|---|")
    for name in list_models():
        prof = profile_target(name, num_classes=12, latency=False)
        info = model_info(name)
        print(f"| `{name}` | {info['family']} | {prof['params']:,} | {prof['macs'] / 1e6:.2f} M | "
              f"{lookahead_ms(name)} | {paper_figures(name)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
