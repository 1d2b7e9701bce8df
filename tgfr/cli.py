"""The ``tgfr`` command: demo, train, eval and bench.

    tgfr demo [--out DIR] [--preset demo|smoke] [key=value ...]
    tgfr train (--config FILE | --preset NAME) --out DIR [--resume] [key=value ...]
    tgfr eval --checkpoint PATH --out DIR [--levels ...] [--modes ...]
    tgfr bench [args ...]

Heavy modules (models, training, benchmarks) are imported only by the command that needs them,
so ``tgfr --help`` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_PRESETS = ("demo", "smoke")
EVAL_MODES = ("image", "flf", "tgfr")


def _override(text: str) -> str:
    """A ``key=value`` config override, checked for shape here and for meaning by the config loader."""
    key, separator, _ = text.partition("=")
    if not separator or not key or key != key.strip():
        raise argparse.ArgumentTypeError(f"config overrides must look like key=value, got {text!r}")
    return text


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return path


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgfr", description="Text-guided face recognition: train, evaluate, benchmark.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="make the embedded data, train both steps and evaluate, end to end")
    demo.add_argument("--out", type=Path, default=Path("tgfr-demo"), help="output directory (default: tgfr-demo)")
    demo.add_argument("--preset", choices=DEMO_PRESETS, default="demo", help="training preset (default: demo)")
    demo.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")

    train = commands.add_parser("train", help="train a model from a config file or preset")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=_existing_file, help="YAML config file")
    source.add_argument("--preset", help="name of a built-in config preset")
    train.add_argument("--out", type=Path, required=True, help="output directory for checkpoints and logs")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    train.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")

    evaluate = commands.add_parser("eval", help="evaluate a trained checkpoint on the test split")
    evaluate.add_argument("--checkpoint", type=_existing_path, required=True, help="checkpoint saved by tgfr train")
    evaluate.add_argument("--out", type=Path, required=True, help="output directory for the report")
    evaluate.add_argument("--levels", nargs="+", metavar="LEVEL", help="probe quality levels (default: all)")
    evaluate.add_argument("--modes", nargs="+", choices=EVAL_MODES, default=list(EVAL_MODES), help="embedding modes")
    evaluate.add_argument("--attention-examples", type=_non_negative_int, default=4, metavar="N",
                          help="word-region attention heat-maps to draw (0: none)")

    # Listed for the help text only: main() hands everything after "bench" to the benchmark's parser.
    commands.add_parser("bench", help="benchmark the op backends (tgfr bench -h for its options)")
    return parser


def _print_report(paths: dict[str, Path]) -> None:
    print(paths["markdown"].read_text())
    print(f"report: {paths['markdown']}  ({paths['json'].name})")
    print(f"ROC:    {paths['roc']}")
    if "attention" in paths:
        print(f"attention maps: {paths['attention']}")


def _run_demo(args) -> int:
    from .demo import run_demo

    paths = run_demo(args.out, preset=args.preset, overrides=args.overrides)
    _print_report(paths)
    return 0


def _run_train(args) -> int:
    from .training import train

    config = str(args.config) if args.config is not None else args.preset
    train(_load_config(config, args.overrides), args.out, resume=args.resume)
    print(f"checkpoints in {args.out}")
    return 0


def _load_config(config_or_preset: str, overrides: list[str]):
    from .training import load_config

    return load_config(config_or_preset, overrides)


def _run_eval(args) -> int:
    from .data import QUALITY_LEVELS
    from .evaluation import evaluate_checkpoint

    levels = args.levels or list(QUALITY_LEVELS)
    unknown = [level for level in levels if level not in QUALITY_LEVELS]
    if unknown:
        raise SystemExit(f"tgfr eval: error: --levels must be among {', '.join(QUALITY_LEVELS)}; got {', '.join(unknown)}")
    paths = evaluate_checkpoint(args.checkpoint, args.out, levels=levels, modes=args.modes,
                                attention_examples=args.attention_examples)
    _print_report(paths)
    return 0


def _run_bench(bench_argv: list[str]) -> int:
    from . import bench

    return bench.main(bench_argv) or 0


COMMANDS = {"demo": _run_demo, "train": _run_train, "eval": _run_eval}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # The benchmark parses its own options, so they pass through untouched.
        return _run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
