"""Model cost: trainable parameters, weight size, multiply-accumulates (MACs) and CPU latency.

MAC counting method (one method for every model): run one forward pass under
``torch.utils.flop_counter.FlopCounterMode`` and report MACs = FLOPs / 2. The mode sees every
ATen op the forward pass runs, so it catches convolutions and matrix products whether they
come from modules (Conv1d/2d, Linear, GRU/LSTM cells, attention) or from functional calls
(``F.conv1d``, ``torch.matmul``, ``einsum``) inside ``forward``. It counts:

- convolution: out_elements * (in_ch / groups) * prod(kernel)  (depthwise: in_ch/groups = 1)
- mm / addmm / bmm / baddbmm (Linear, attention, RNN gates): out_elements * inner_dim
- mv / addmv / dot (added here): out_elements * inner_dim
- GRU / LSTM / RNN: the per-time-step input and hidden gate matmuls (GRU: 3H(I+H) per step and
  direction, LSTM: 4H(I+H)), because oneDNN's fused RNN kernel is switched off while counting
  so the RNN decomposes into addmm calls
- scaled_dot_product_attention: the QK^T and AV products (CPU kernel added here)
- FFT (added here, for STFT front-ends): FFTW's convention of 5 N log2 N FLOPs for a complex
  FFT of N points and 2.5 N log2 N for a real one (http://www.fftw.org/speed/method.html),
  halved like everything else.

Not counted (0 MACs): bias adds, BatchNorm/LayerNorm, activations, pooling, softmax, log, abs,
elementwise products and other pointwise or data-movement ops. Quantized kernels are not
counted either; count the float model. All counts are for the given example input (batch
included), so pass batch 1 for per-clip numbers.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn

from kwskit import CLIP_SAMPLES, SAMPLE_RATE
from kwskit.errors import KwsError


# ---------------------------------------------------------------- parameters and size

def count_params(model: nn.Module) -> int:
    """Trainable parameters (``requires_grad``), shared tensors counted once."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def size_bytes(model: nn.Module, bits: int = 32) -> int:
    """Bytes to store the model's tensors at ``bits`` bits per value (32 = fp32, 8 = int8).

    Counts every parameter (trainable or frozen) and every floating-point buffer (BatchNorm
    running statistics, filterbank / DCT matrices). Integer buffers such as BatchNorm's
    ``num_batches_tracked`` are left out: inference does not need them. Scale / zero-point
    overheads of a quantized format are not included.
    """
    if bits <= 0:
        raise KwsError(f"bits: must be a positive number of bits, got {bits}")
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return int(math.ceil(n * bits / 8))


# ---------------------------------------------------------------- MACs

def _fft_flops(n: int, batch: int, real: bool) -> int:
    """FFTW's nominal FLOPs: 5 N log2 N for a complex N-point FFT, half that for a real one."""
    if n <= 1:
        return 0
    per = (2.5 if real else 5.0) * n * math.log2(n)
    return int(round(per * batch))


def _fft_r2c_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n = math.prod(self_shape[d] for d in dim)
    return _fft_flops(n, math.prod(self_shape) // max(n, 1), real=True)


def _fft_c2r_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n = math.prod(out_shape[d] for d in dim)
    return _fft_flops(n, math.prod(out_shape) // max(n, 1), real=True)


def _fft_c2c_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n = math.prod(self_shape[d] for d in dim)
    return _fft_flops(n, math.prod(self_shape) // max(n, 1), real=False)


def _mv_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


def _addmv_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1]


def _dot_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0]


def _sdpa_cpu_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q_shape, k_shape, v_shape)


def _custom_flop_formulas() -> dict:
    aten = torch.ops.aten
    table = {
        "_fft_r2c": _fft_r2c_flop, "_fft_c2r": _fft_c2r_flop, "_fft_c2c": _fft_c2c_flop,
        "mv": _mv_flop, "addmv": _addmv_flop, "dot": _dot_flop, "vdot": _dot_flop,
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu_flop,
    }
    # Only ops this torch build has (names of private ops can change between releases).
    return {getattr(aten, k): f for k, f in table.items() if hasattr(aten, k)}


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    """Put modules in eval mode (BatchNorm must not update its statistics), then restore."""
    saved = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for root in modules:
            root.eval()
        yield
    finally:
        for m, was_training in saved:
            m.training = was_training


def _as_args(example_input) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _forward_error(exc: Exception, args: tuple) -> KwsError:
    shapes = ", ".join(str(tuple(a.shape)) if torch.is_tensor(a) else type(a).__name__ for a in args)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return KwsError(f"model forward failed on input shape {shapes}: {msg}")


