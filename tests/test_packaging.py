"""pyproject.toml: the PEP 639 license form and a build backend range that supports it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_string():
    # The TOML-table form ({ text = ... }) is deprecated by setuptools, unsupported after 2027-02-18.
    assert isinstance(PYPROJECT["project"]["license"], str)
    assert not any(c.startswith("License ::") for c in PYPROJECT["project"].get("classifiers", []))


def test_setuptools_range_supports_pep639():
    req = next(r for r in PYPROJECT["build-system"]["requires"] if re.match(r"setuptools\b", r))
    lower = re.search(r">=\s*(\d+)", req)
    assert lower and int(lower.group(1)) >= 77, req  # PEP 639 license strings need setuptools 77
    assert re.search(r"<\s*\d+", req), f"{req}: no upper bound"


def test_tracking_extra_has_the_full_mlflow():
    (req,) = PYPROJECT["project"]["optional-dependencies"]["tracking"]
    assert req.startswith("mlflow>=") and "<" in req, req


def _names(reqs) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in reqs}


def test_train_extra_carries_the_default_sqlite_store():
    # the default MLflow store (sqlite in the run dir) needs SQLAlchemy and alembic
    names = _names(PYPROJECT["project"]["optional-dependencies"]["train"])
    assert {"torch", "mlflow-skinny", "sqlalchemy", "alembic"} <= names


def test_core_is_torch_free_and_carries_the_runtime():
    # `pip install kwskit` streams a pretrained or exported model with ONNX Runtime, no torch
    core = _names(PYPROJECT["project"]["dependencies"])
    assert not core & {"torch", "matplotlib", "mlflow-skinny"}
    assert "onnxruntime" in core
    assert _names(PYPROJECT["project"]["optional-dependencies"]["runtime"]) == {"onnxruntime"}


def test_pretrained_models_are_package_data():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["kwskit.pretrained"]
    home = Path(__file__).resolve().parents[1] / "kwskit" / "pretrained"
    shipped = [p for p in home.rglob("*") if p.is_file() and "__pycache__" not in p.parts
               and p.suffix != ".py"]
    for f in shipped:  # every shipped file is matched by a pattern, so a wheel carries it
        rel = f.relative_to(home)
        assert any(rel.match(pat) for pat in patterns), rel
    assert "onnxscript" in _names(PYPROJECT["project"]["optional-dependencies"]["onnx"])


def test_kernel_source_and_its_build_tool_ship():
    # the CPU training kernels compile on first use: the wheel carries the .cpp, train brings ninja
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["kwskit.kernels"]
    home = Path(__file__).resolve().parents[1] / "kwskit" / "kernels"
    sources = list(home.glob("*.cpp"))
    assert sources and all(any(s.relative_to(home).match(p) for p in patterns) for s in sources)
    assert "ninja" in _names(PYPROJECT["project"]["optional-dependencies"]["train"])
