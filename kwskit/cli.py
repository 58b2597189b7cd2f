"""The one ``kwskit`` command. Each sub-command parses its arguments here and calls a function
in the module that owns the work; heavy imports happen only inside the chosen sub-command.
"""

from __future__ import annotations

import argparse
import os
import sys

from kwskit.errors import KwsError


def _data_check(a):
    from kwskit.data.check import check_dataset, print_report

    report = check_dataset(a.dir, sample_rate=a.sample_rate, labels=a.labels, min_length=a.min_length)
    print_report(report, limit=a.limit)
    return 1 if report.errors else 0


def _data_download(a):
    from kwskit.data.download import download_speech_commands

    out = download_speech_commands(a.out, version=a.version, url=a.url, test_url=a.test_url,
                                   keep_archives=a.keep_archives)
    print(f"Speech Commands {a.version} ready in {out}")
    return 0


def _data_synth(a):
    from kwskit.data.synth import DEFAULT_WORDS, synthesize_dataset

    if a.words == "unknown-vocab":  # the built-in non-keyword vocabulary (kwskit.data.vocab)
        from kwskit.data.vocab import UNKNOWN_VOCAB

        words = list(UNKNOWN_VOCAB)
    else:
        words = a.words.split(",") if a.words else list(DEFAULT_WORDS)
    summary = synthesize_dataset(a.out, words=words, per_word=a.per_word, seed=a.seed,
                                 workers=a.workers)
    print(summary)
    return 0