def count_macs(model: nn.Module, example_input) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``example_input``.

    ``example_input`` is a tensor or a tuple of positional arguments. Method: FLOPs counted by
    ``FlopCounterMode`` / 2 (see the module docstring for what is and is not counted). The
    model runs in eval mode under ``inference_mode``; its train/eval flags are restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    args = _as_args(example_input)
    with contextlib.ExitStack() as stack:
        # Toggling oneDNN prints an unrelated TF32 notice on some builds.
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*TF32.*")
        stack.enter_context(_eval_mode(model))
        stack.enter_context(torch.inference_mode())
        # oneDNN's fused LSTM kernel hides its matmuls from the counter.
        stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
        counter = stack.enter_context(
            FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()))
        try:
            model(*args)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise _forward_error(exc, args) from exc
    return int(counter.get_total_flops() // 2)


def activation_bytes(model: nn.Module, example_input, bits: int = 32) -> int:
    """Rough peak activation memory: the largest (input + output) of any leaf module, in bytes.

    This is the working memory a layer-by-layer runtime needs when it frees each tensor after
    its consumer ran (the usual microcontroller estimate); skip connections that keep tensors
    alive longer are not modelled. Values are counted at ``bits`` bits.
    """
    peak = 0

    def numel(x: Any) -> int:
        if torch.is_tensor(x):
            return x.numel()
        if isinstance(x, (tuple, list)):
            return sum(numel(v) for v in x)
        return 0

    def hook(mod, inp, out):
        nonlocal peak
        peak = max(peak, numel(inp) + numel(out))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    args = _as_args(example_input)
    try:
        with _eval_mode(model), torch.inference_mode():
            try:
                out = model(*args)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise _forward_error(exc, args) from exc
    finally:
        for h in handles:
            h.remove()
    peak = max(peak, numel(args) + numel(out))  # a model with no leaf modules
    return int(math.ceil(peak * bits / 8))


# ---------------------------------------------------------------- latency

def measure_latency(model: nn.Module, example_input, threads: int = 1, warmup: int = 5,
                    repeats: int = 30) -> dict:
    """Wall-clock time of one forward pass, in milliseconds.

    Runs ``warmup`` untimed passes, then ``repeats`` timed ones, with ``torch.set_num_threads
    (threads)`` (restored afterwards), eval mode and ``inference_mode``. Returns {median_ms,
    p90_ms, mean_ms, min_ms, threads, repeats}. p90 is the nearest-rank 90th percentile.
    """
    if threads < 1:
        raise KwsError(f"threads: must be >= 1, got {threads}")
    if repeats < 1 or warmup < 0:
        raise KwsError(f"repeats/warmup: need repeats >= 1 and warmup >= 0, got {repeats}/{warmup}")
    args = _as_args(example_input)
    cuda = any(torch.is_tensor(a) and a.is_cuda for a in args)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    old_threads = torch.get_num_threads()
    times = []
    try:
        torch.set_num_threads(threads)
        with _eval_mode(model), torch.inference_mode():
            try:
                for _ in range(warmup):
                    model(*args)
                sync()
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    model(*args)
                    sync()
                    times.append((time.perf_counter() - t0) * 1e3)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise _forward_error(exc, args) from exc
    finally:
        torch.set_num_threads(old_threads)
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_ms": statistics.median(times), "p90_ms": p90,
            "mean_ms": statistics.fmean(times), "min_ms": ordered[0],
            "threads": threads, "repeats": repeats}


# ---------------------------------------------------------------- whole profile

def _device_of(*modules: nn.Module | None) -> torch.device:
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            return t.device
    return torch.device("cpu")


