"""The fused CPU training kernels (kwskit/kernels/cpu_training.cpp via kwskit.layers.fused):
the same numbers as PyTorch's ops, BatchNorm's running statistics, and every fallback."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kwskit.kernels as kernels
from kwskit.layers import SubSpectralNorm
from kwskit.layers.fused import fused_step_applies, residual_relu, sub_band_norm
from kwskit.models import create_model

needs_kernels = pytest.mark.skipif(kernels.cpu_training_kernels() is None,
                                   reason=f"kernels not built: {kernels.unavailable_reason()}")
# bf16 holds 8 bits of mantissa: a value rounds by up to 2^-8 of itself, sums of a few more
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shortcut", [True, False])
def test_residual_relu_matches_torch(dtype, shortcut):
    torch.manual_seed(0)
    x, a, b = (torch.randn(*shape).to(dtype) for shape in [(3, 4, 10, 17)] * 2 + [(3, 4, 1, 17)])
    grad = torch.randn(3, 4, 10, 17).to(dtype)
    x1, a1, b1 = _leaves(x, a, b)
    out = residual_relu(x1 if shortcut else None, a1, b1)
    out.backward(grad)
    x2, a2, b2 = _leaves(x.float(), a.float(), b.float())
    ref = torch.relu((x2 if shortcut else 0) + a2 + b2)
    ref.backward(grad.float())
    assert out.dtype == dtype
    assert (ref > 0).any() and (ref == 0).any()
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    for mine, theirs in [(a1, a2), (b1, b2)] + ([(x1, x2)] if shortcut else []):
        torch.testing.assert_close(mine.grad.float(), theirs.grad, **TOL[dtype])
    assert x1.grad is None or shortcut


def _norm_pair(bands: int, channels: int = 4):
    """(kwskit norm, a copy for the PyTorch reference) with non-trivial affine weights."""
    torch.manual_seed(1)
    norm = SubSpectralNorm(channels, bands) if bands > 1 else nn.BatchNorm2d(channels)
    bn = norm.bn if bands > 1 else norm
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    ref = SubSpectralNorm(channels, bands) if bands > 1 else nn.BatchNorm2d(channels)
    ref.load_state_dict(norm.state_dict())
    return norm.train(), ref.train()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bands, relu, freq_mean", [(5, False, True), (5, False, False),
                                                     (1, True, False), (1, True, True)])
def test_sub_band_norm_matches_torch(dtype, bands, relu, freq_mean):
    norm, ref = _norm_pair(bands)
    torch.manual_seed(2)
    z = (torch.randn(6, 4, 10, 13) * 3 + 1).to(dtype)
    grad_y, grad_m = torch.randn(6, 4, 10, 13).to(dtype), torch.randn(6, 4, 1, 13).to(dtype)
    (z1,) = _leaves(z)
    out = sub_band_norm(norm, z1, relu=relu, freq_mean=freq_mean)
    y, m = out if freq_mean else (out, None)
    loss = (y.float() * grad_y.float()).sum() + ((m.float() * grad_m.float()).sum() if freq_mean else 0)
    loss.backward()
    (z2,) = _leaves(z.float())
    y_ref = ref(z2)
    y_ref = torch.relu(y_ref) if relu else y_ref
    m_ref = y_ref.mean(2, keepdim=True)
    loss_ref = (y_ref * grad_y.float()).sum() + ((m_ref * grad_m.float()).sum() if freq_mean else 0)
    loss_ref.backward()
    assert y.dtype == dtype and (m is None or m.shape == (6, 4, 1, 13))
    torch.testing.assert_close(y.float(), y_ref, **TOL[dtype])
    if freq_mean:
        torch.testing.assert_close(m.float(), m_ref, **TOL[dtype])
    torch.testing.assert_close(z1.grad.float(), z2.grad, **TOL[dtype])
    bn, bn_ref = (norm.bn, ref.bn) if bands > 1 else (norm, ref)
    scale = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=0.2)
    torch.testing.assert_close(bn.weight.grad, bn_ref.weight.grad, **scale)
    torch.testing.assert_close(bn.bias.grad, bn_ref.bias.grad, **scale)
    # running statistics moved exactly as BatchNorm2d moves them (momentum, unbiased variance)
    stats = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, **stats)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, **stats)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == 1


@needs_kernels
def test_bf16_kernels_round_where_pytorch_rounds():
    """A bf16 step computes the unfused step's numbers (each intermediate a bf16 tensor holds
    is rounded as that tensor would be), not more precise ones."""
    torch.manual_seed(4)
    x = torch.randn(20, 8, 20, 31).relu().bfloat16()
    a, b = torch.randn(20, 8, 20, 31).bfloat16(), (torch.randn(20, 8, 1, 31) * 0.1).bfloat16()
    assert torch.equal(residual_relu(x, a, b), torch.relu(x + (a + b)))
    norm, ref = _norm_pair(5, channels=8)
    z = (torch.randn(20, 8, 20, 31) * 0.5 + 0.3).bfloat16()
    grad_y, grad_m = (torch.randn(20, 8, 20, 31) * 0.01).bfloat16(), (torch.randn(20, 8, 1, 31) * 0.01).bfloat16()
    (z1, z2) = _leaves(z, z)
    y, m = sub_band_norm(norm, z1, freq_mean=True)
    torch.autograd.backward([y, m], [grad_y, grad_m])
    y_ref = ref(z2)
    m_ref = y_ref.sum(-2, keepdim=True) / 20  # FreqMean of a bf16 tensor
    torch.autograd.backward([y_ref, m_ref], [grad_y, grad_m])
    # statistics summed in another order move a few values by one bf16 step
    for mine, theirs in [(y, y_ref), (m, m_ref), (z1.grad, z2.grad)]:
        assert (mine != theirs).float().mean() < 0.005
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=0.01, atol=0.01 * theirs.abs().max().item())


def _bcresnet_step(use_kernels: bool, monkeypatch, amp: bool = False):
    monkeypatch.setenv(kernels.ENV_SWITCH, "1" if use_kernels else "0")
    torch.manual_seed(0)
    model = create_model("bcresnet1", num_classes=5).train()
    x, y = torch.randn(6, 1, 40, 30), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(3)  # the same dropout masks in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach().float(), grads, model.state_dict()


@needs_kernels
def test_bcresnet_training_step_same_with_kernels(monkeypatch):
    used = []

    def counted():
        module = kernels.cpu_training_kernels()
        used.append(module is not None)
        return module

    monkeypatch.setattr("kwskit.layers.fused.cpu_training_kernels", counted)
    logits, grads, state = _bcresnet_step(True, monkeypatch)
    assert any(used), "the kernels were not used"
    used.clear()
    ref_logits, ref_grads, ref_state = _bcresnet_step(False, monkeypatch)
    assert used and not any(used)  # switched off: looked for, never had
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    for name, g in ref_grads.items():  # relative to each tensor's largest gradient
        assert (grads[name] - g).abs().max() <= 1e-3 * g.abs().max() + 1e-7, name
    assert state.keys() == ref_state.keys()
    for name, v in ref_state.items():
        torch.testing.assert_close(state[name], v, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_bcresnet_bf16_step_runs_the_kernels(monkeypatch):
    logits, grads, _ = _bcresnet_step(True, monkeypatch, amp=True)
    ref_logits, _, _ = _bcresnet_step(False, monkeypatch, amp=True)
    assert torch.isfinite(logits).all() and all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(logits, ref_logits, rtol=0.05, atol=0.05)


def test_fused_step_only_in_cpu_training(monkeypatch):
    block = create_model("bcresnet1", num_classes=5).body.stage1_2
    x = torch.randn(2, 8, 20, 7)
    monkeypatch.setattr("kwskit.layers.fused.cpu_training_kernels", lambda: object())
    assert fused_step_applies(block.train(), x)
    assert not fused_step_applies(block.eval(), x)
    block.train()
    with torch.no_grad():
        assert not fused_step_applies(block, x)
    assert not fused_step_applies(block, x.double())
    handle = block.relu.register_forward_hook(lambda *a: None)  # e.g. distillation's capture
    assert not fused_step_applies(block, x)
    handle.remove()
    monkeypatch.setattr("kwskit.layers.fused.cpu_training_kernels", lambda: None)
    assert not fused_step_applies(block, x)


def test_hooked_block_runs_its_modules(monkeypatch):
    """A forward hook inside a block (distillation's feature capture) still fires in training."""
    block = create_model("bcresnet1", num_classes=5).body.stage1_2.train()
    seen = []
    block.relu.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    block(torch.randn(2, 8, 20, 7)).sum().backward()
    assert seen == [torch.Size([2, 8, 20, 7])]


def test_hooked_pair_runs_its_modules():
    """A hook on either module of a BatchNorm + ReLU pair keeps that pair unfused."""
    model = create_model("bcresnet1", num_classes=5).train()
    seen = []
    for module in (model.body.stem_bn, model.body.stem_relu):
        handle = module.register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
        model(torch.randn(2, 1, 40, 20)).sum().backward()
        handle.remove()
    assert seen == ["BatchNorm2d", "ReLU"]


def test_switch_off_means_no_kernels(monkeypatch):
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    assert kernels.cpu_training_kernels() is None
    assert kernels.unavailable_reason() == f"{kernels.ENV_SWITCH}=0"


def test_failed_build_falls_back_with_one_message(monkeypatch, tmp_path, capsys):
    broken = tmp_path / "cpu_training.cpp"
    broken.write_text("#error this source does not compile\n")
    monkeypatch.setenv(kernels.ENV_SWITCH, "1")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(kernels, "SOURCE", broken)
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setattr(kernels, "unavailable_reason", lambda: None)
    assert kernels.cpu_training_kernels() is None
    assert kernels.cpu_training_kernels() is None  # remembered: no second build
    err = capsys.readouterr().err
    assert err.count("CPU training kernels not used (build failed") == 1
    assert "PyTorch's own ops" in err
    assert str(tmp_path / "build") in str(kernels.build_directory(kernels.build_name()))


def test_build_name_changes_with_the_source(monkeypatch, tmp_path):
    a, b = tmp_path / "a.cpp", tmp_path / "b.cpp"
    a.write_text("int a;\n")
    b.write_text("int b;\n")
    monkeypatch.setattr(kernels, "SOURCE", a)
    name_a = kernels.build_name()
    monkeypatch.setattr(kernels, "SOURCE", b)
    assert kernels.build_name() != name_a and name_a.startswith("kwskit_cpu_training_")


def test_a_stale_build_lock_is_removed(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("")
    kernels._drop_stale_lock(tmp_path)
    assert lock.exists()  # a build may be running
    old = lock.stat().st_mtime - 3600
    os.utime(lock, (old, old))
    kernels._drop_stale_lock(tmp_path)
    assert not lock.exists()
    kernels._drop_stale_lock(tmp_path)  # nothing there: nothing to do