def _train(a):
    from kwskit.config import budget_overrides, load_config
    from kwskit.train.loop import fit

    if a.resume:
        if a.config or a.set or a.budget_epochs:
            raise KwsError("--resume continues a run with its own saved config; "
                           "drop --config/--set/--budget-epochs")
        out = a.resume
        cfg = None
    else:
        overrides = list(a.set or [])
        if a.budget_epochs:  # before --set, so an explicit --set still wins
            overrides[:0] = budget_overrides(load_config(a.config), a.budget_epochs)
        if a.labels:
            overrides.append(f"data.labels={a.labels}")
        if a.device:
            overrides.append(f"train.device={a.device}")
        cfg = load_config(a.config, overrides)
        out = a.out or _default_run_dir(cfg)
    result = fit(cfg, out, data=a.data, resume=bool(a.resume), tracking_uri=a.tracking_uri,
                 track=not a.no_mlflow)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    best = result["best"] or {}
    if best.get("val_acc") is not None:
        print(f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']}")
    print(f"run: {result['run']}")
    return 0


def _default_run_dir(cfg) -> str:
    import time

    return f"runs/{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _eval(a):
    import json

    from kwskit.eval.evaluate import evaluate_run, format_metrics

    metrics, report = evaluate_run(a.run, a.data, split=a.split, which=a.checkpoint)
    print(format_metrics(metrics))
    print(f"report: {report}")
    if a.json:
        keep = ("accuracy", "n", "per_class", "macro_f1", "far_frr_area", "split", "data")
        print(json.dumps({k: metrics[k] for k in keep if k in metrics}))
    return 0


def _info(a):
    import json

    from kwskit.eval.profile import format_profile
    from kwskit.eval.info import profile_target

    prof = profile_target(a.target, num_classes=a.num_classes, latency=not a.no_latency)
    name = a.pretrained.get("target")
    if a.json:
        if name:
            from kwskit.pretrained import card

            prof["card"] = card(name)
        print(json.dumps(prof))
    else:
        if name:
            from kwskit.pretrained import format_card

            print(format_card(name) + "\n")
        print(format_profile(prof))
    return 0


def _plot(a):
    from kwskit.eval.pareto import pareto

    for p in pareto(a.runs, a.out):
        print(f"{p['name']:28s} val acc {100 * p['accuracy']:6.2f}%  MACs {p['macs'] / 1e6:8.2f} M  "
              f"params {p['param_bytes'] / 4:10,.0f}")
    print(f"plot: {a.out}")
    return 0


def _plot_det(a):
    import json
    from pathlib import Path

    from kwskit.eval.detection import frr_at_fa
    from kwskit.eval.plots import plot_det_compare

    paths = [Path(r) / "eval-stream" / "det.json" if Path(r).is_dir() else Path(r) for r in a.results]
    names = [n.strip() for n in a.names.split(",")] if a.names else \
        [p.parent.parent.name if p.parent.name == "eval-stream" else p.stem for p in paths]
    if len(names) != len(paths):
        raise KwsError(f"--names: {len(names)} names for {len(paths)} results")
    results = {}
    for name, p in zip(names, paths):
        try:
            res = json.loads(p.read_text())
            res["curves"]["overall"], res["duration_s"]  # noqa: B018 -- the keys a DET needs
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KwsError(f"{p}: not an eval-stream det.json ({type(exc).__name__}: {exc})") from None
        results[name] = res
        row = "  ".join(f"{g:g}/h {_pct(frr_at_fa(res['curves']['overall'], res['thresholds'], g)['frr'])}"
                        for g in (0.5, 1, 5, 10))
        print(f"{name:24s} misses at {row}")
    plot_det_compare(results, a.out)
    print(f"plot: {a.out}")
    return 0


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _export(a):
    from pathlib import Path

    from kwskit.export.onnx import default_export_path, export_clip, export_stream
    from kwskit.models.io import load_model, resolve_checkpoint

    if a.format != "onnx":
        raise KwsError(f"--format: only onnx is supported, got {a.format!r}")
    pipeline, cfg, labels = load_model(a.run, a.checkpoint)
    name = cfg.model.name
    out = Path(a.out) if a.out else \
        default_export_path(resolve_checkpoint(a.run, a.checkpoint), name, a.stream)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.stream:
        from kwskit.stream.calibrate import detector_settings

        card = export_stream(pipeline, labels, out, chunk_ms=a.chunk_ms, window_s=a.window_s,
                             name=name, calibration=detector_settings(a.run))
        print(f"{out}: streaming {name}, {card['chunk_samples']} samples per call, "
              f"{len(card['states'])} state tensors, delay {card['delay_s'] * 1e3:.0f} ms")
    else:
        export_clip(pipeline, labels, out, clip_samples=cfg.data.clip_samples, name=name)
        print(f"{out}: clip {name}, (batch, {cfg.data.clip_samples}) audio -> probs")
    print(f"size {out.stat().st_size / 1e3:.1f} kB; labels: {', '.join(labels)}")
    return 0


def _serve(a):
    from kwskit.web.serve import serve

    return serve(a.model, port=a.port, threshold=a.threshold, checkpoint=a.checkpoint,
                 chunk_ms=a.chunk_ms)


def _models(a):
    from kwskit.models.registry import list_models, model_info

    if a.pretrained_list:
        from kwskit.pretrained import listing

        print("\n".join(listing()))
        return 0
    for name in list_models():
        info = model_info(name)
        print(f"{name:20s} {info.get('family', ''):14s} {info.get('paper', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kwskit", description="Small-footprint keyword spotting toolkit. Wherever a command "
        "takes a run, pretrained:NAME names a model shipped with kwskit (kwskit models --pretrained).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="prepare and check data sets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    c = dsub.add_parser("check", help="list every problem in a Speech Commands style data set")
    c.add_argument("dir", help="data set folder (Speech Commands layout)")
    c.add_argument("--labels", default=None, help="label set to check word coverage for (e.g. mini10)")
    c.add_argument("--sample-rate", type=int, default=16000, help="rate kwskit works at (Hz)")
    c.add_argument("--limit", type=int, default=20, help="problems shown per kind (0 = all)")
    c.add_argument("--min-length", type=float, default=None, metavar="FRACTION",
                   help="clips shorter than this fraction of the 1-s clip are errors; 0 = off (default: 0.1)")
    c.set_defaults(func=_data_check)

    d = dsub.add_parser("download", help="fetch and extract the official Speech Commands archives")
    d.add_argument("out", help="folder to download and extract into")
    d.add_argument("--version", choices=["v1", "v2"], default="v2", help="Speech Commands version")
    d.add_argument("--url", default=None, help="train archive URL (default: the official one)")
    d.add_argument("--test-url", default=None, help="test archive URL ('none' to skip)")
    d.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files after extracting")
    d.set_defaults(func=_data_download)

    s = dsub.add_parser("synth", help="synthesize a spoken-word data set with eSpeak NG")
    s.add_argument("out", help="folder to write the data set into")
    s.add_argument("--words", default=None,
                   help="comma-separated words, or unknown-vocab (186 non-keyword words and "
                   "near-misses, for _unknown_ examples); default: mini10 words + unknowns")
    s.add_argument("--per-word", type=int, default=None, help="clips per word (default: 300)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    s.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    s.set_defaults(func=_data_synth)

    t = sub.add_parser("train", help="train a keyword spotter")
    t.add_argument("--config", help="YAML recipe (see configs/); default: built-in defaults")
    t.add_argument("--data", help="data set folder (default: the built-in synthetic set)")
    t.add_argument("--labels", help="label set: mini10, gsc12, gsc35 or comma-separated words")
    t.add_argument("--out", help="run directory (default: runs/<model>-<time>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    t.add_argument("--resume", metavar="RUN", help="continue a stopped run where it left off")
    t.add_argument("--budget-epochs", type=int, metavar="E",
                   help="train E epochs with the recipe's lr schedule compressed into them")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--tracking-uri", help="MLflow tracking URI (default: a local store in the run)")
    t.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a trained model on a data set")
    e.add_argument("run", help="run directory, checkpoint or exported clip .onnx (a quantized "
                   "run: its quantized ONNX model)")
    e.add_argument("--data", required=True, help="data set folder (train layout or official test archive)")
    e.add_argument("--split", default="test", choices=["test", "validation", "train", "all"],
                   help="split of a training-layout data set")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    e.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    e.set_defaults(func=_eval)

    i = sub.add_parser("info", help="params, MACs, size and CPU latency of a model or run")
    i.add_argument("target", help="registered model name, run directory, checkpoint or "
                   "pretrained:NAME (prints its model card too)")
    i.add_argument("--num-classes", type=int, default=12, help="classes, for a model name")
    i.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    i.set_defaults(func=_info)

    from kwskit.stream.cli import add_parsers as add_stream_parsers

    add_stream_parsers(sub)  # stream, eval-stream

    from kwskit.compress.cli import add_parsers as add_compress_parsers

    add_compress_parsers(sub)  # distill, quantize, prune, approx, nas

    x = sub.add_parser("export", help="export a trained model (ONNX) to run without PyTorch")
    x.add_argument("run", help="run directory or checkpoint")
    x.add_argument("--format", default="onnx", choices=["onnx"], help="file format")
    x.add_argument("--stream", action="store_true",
                   help="the streaming model (audio chunk + states in, probs + states out)")
    x.add_argument("--chunk-ms", type=float, default=10.0,
                   help="--stream: audio per call, rounded to whole output frames")
    x.add_argument("--window-s", type=float, default=1.0, help="--stream: classifier window (s)")
    x.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint")
    x.add_argument("--out", help="ONNX file to write (default: RUN/export/MODEL[-stream].onnx)")
    x.set_defaults(func=_export)

    w = sub.add_parser("serve", help="the live keyword-spotting page for a browser (onnxruntime-web)")
    w.add_argument("model", metavar="RUN_OR_MODEL",
                   help="run directory or checkpoint (exported first), or a streaming .onnx model")
    w.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free one)")
    w.add_argument("--threshold", default=None,
                   help="the page's initial thresholds: probability, or keyword=p,... as in "
                   "kwskit stream; default: the model's calibration, else 0.5")
    w.add_argument("--chunk-ms", type=float, default=10.0,
                   help="a run: audio per model call of the export, rounded to whole frames")
    w.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="a run: which checkpoint")
    w.set_defaults(func=_serve)

    pl = sub.add_parser("plot", help="plots across runs")
    psub = pl.add_subparsers(dest="plot_command", required=True, metavar="KIND")
    pp = psub.add_parser("pareto", help="accuracy against MACs and parameter bytes (Metric-FLOPs / Metric-Memory)")
    pp.add_argument("runs", nargs="+", help="run directories")
    pp.add_argument("--out", default="pareto.png", help="PNG to write")
    pp.set_defaults(func=_plot)
    pd = psub.add_parser("det", help="overall DET curves of several eval-stream results on one plot")
    pd.add_argument("results", nargs="+",
                    help="det.json files written by eval-stream, or runs (RUN/eval-stream/det.json)")
    pd.add_argument("--names", help="comma-separated legend names (default: the run folders)")
    pd.add_argument("--out", default="det.png", help="PNG to write")
    pd.set_defaults(func=_plot_det)

    m = sub.add_parser("models", help="list the registered models (or the pretrained ones)")
    m.add_argument("--pretrained", dest="pretrained_list", action="store_true",
                   help="list the pretrained models shipped with kwskit (use as pretrained:NAME)")
    m.set_defaults(func=_models)

    _finish_help(p)
    return p


# One example per command, shown at the end of its --help.
EXAMPLES = {
    "data check": "kwskit data check data/gsc --labels mini10",
    "data download": "kwskit data download data/gsc --version v2",
    "data synth": "kwskit data synth data/my --words hey,robot,stop --per-word 500",
    "train": "kwskit train --config configs/bcresnet1.yaml --data data/gsc --labels mini10",
    "eval": "kwskit eval runs/bcresnet1-20261203 --data data/gsc/test",
    "info": "kwskit info bcresnet1",
    "stream": "kwskit stream runs/bcresnet1-20261203 meeting.wav --plot meeting.png",
    "eval-stream": "kwskit eval-stream runs/bcresnet1-20261203 --minutes 30",
    "calibrate": "kwskit calibrate runs/bcresnet1-20261203 --target-fa-per-hour 1",
    "plot pareto": "kwskit plot pareto runs/* --out pareto.png",
    "plot det": "kwskit plot det runs/old runs/new --names old,new --out det.png",
    "distill": "kwskit distill --teacher runs/crnn-teacher --config configs/crnn.yaml "
               "--set model.args.hidden=16 --out runs/crnn-kd",
    "quantize": "kwskit quantize runs/bcresnet1-20261203 --mode int8 --out runs/bc1-int8",
    "prune": "kwskit prune runs/dscnn-s --sparsity 0.5 --finetune-epochs 3 --out runs/dscnn-s-p50",
    "nas": "kwskit nas --data DIR --labels mini10 --target-macs 2.5M --out runs/nas-2.5m",
    "approx": "kwskit approx runs/sincconv --cordic-iters 12 --log-segments 4 --out runs/sincconv-hw",
    "models": "kwskit models --pretrained",
    "export": "kwskit export runs/bcresnet1-20261203 --stream --chunk-ms 10",
    "serve": "kwskit serve runs/bcresnet1-20261203 --port 8000",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) and keeps the example's
    line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings
                or any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            return text
        return f"{text} (default: %(default)s)"


def _finish_help(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give every (sub-)parser the formatter and its example, recursively."""
    parser.formatter_class = HelpFormatter
    if path in EXAMPLES:
        parser.epilog = f"example:\n  {EXAMPLES[path]}"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _finish_help(child, f"{path} {name}".strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from kwskit.pretrained import resolve_args

        resolve_args(args)  # pretrained:NAME -> its run directory, for every command
        return int(args.func(args) or 0)
    except KwsError as exc:
        print(f"kwskit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kwskit: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # a lean install (the runtime only) lacks the extra
        extra = _EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"kwskit: error: `kwskit {args.command}` needs {exc.name}, which is not installed: "
              f"pip install 'kwskit[{extra}]'", file=sys.stderr)
        return 2


# The optional packages a command may need, and the extra that installs each.
_EXTRA_OF = {"torch": "train", "matplotlib": "train", "mlflow": "train", "espeakng_loader": "train",
             "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "runtime",
             "sounddevice": "mic"}


if __name__ == "__main__":
    sys.exit(main())
