"""Model I/O: the architecture spec in checkpoints (arch wins over the config), old checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from kwskit.config import ExperimentConfig, ModelConfig
from kwskit.errors import KwsError
from kwskit.models import list_models, model_info
from kwskit.models.io import arch_of, build_from_arch, build_pipeline, load_model, save_checkpoint

LABELS = ["yes", "no", "_silence_", "_unknown_"]

pytestmark = pytest.mark.usefixtures("one_thread")


def recipe_cfg(name: str, **args) -> ExperimentConfig:
    return ExperimentConfig(model=ModelConfig(name, dict(args)), frontend=model_info(name)["frontend"])


def shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", list_models())
def test_arch_is_plain_json_and_rebuilds_the_configs_model(name):
    cfg = recipe_cfg(name)
    arch = arch_of(cfg, 7)
    assert json.loads(json.dumps(arch)) == arch  # no tuples, no objects
    assert arch["name"] == name and arch["args"]["num_classes"] == 7
    assert set(model_info(name)["defaults"]) <= set(arch["args"])  # every argument, resolved
    assert shapes(build_from_arch(json.loads(json.dumps(arch)))) == shapes(build_pipeline(cfg, 7))


def _save(path, model, cfg, arch=None):
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "labels": LABELS}
    if arch is not None:
        state["arch"] = arch
    save_checkpoint(path, state)


def test_checkpoint_arch_wins_over_the_config(tmp_path):
    """A slimmed model (as a pruner or a distiller would leave it) reloads as what it is, though
    its config still names the recipe's widths."""
    cfg = recipe_cfg("crnn")  # channels 8, hidden 64
    arch = arch_of(recipe_cfg("crnn", channels=4, hidden=16, dropout=0.0), len(LABELS))
    torch.manual_seed(0)
    slim = build_from_arch(arch).eval()
    assert shapes(slim) != shapes(build_pipeline(cfg, len(LABELS)))  # the config cannot hold it
    _save(tmp_path / "slim.pt", slim, cfg, arch)

    model, got_cfg, labels = load_model(tmp_path / "slim.pt")
    assert labels == LABELS and shapes(model) == shapes(slim)
    x = torch.randn(2, 16000)
    with torch.no_grad():
        assert torch.equal(model(x), slim(x))
    assert got_cfg.model.name == "crnn" and got_cfg.model.args["hidden"] == 16  # says what it built
    assert not model.training


def test_old_checkpoint_without_arch_loads_from_its_config(tmp_path):
    cfg = recipe_cfg("dscnn_s")
    torch.manual_seed(0)
    p = build_pipeline(cfg, len(LABELS)).eval()
    _save(tmp_path / "run" / "checkpoints" / "best.pt", p, cfg)
    model, got_cfg, labels = load_model(tmp_path / "run")
    x = torch.randn(2, 16000)
    with torch.no_grad():
        assert torch.equal(model(x), p(x))
    assert got_cfg.model.args == {} and labels == LABELS


def test_bad_arch_is_a_one_line_error(tmp_path):
    cfg = recipe_cfg("dscnn_s")
    arch = arch_of(cfg, len(LABELS))
    p = build_from_arch(arch)
    _save(tmp_path / "n.pt", p, cfg, dict(arch, args=dict(arch["args"], num_classes=3)))
    with pytest.raises(KwsError, match="arch has 3 classes but the checkpoint lists 4 labels"):
        load_model(tmp_path / "n.pt")
    _save(tmp_path / "b.pt", p, cfg, {"name": "dscnn_s"})
    with pytest.raises(KwsError, match="arch: expected a dict with name, args, frontend, input"):
        load_model(tmp_path / "b.pt")
    other = arch_of(recipe_cfg("bcresnet1"), len(LABELS))
    _save(tmp_path / "w.pt", p, cfg, other)
    with pytest.raises(KwsError, match="weights do not fit the bcresnet1"):
        load_model(tmp_path / "w.pt")
