"""The ``tgfr`` command: demo, train, eval, study, bench, xmodal and retrieve.

    tgfr demo [--out DIR] [--preset demo|smoke] [key=value ...]
    tgfr train (--config FILE | --preset NAME) --out DIR [--dataset NAME --data-root ROOT] [--skip-bad]
               [--workers N] [--resume] [key=value ...]
    tgfr eval --checkpoint PATH --out DIR [--dataset NAME --data-root ROOT] [--levels LEVEL ...] [--modes MODE ...]
    tgfr study [--preset quick|paper|tiny | --config FILE] [--out DIR] [--seeds N ...]
               [--text-model PATH|minilm|none|auto] [--dataset NAME --data-root ROOT] [key=value ...]
    tgfr bench [args ...]
    tgfr xmodal train [--preset NAME | --config FILE] --out DIR [--dataset celeba-dialog --data-root ROOT]
                      [--skip-bad] [--resume] [key=value ...]
    tgfr xmodal eval --checkpoint RUN [--out DIR]
    tgfr retrieve --checkpoint RUN --text TEXT [--image PATH] [--gallery DIR] [--top-k K] [--out PNG]

``key=value`` overrides set nested config fields (``align.epochs=2``, ``model.dim=64``; for the
study, ``training.align.epochs=2``), values read as YAML; options such as ``--dataset`` are
overrides of their config keys. Every config is read and checked (:mod:`tgfr.config`) before
any data is read: a mistake ends the command with one line naming the key (or option), what it
accepts and what was given, and exit status 2. The benchmark module is imported only by ``tgfr bench``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import ConfigError
from .data import QUALITY_LEVELS
from .data.sources import DATASETS
from .engine import ResumeError
from .evaluation import EVAL_MODES
from .retrieval.config import DATASETS as XMODAL_DATASETS
from .retrieval.config import PRESETS as XMODAL_PRESETS
from .study.presets import PRESETS as STUDY_PRESETS
from .training import PRESETS

DEMO_PRESETS = ("demo", "smoke")


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


def _add_data_arguments(command: argparse.ArgumentParser, prefix: str = "") -> None:
    """--dataset, --data-root and --workers, which set the config keys ``dataset``, ``data_root`` and
    ``num_workers`` (under ``prefix``)."""
    command.add_argument("--dataset", choices=DATASETS, help=f"dataset (config key '{prefix}dataset'; default: "
                                                             "synthetic, the embedded set)")
    command.add_argument("--data-root", metavar="ROOT",
                         help=f"directory of a real dataset (config key '{prefix}data_root')")
    command.add_argument("--workers", type=_non_negative_int, metavar="N",
                         help=f"DataLoader worker processes (config key '{prefix}num_workers'; default: 0)")


def _add_config_source(command: argparse.ArgumentParser, presets, default: str | None) -> None:
    source = command.add_mutually_exclusive_group(required=default is None)
    source.add_argument("--config", type=_existing_file, help="YAML config file (the config.yaml a run wrote runs it "
                                                              "again)")
    source.add_argument("--preset", choices=sorted(presets), default=default,
                        help="built-in config preset" + (f" (default: {default})" if default else ""))


# The options that set config keys: option -> key (of the command's config)
DATA_OPTIONS = {"dataset": "dataset", "data_root": "data_root", "workers": "num_workers", "skip_bad": "skip_bad"}
STUDY_OPTIONS = {"seeds": "seeds", "text_model": "text_model",
                 **{option: f"training.{key}" for option, key in DATA_OPTIONS.items()}}
XMODAL_OPTIONS = {"dataset": "dataset", "data_root": "data_root", "skip_bad": "skip_bad"}


def _option_overrides(args, options: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The options given on the command line as ``key=value`` overrides (applied last: they win over the
    config file and the other overrides), and the option of each key they set."""
    given = {key: getattr(args, option) for option, key in options.items() if getattr(args, option, None) is not None}
    overrides = [f"{key}={json.dumps(value)}" for key, value in given.items()]
    flags = {key: "--" + option.replace("_", "-") for option, key in options.items() if key in given}
    return overrides, flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgfr", description="Text-guided face recognition: train, evaluate, "
                                                              "benchmark.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="make the embedded data, train all steps and evaluate, end to end")
    demo.add_argument("--out", type=Path, default=Path("tgfr-demo"), help="output directory (default: tgfr-demo)")
    demo.add_argument("--preset", choices=DEMO_PRESETS, default="demo", help="training preset (default: demo)")
    demo.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")

    train = commands.add_parser("train", help="train a model from a config file or preset")
    _add_config_source(train, PRESETS, None)
    train.add_argument("--out", type=Path, required=True, help="output directory for the checkpoint")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_data_arguments(train)
    train.add_argument("--skip-bad", action="store_true", default=None,
                       help="skip undecodable images, empty captions and one-photo test identities (listed in "
                            "the run's split.json) instead of stopping")
    train.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")

    evaluate = commands.add_parser("eval", help="evaluate a trained checkpoint on its test split")
    evaluate.add_argument("--checkpoint", type=_existing_path, required=True,
                          help="checkpoint (or training output directory) of tgfr train")
    evaluate.add_argument("--out", type=Path, required=True, help="output directory for the report")
    evaluate.add_argument("--levels", nargs="+", choices=QUALITY_LEVELS, default=list(QUALITY_LEVELS),
                          help="probe quality levels (default: all)")
    evaluate.add_argument("--modes", nargs="+", choices=EVAL_MODES, default=list(EVAL_MODES),
                          help="embedding modes (default: all)")
    evaluate.add_argument("--attention-examples", type=_non_negative_int, default=4, metavar="N",
                          help="photos whose word-region attention is drawn (default: 4; 0: none)")
    _add_data_arguments(evaluate)

    study = commands.add_parser("study", help="the paper's tables (baselines, loss ablation, quality levels) "
                                              "and figures over several seeds")
    _add_config_source(study, STUDY_PRESETS, "quick")
    study.add_argument("--out", type=Path, default=Path("tgfr-study"), help="output directory (default: tgfr-study)")
    study.add_argument("--seeds", nargs="+", type=_non_negative_int, metavar="N",
                       help="seeds (config key 'seeds'; default: the preset's)")
    study.add_argument("--text-model", metavar="PATH",
                       help="transformer caption encoder of the BERT-FLF and CGFR rows (config key 'text_model'): "
                            "a local Hugging Face model directory, 'minilm', 'none' to skip those rows, or 'auto' "
                            "(the default: minilm if installed)")
    _add_data_arguments(study, "training.")
    study.add_argument("overrides", nargs="*", type=_override, metavar="key=value",
                       help="study config overrides (every run's training config: training.KEY=VALUE)")

    xmodal = commands.add_parser("xmodal", help="X-Modal face retrieval from text or text+image queries")
    xmodal_commands = xmodal.add_subparsers(dest="xmodal_command", required=True, metavar="XCOMMAND")
    xtrain = xmodal_commands.add_parser("train", help="train the retrieval model on the embedded data")
    _add_config_source(xtrain, XMODAL_PRESETS, "quick")
    xtrain.add_argument("--out", type=Path, required=True, help="run directory")
    xtrain.add_argument("--resume", action="store_true", help="continue the run in --out")
    xtrain.add_argument("--dataset", choices=XMODAL_DATASETS,
                        help="synthetic (embedded, the default) or celeba-dialog (needs its attribute levels "
                             "for change pairs; config key 'dataset')")
    xtrain.add_argument("--data-root", metavar="ROOT", help="directory of the real dataset (config key 'data_root')")
    xtrain.add_argument("--skip-bad", action="store_true", default=None,
                        help="skip real images without file, identity, caption or levels instead of stopping")
    xtrain.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")
    xeval = xmodal_commands.add_parser("eval", help="R@K table on people unseen in training")
    xeval.add_argument("--checkpoint", type=_existing_path, required=True, help="run directory of xmodal train")
    xeval.add_argument("--out", type=Path, help="output directory (default: RUN/eval)")

    retrieve = commands.add_parser("retrieve", help="rank a face gallery for one text or text+image query")
    retrieve.add_argument("--checkpoint", type=_existing_path, required=True, help="run directory of xmodal train")
    retrieve.add_argument("--text", required=True, help="description, or change description with --image")
    retrieve.add_argument("--image", type=Path, help="reference face: composed query")
    retrieve.add_argument("--gallery", type=Path,
                          help="directory of gallery images (default: the embedded test people)")
    retrieve.add_argument("--top-k", type=int, default=10, help="faces to return (default: 10)")
    retrieve.add_argument("--out", type=Path, help="PNG grid of the query and its top-k")
    retrieve.add_argument("--match", help="identity (or gallery name) of the correct match, framed in the grid")

    # Listed for the help text only: main() hands everything after "bench" to the benchmark's parser.
    commands.add_parser("bench", help="benchmark the op backends (tgfr bench -h for its options)")
    return parser


