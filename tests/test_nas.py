"""Architecture search (kwskit.compress.nas) and its MBConv space (kwskit.models.mbconv)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from kwskit.compress import nas
from kwskit.compress.cli import parse_amount
from kwskit.config import load_config
from kwskit.errors import KwsError
from kwskit.eval.info import profile_target
from kwskit.eval.profile import count_macs, profile_model
from kwskit.models import create_model
from kwskit.models.mbconv import Slot, layer_slots, mbconv_body
from tests.model_checks import assert_model_streams, assert_trains, randomize_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny space: 2 kernels x 2 expansions, three layers (the last one may be skipped)
TINY = dict(target=1.0, kernels=(3, 5), expansions=(1, 2), stages=((8, 1, 1), (12, 2, 2)),
            stem_channels=4)
F_IN, FRAMES = 8, 20


def tiny_settings(**kw) -> nas.SearchSettings:
    return nas.SearchSettings(**{**TINY, **kw})


def tiny_supernet(seed: int = 0) -> nas.SuperNet:
    torch.manual_seed(seed)
    return nas.SuperNet(3, F_IN, tiny_settings())


def test_supernet_forward_backward_reaches_weights_and_sampled_alphas():
    net = tiny_supernet()
    x = torch.randn(4, 1, F_IN, FRAMES)
    gen = torch.Generator().manual_seed(0)
    for m in net.layers:
        m.sample_two(gen)
    y = net(x)
    assert y.shape == (4, 3) and torch.isfinite(y).all()
    y.logsumexp(1).sum().backward()
    for m in net.layers:
        grad = m.alpha.grad
        assert grad is not None and torch.isfinite(grad).all()
        sampled = set(m.path)
        assert len(sampled) == 2
        # only the two sampled candidates' alphas learn in an architecture step
        assert all(grad[i] == 0 for i in range(len(m.names)) if i not in sampled)
        assert any(grad[i] != 0 for i in sampled)
    assert net.stem.conv.conv.weight.grad.abs().sum() > 0


def test_weight_step_runs_exactly_one_candidate_per_layer(monkeypatch):
    net = tiny_supernet()
    calls = []
    real = nas.MixedLayer.candidate

    def spy(self, i, x):
        calls.append((id(self), i))
        return real(self, i, x)

    monkeypatch.setattr(nas.MixedLayer, "candidate", spy)
    gen = torch.Generator().manual_seed(1)
    for trial in range(5):
        calls.clear()
        for m in net.layers:
            m.sample_one(gen)
        net(torch.randn(2, 1, F_IN, FRAMES))
        assert sorted(c[0] for c in calls) == sorted(id(m) for m in net.layers)
        for m in net.layers:
            assert len(m.path) == 1
        calls.clear()
        for m in net.layers:
            m.sample_two(gen)
        net(torch.randn(2, 1, F_IN, FRAMES))
        for m in net.layers:  # an architecture step: two candidates, one gated on
            assert len({i for layer, i in calls if layer == id(m)}) == 2
            assert m.gate_on in (0, 1)


def test_two_path_gate_forward_equals_the_chosen_candidate():
    net = tiny_supernet().eval()
    x = torch.randn(2, 1, F_IN, FRAMES)
    gen = torch.Generator().manual_seed(3)
    for m in net.layers:
        m.sample_two(gen)
    with torch.no_grad():
        two = net(x)
        for m in net.layers:
            m.fix(m.path[m.gate_on])
        one = net(x)
    torch.testing.assert_close(two, one)


def test_rescale_keeps_the_unsampled_probabilities():
    net = tiny_supernet()
    m = net.layers[-1]
    with torch.no_grad():
        m.alpha.copy_(torch.randn(len(m.names)))
    m.path = (0, 2)
    before = m.alpha.detach().clone()
    p_before = m.probs().detach()
    with torch.no_grad():
        m.alpha[0] += 1.0
        m.alpha[2] -= 0.3
    m.rescale(before)
    p_after = m.probs().detach()
    others = [i for i in range(len(m.names)) if i not in m.path]
    torch.testing.assert_close(p_after[others], p_before[others])
    assert p_after[0] > p_before[0]


def test_cost_model_sums_to_kwskit_info_macs_of_the_derived_model():
    net = tiny_supernet()
    table = nas.cost_table(net, FRAMES)
    gen = torch.Generator().manual_seed(5)
    s = tiny_settings()
    for _ in range(4):
        for m in net.layers:
            m.sample_one(gen)
        ops = [m.names[m.path[0]] for m in net.layers]
        model = create_model("mbconv_net", num_classes=3, in_features=F_IN, ops=ops,
                             stages=[list(x) for x in s.stages],
                             stem_channels=s.stem_channels).eval()
        prof = profile_model(model, input_shape=(1, 1, F_IN, FRAMES), latency=False)
        assert nas.path_cost(ops, table) == pytest.approx(prof["macs"])
        assert nas.path_cost(ops, table) == pytest.approx(count_macs(model, torch.zeros(1, 1, F_IN, FRAMES)))
    lo, hi = nas.cost_range(table)
    assert 0 < lo < hi
    # the expected cost of the uniform initial alphas lies strictly between the extremes
    assert lo < float(nas.expected_cost(net, table).detach()) < hi


def test_a_fixed_path_of_the_supernet_computes_what_its_derived_model_computes():
    """With the derived model's weights copied into the shared ones, a fixed path of the
    supernet (batch statistics) equals the derived model in training-mode BatchNorm."""
    net = tiny_supernet()
    ops = ["k5e2", "k3e1", "skip"]
    s = tiny_settings()
    torch.manual_seed(1)
    model = create_model("mbconv_net", num_classes=3, in_features=F_IN, ops=ops,
                         stages=[list(x) for x in s.stages], stem_channels=s.stem_channels)
    net.stem.load_state_dict(model.body.stem.state_dict())
    net.head.load_state_dict(model.head.state_dict())
    for i, op in enumerate(ops):
        if op == "skip":
            continue
        layer = model.body[f"layer{i}"]
        body = layer.branches[1] if hasattr(layer, "branches") else layer
        k, e = nas.parse_op(op, "test")
        shared = net.layers[i].shared
        n = e * shared.slot.c_in
        c, r = shared.body.dw.shape[-1] // 2, k // 2
        with torch.no_grad():
            shared.expand[:n] = body.expand.weight
            shared.body.dw[:n, :, c - r:c + r + 1, c - r:c + r + 1] = body.dw.conv.weight
            shared.body.project[:, :n] = body.project.weight
    net.fix(ops)
    x = torch.randn(6, 1, F_IN, FRAMES)
    model.train()
    net.train()
    for mod in list(model.modules()) + list(net.modules()):
        if isinstance(mod, torch.nn.Dropout):
            mod.eval()
    torch.testing.assert_close(net(x), model(x), atol=1e-5, rtol=1e-5)


def test_derived_model_builds_trains_and_streams_like_its_whole_clip_self():
    ops = ["k7e3", "skip", "k3e1", "k5e6", "skip", "k3e3", "k7e1", "skip"]
    for causal in (False, True):
        model = create_model("mbconv_net", num_classes=4, in_features=10, ops=ops, causal=causal)
        x = torch.randn(2, 1, 10, 49)
        assert_trains(model, x, 4)
        randomize_batchnorm(model)
        model.eval()
        assert_model_streams(model, torch.randn(2, 1, 10, 64), None, seed=2, max_chunk=5,
                             atol=1e-4, causal=causal)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ops=["k4e3"] * 8), "odd kernel"),
    (dict(ops=["k3e3"] * 7), "one op per layer"),
    (dict(ops=["skip"] + ["k3e3"] * 7), "not allowed here"),
    (dict(ops=["k3x3"] * 8), "kKeE"),
    (dict(stages=[[8, 0, 1]]), "stages"),
    (dict(width_mult=0), "width_mult"),
])
def test_bad_spec_gets_one_clear_error(kwargs, match):
    with pytest.raises(KwsError, match=match):
        create_model("mbconv_net", num_classes=3, **kwargs)


def test_width_multiplier_scales_every_layer():
    narrow, wide = layer_slots(width_mult=0.75), layer_slots(width_mult=1.25)
    assert all(a.c_out < b.c_out for a, b in zip(narrow, wide))
    assert all(s.c_out % 4 == 0 for s in narrow + wide)
    assert Slot(8, 8, 1).can_skip and not Slot(8, 8, 2).can_skip and not Slot(8, 12, 1).can_skip


def test_recipe_file_matches_the_built_in_recipe():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "mbconv_net.yaml"
    assert load_config(path).to_dict() == nas.default_config().to_dict()


@pytest.mark.parametrize("text, value", [("5M", 5e6), ("2.5e6", 2.5e6), ("800k", 8e5)])
def test_parse_amount(text, value):
    assert parse_amount(text, "--target-macs") == value


@pytest.mark.parametrize("text", ["-1M", "abc", "0", "M"])
def test_parse_amount_refuses_nonsense(text):
    with pytest.raises(KwsError, match="--target-macs"):
        parse_amount(text, "--target-macs")


def _tiny_cfg(tiny_data, **over):
    sets = ["data.labels=yes,no", "train.batch_size=8", "frontend.n_mfcc=8",
            "frontend.n_mels=16", "model.args.dropout=0.0", f"data.root={tiny_data}"]
    return nas.default_config(sets + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("target, match", [(1e3, "outside this space's range"), (1e12, "outside")])
def test_target_outside_the_space_is_refused_before_anything_is_written(tiny_data, tmp_path,
                                                                         target, match):
    s = tiny_settings(target=target, epochs=1, warmup_epochs=0)
    with pytest.raises(KwsError, match=match):
        nas.search(_tiny_cfg(tiny_data), tmp_path / "run", s, quiet=True)
    assert not (tmp_path / "run" / "search.json").exists()


def test_bad_settings_get_clear_errors():
    for kw, field in [(dict(beta=-1), "beta"), (dict(cost="joules"), "cost"),
                      (dict(holdout=0.9), "holdout"), (dict(kernels=(4,)), "kernels"),
                      (dict(epochs=0), "epochs")]:
        with pytest.raises(KwsError, match=field):
            tiny_settings(target=1e5, **kw).check()


def _search(tiny_data, out, **kw):
    cfg = _tiny_cfg(tiny_data)
    s = tiny_settings(target=60_000, epochs=2, warmup_epochs=1, beta=2.0, arch_lr=0.05, **kw)
    return nas.search(cfg, out, s, quiet=True)


def test_search_writes_spec_history_plot_and_the_found_config_trains(tiny_data, tmp_path):
    from kwskit.models.io import load_model
    from kwskit.train.loop import fit

    result = _search(tiny_data, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("search.json", "found.yaml", "search.png", "checkpoints/search.pt"):
        assert (run / name).exists(), name
    saved = json.loads((run / "search.json").read_text())
    assert saved["found"]["ops"] == result["found"]["ops"]
    assert [r["phase"] for r in saved["history"]] == ["warm-up", "search", "search"]
    assert saved["history"][0]["arch_steps"] == 0 and saved["history"][1]["arch_steps"] > 0
    # the warm-up leaves alpha alone; the search moves it
    first = saved["history"][0]["probs"][0]
    assert max(first) == pytest.approx(min(first))
    assert saved["history"][-1]["probs"] != saved["history"][0]["probs"]
    found = yaml.safe_load((run / "found.yaml").read_text())
    assert found["model"]["name"] == "mbconv_net"
    assert found["model"]["args"]["ops"] == result["found"]["ops"]
    cfg = load_config(run / "found.yaml", ["train.epochs=1"])
    fit(cfg, tmp_path / "trained", data=str(tiny_data), track=False, quiet=True)
    model, _, labels = load_model(tmp_path / "trained")
    assert model.backbone.ops == result["found"]["ops"]
    # kwskit info on the trained run counts what the search's cost model said
    assert profile_target(str(tmp_path / "trained"), latency=False)["macs"] == \
        pytest.approx(result["found"]["cost"])


def test_search_resumes_after_a_kill_to_the_same_result(tiny_data, tmp_path, monkeypatch):
    whole = _search(tiny_data, tmp_path / "whole")
    real = nas._write_results
    calls = {"n": 0}

    def killed_after_first_epoch(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(nas, "_write_results", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        _search(tiny_data, tmp_path / "killed")
    monkeypatch.setattr(nas, "_write_results", real)
    resumed = nas.search(None, tmp_path / "killed", None, resume=True, quiet=True)
    assert resumed["found"] == whole["found"]
    assert [r["probs"] for r in resumed["history"]] == [r["probs"] for r in whole["history"]]
    with pytest.raises(KwsError, match="nothing to resume"):
        nas.search(None, tmp_path / "nothing", None, resume=True, quiet=True)


def test_target_loss_has_no_cost_pull_below_the_target_and_001s_ignores_the_target():
    def cost_grad(expected, target, kind):
        e = torch.tensor(expected, requires_grad=True)
        nas.arch_loss(torch.tensor(2.0), e, target, 1.0, 8.0, kind).backward()
        return float(e.grad)

    assert cost_grad(1e6, 2e6, "target") == 0.0  # under budget: only accuracy counts
    assert cost_grad(3e6, 2e6, "target") > 0
    assert cost_grad(1e6, 2e6, "mul-log") > 0  # 001's pulls everywhere...
    # ... and its target only scales the loss: the same direction for any target
    ce = torch.tensor(2.0, requires_grad=True)
    e = torch.tensor(3e6, requires_grad=True)
    g = []
    for target in (1.5e6, 2.5e6):
        ce.grad = e.grad = None
        nas.arch_loss(ce, e, target, 1.0, 8.0, "mul-log").backward()
        g.append((float(ce.grad), float(e.grad)))
    assert g[0][1] / g[0][0] == pytest.approx(g[1][1] / g[1][0])
    with pytest.raises(KwsError, match="loss"):
        tiny_settings(target=1e5, loss="l2").check()


def test_latency_cost_table_times_every_candidate():
    net = tiny_supernet()
    table = nas.cost_table(net, FRAMES, kind="latency")
    assert table["kind"] == "latency" and table["fixed"] > 0
    for m, costs in zip(net.layers, table["layers"]):
        assert set(costs) == set(m.names)
        assert all((v == 0) == (name == "skip") for name, v in costs.items())
        assert all(v > 0 for name, v in costs.items() if name != "skip")
