"""The one ``kwskit`` command. Each sub-command parses its arguments here and calls a function
in the module that owns the work; heavy imports happen only inside the chosen sub-command.
"""

from __future__ import annotations

import argparse
import sys

from kwskit.errors import KwsError


def _data_check(a):
    from kwskit.data.check import check_dataset, print_report

    report = check_dataset(a.dir, sample_rate=a.sample_rate, labels=a.labels)
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

    words = a.words.split(",") if a.words else list(DEFAULT_WORDS)
    summary = synthesize_dataset(a.out, words=words, per_word=a.per_word, seed=a.seed,
                                 workers=a.workers)
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kwskit", description="Small-footprint keyword spotting toolkit.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="prepare and check data sets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    c = dsub.add_parser("check", help="list every problem in a Speech Commands style data set")
    c.add_argument("dir")
    c.add_argument("--labels", default=None, help="label set to check word coverage for (e.g. mini10)")
    c.add_argument("--sample-rate", type=int, default=16000)
    c.add_argument("--limit", type=int, default=20, help="problems shown per kind (0 = all)")
    c.set_defaults(func=_data_check)

    d = dsub.add_parser("download", help="fetch and extract the official Speech Commands archives")
    d.add_argument("out")
    d.add_argument("--version", choices=["v1", "v2"], default="v2")
    d.add_argument("--url", default=None, help="train archive URL (default: the official one)")
    d.add_argument("--test-url", default=None, help="test archive URL ('none' to skip)")
    d.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files after extracting")
    d.set_defaults(func=_data_download)

    s = dsub.add_parser("synth", help="synthesize a spoken-word data set with eSpeak NG")
    s.add_argument("out")
    s.add_argument("--words", default=None, help="comma-separated words (default: mini10 words + unknowns)")
    s.add_argument("--per-word", type=int, default=None, help="clips per word")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    s.set_defaults(func=_data_synth)

    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KwsError as exc:
        print(f"kwskit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kwskit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