def _usage_error(command: str, message: str) -> SystemExit:
    print(f"tgfr {command}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def _config_error(command: str, error: ConfigError, flags: dict[str, str] | None = None) -> SystemExit:
    """A config mistake as a usage error; a value given through an option is named by the option."""
    flag = (flags or {}).get(error.key)
    return _usage_error(command, f"{flag} {error.detail}" if flag else str(error))


def _load_config(command: str, load, source, overrides: list[str], flags: dict[str, str] | None = None):
    """``load(source, overrides)``: a checked config; its mistakes end as usage errors."""
    try:
        return load(source, overrides)
    except ConfigError as error:
        raise _config_error(command, error, flags) from error


def _print_report(paths: dict[str, Path]) -> None:
    print(paths["markdown"].read_text())
    print(f"report: {paths['markdown']} and {paths['json'].name}")
    print(f"ROC:    {paths['roc']}")
    if "attention" in paths:
        print(f"word-region attention: {paths['attention']}")


def command_config(args):
    """The checked config a parsed ``demo``, ``train``, ``study`` or ``xmodal train`` command runs with (None for
    the other commands). A mistake ends as the command's usage error, before any work."""
    if args.command in ("demo", "train"):
        from .training import load_config

        if args.command == "demo":
            return _load_config("demo", load_config, args.preset, args.overrides)
        options, flags = _option_overrides(args, DATA_OPTIONS)
        return _load_config("train", load_config, args.config or args.preset, [*args.overrides, *options], flags)
    if args.command == "study":
        from .study import load_study_config

        options, flags = _option_overrides(args, STUDY_OPTIONS)
        return _load_config("study", load_study_config, args.config or args.preset, [*args.overrides, *options],
                            flags)
    if args.command == "xmodal" and args.xmodal_command == "train":
        from .retrieval import load_config

        if args.data_root:
            args.data_root = str(Path(args.data_root).expanduser())
        options, flags = _option_overrides(args, XMODAL_OPTIONS)
        return _load_config("xmodal train", load_config, args.config or args.preset, [*args.overrides, *options],
                            flags)
    return None


def _run_demo(args) -> int:
    from .demo import run_demo

    started = time.perf_counter()
    config = command_config(args)
    paths = run_demo(args.out, config, metadata={"preset": args.preset,
                                                    "overrides": " ".join(args.overrides) or "none"})
    _print_report(paths)
    print(f"total wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _run_train(args) -> int:
    from .data.sources import DataError
    from .training import train

    config = command_config(args)
    try:
        checkpoint = train(config, args.out, resume=args.resume)
    except FileExistsError as error:
        message = f"{args.out} already holds a training run: add --resume to continue it, or choose another --out"
        raise _usage_error("train", message) from error
    except (DataError, ResumeError) as error:  # bad input data or a run that cannot continue, before training
        raise _usage_error("train", str(error)) from error
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"checkpoint: {checkpoint}")
    return 0


def _run_eval(args) -> int:
    from .data.sources import DataError
    from .evaluation import evaluate_checkpoint

    try:
        paths = evaluate_checkpoint(args.checkpoint, args.out, levels=args.levels, modes=args.modes,
                                    attention_examples=args.attention_examples, dataset=args.dataset,
                                    data_root=args.data_root, num_workers=args.workers)
    except DataError as error:
        raise _usage_error("eval", str(error)) from error
    _print_report(paths)
    return 0


def _run_study(args) -> int:
    from .data.sources import DataError
    from .study import run_study

    study = command_config(args)
    flags = _option_overrides(args, STUDY_OPTIONS)[1]
    started = time.perf_counter()
    try:
        paths = run_study(args.out, study, name=str(args.config) if args.config else args.preset)
    except ConfigError as error:  # a run's config, or runs in --out trained with another config
        raise _config_error("study", error, flags) from error
    except DataError as error:  # bad input data, found before training starts
        raise _usage_error("study", str(error)) from error
    print(paths["markdown"].read_text())
    print(f"tables: {paths['markdown']} and {paths['json'].name}; figures: {paths['roc']}, {paths['faces']}")
    print(f"total wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _run_bench(bench_argv: list[str]) -> int:
    from . import bench

    return bench.main(bench_argv) or 0


def _run_xmodal(args) -> int:
    from .retrieval import train_xmodal
    from .retrieval.commands import evaluate_run

    command = f"xmodal {args.xmodal_command}"
    try:
        if args.xmodal_command == "train":
            config = command_config(args)
            checkpoint = train_xmodal(config, args.out, resume=args.resume)
            print(f"checkpoint: {checkpoint}")
        else:
            table, paths = evaluate_run(args.checkpoint, args.out)
            print(table)
            print(f"table: {paths['markdown']} and {paths['json'].name}")
    except FileExistsError as error:
        raise _usage_error(command, f"{args.out} already holds a run: add --resume to continue it, "
                                    f"or choose another --out") from error
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error(command, str(error)) from error
    return 0


def _run_retrieve(args) -> int:
    from .retrieval.commands import retrieve

    try:
        results = retrieve(args.checkpoint, args.text, args.image, args.gallery, args.top_k, args.out, args.match)
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error("retrieve", str(error)) from error
    print("rank  score   identity  name")
    for rank, (identity, name, score) in enumerate(results, start=1):
        mark = "  <- match" if args.match in (identity, name) else ""
        print(f"{rank:>4}  {score:+.4f}  {identity:<8}  {name}{mark}")
    if args.out:
        print(f"grid: {args.out}")
    return 0


COMMANDS = {"demo": _run_demo, "train": _run_train, "eval": _run_eval, "study": _run_study, "xmodal": _run_xmodal,
            "retrieve": _run_retrieve}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # The benchmark parses its own options, so they pass through untouched.
        return _run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