def profile_model(model: nn.Module, frontend: nn.Module | None = None,
                  sample_rate: int = SAMPLE_RATE, clip_samples: int = CLIP_SAMPLES,
                  input_shape: tuple[int, ...] | None = None, latency: bool = True,
                  threads: int = 1, warmup: int = 5, repeats: int = 30) -> dict:
    """Cost of one clip through ``model`` (and ``frontend``), batch 1.

    Args:
        model: the classifier; takes features (or the waveform when there is no front-end).
        frontend: an ``nn.Module`` mapping a waveform (B, S) to the model's features, or None.
        sample_rate, clip_samples: the dummy clip (Hz, samples); 1 s at 16 kHz by default.
        input_shape: the model's input shape (batch included) when there is no front-end and
            the model does not take the raw (1, clip_samples) waveform.
        latency: time the model (False skips it: the latency entries are then None).
        threads, warmup, repeats: passed to ``measure_latency``.

    Returns a JSON-able dict: params (trainable, model), frontend_params, macs (model alone on
    the front-end's output shape), frontend_macs, macs_with_frontend (front-end + model on the
    waveform), size_bytes_fp32 (model params + float buffers), frontend_size_bytes_fp32,
    activation_bytes_fp32 (see activation_bytes), latency_ms / latency_p90_ms (model alone)
    and latency_with_frontend_ms / latency_with_frontend_p90_ms (front-end + model), plus the
    input shapes and settings used (has_frontend, input_shape, waveform_shape, ...).
    Front-end entries are 0 (or equal to the model's) when ``frontend`` is None.
    """
    if clip_samples < 1 or sample_rate < 1:
        raise KwsError(f"clip_samples/sample_rate: must be positive, got {clip_samples}/{sample_rate}")
    device = _device_of(model, frontend)
    gen = torch.Generator().manual_seed(0)
    # Low-level noise, not zeros: log(0) and denormal fast paths would skew timings.
    wave = (0.1 * torch.randn(1, clip_samples, generator=gen)).to(device)
    if frontend is not None:
        if input_shape is not None:
            raise KwsError("input_shape: give either a front-end or an input shape, not both")
        with _eval_mode(frontend), torch.inference_mode():
            try:
                feats = frontend(wave)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise KwsError(f"front-end failed on a (1, {clip_samples}) waveform: {first}") from exc
        feats = feats.clone()  # an inference tensor would be fine too; clone detaches it
        full = nn.Sequential(frontend, model)
    else:
        if input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
            if not shape or any(s < 1 for s in shape):
                raise KwsError(f"input_shape: expected positive sizes, got {input_shape}")
            feats = (0.1 * torch.randn(shape, generator=gen)).to(device)
        else:
            feats = wave
        full = None

    no_lat = {"median_ms": None, "p90_ms": None}
    lat = (measure_latency(model, feats, threads=threads, warmup=warmup, repeats=repeats)
           if latency else no_lat)
    macs = count_macs(model, feats)
    out = {
        "params": count_params(model),
        "frontend_params": count_params(frontend) if frontend is not None else 0,
        "macs": macs,
        "frontend_macs": 0,
        "macs_with_frontend": macs,
        "size_bytes_fp32": size_bytes(model, 32),
        "frontend_size_bytes_fp32": size_bytes(frontend, 32) if frontend is not None else 0,
        "activation_bytes_fp32": activation_bytes(model, feats),
        "latency_ms": lat["median_ms"],
        "latency_p90_ms": lat["p90_ms"],
        "latency_with_frontend_ms": lat["median_ms"],
        "latency_with_frontend_p90_ms": lat["p90_ms"],
        "has_frontend": frontend is not None,
        "input_shape": list(feats.shape),
        "waveform_shape": [1, clip_samples] if (frontend is not None or input_shape is None) else None,
        "sample_rate": int(sample_rate),
        "clip_samples": int(clip_samples),
        "threads": int(threads),
        "device": str(device),
    }
    if full is not None:
        fe_macs = count_macs(frontend, wave)
        full_lat = (measure_latency(full, wave, threads=threads, warmup=warmup, repeats=repeats)
                    if latency else no_lat)
        out.update(frontend_macs=fe_macs, macs_with_frontend=count_macs(full, wave),
                   latency_with_frontend_ms=full_lat["median_ms"],
                   latency_with_frontend_p90_ms=full_lat["p90_ms"])
    return out


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def _human_bytes(n: float) -> str:
    for div, suffix in ((1024 ** 3, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {suffix}"
    return f"{int(n)} B"


def format_profile(d: dict) -> str:
    """A human-readable table of a ``profile_model`` dict."""
    fe = d.get("has_frontend", bool(d.get("frontend_macs") or d.get("frontend_params")))
    secs = d.get("clip_samples", CLIP_SAMPLES) / d.get("sample_rate", SAMPLE_RATE)
    rows = [
        ("parameters (trainable)", f"{d['params']:,}", ""),
        ("weights size (fp32)", _human_bytes(d["size_bytes_fp32"]), "params + float buffers"),
        ("MACs per clip, model", f"{d['macs']:,}", _human(d["macs"])),
    ]
    if fe:
        rows += [
            ("MACs per clip, front-end", f"{d['frontend_macs']:,}", _human(d["frontend_macs"])),
            ("MACs per clip, total", f"{d['macs_with_frontend']:,}", _human(d["macs_with_frontend"])),
            ("front-end parameters", f"{d['frontend_params']:,}", ""),
        ]
    if "activation_bytes_fp32" in d:
        rows.append(("peak activations (fp32)", _human_bytes(d["activation_bytes_fp32"]),
                     "largest layer in+out"))
    thr = d.get("threads", 1)
    timed = d.get("latency_ms") is not None
    if timed:
        rows.append(("latency, model", f"{d['latency_ms']:.3f} ms",
                     f"median, p90 {d['latency_p90_ms']:.3f} ms"))
    if fe and timed:
        rows.append(("latency, front-end + model", f"{d['latency_with_frontend_ms']:.3f} ms",
                     f"median, p90 {d['latency_with_frontend_p90_ms']:.3f} ms"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    head = f"Profile: one {secs:g} s clip, batch 1, input {tuple(d.get('input_shape', ()))}"
    if timed:
        head += f", {thr} thread{'s' if thr != 1 else ''}"
    head += f", {d.get('device', 'cpu')}"
    lines = [head, "-" * max(len(head), w0 + w1 + 4)]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)
