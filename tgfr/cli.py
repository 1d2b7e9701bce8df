"""The ``tgfr`` command: demo, train, eval, study, bench, xmodal, retrieve and the commands that use a model.

    tgfr demo [--out DIR] [--preset demo|smoke] [key=value ...]
    tgfr train (--config FILE | --preset NAME) --out RUN [--dataset NAME --data-root ROOT] [--skip-bad]
               [--workers N] [--resume] [key=value ...]
    tgfr eval --model RUN [--out DIR] [--dataset NAME --data-root ROOT] [--levels LEVEL ...] [--modes MODE ...]
    tgfr study [--preset quick|paper|tiny | --config FILE] [--out DIR] [--seeds N ...] [--jobs N]
               [--text-model PATH|minilm|none|auto] [--dataset NAME --data-root ROOT] [key=value ...]
    tgfr bench [args ...]
    tgfr xmodal train [--preset NAME | --config FILE] --out RUN [--dataset celeba-dialog --data-root ROOT]
                      [--skip-bad] [--resume] [key=value ...]
    tgfr xmodal eval --model RUN [--out DIR]
    tgfr retrieve --model RUN --text TEXT [--image PATH] [--gallery DIR] [--skip-bad] [--top-k K] [--out PNG]
    tgfr verify A B --model MODEL [--caption-a TEXT --caption-b TEXT] [--mode MODE] [--threshold T]
    tgfr identify --model MODEL --probe PHOTO [--caption TEXT] --gallery DIR [--top-k K]
    tgfr embed --model MODEL --images DIR [--captions FILE.jsonl] [--mode MODE] --out EMB.npy|EMB.safetensors
    tgfr export --model RUN --out DIR
    tgfr serve [--model MODEL] [--xmodal RUN] [--gallery DIR] [--host HOST] [--port 7860]

One vocabulary: ``--model`` is the trained model a command uses (a run directory, or an exported
model where the command can use one; ``--checkpoint`` is its other name) and ``--out`` is what
the command makes: required where it is the product (a run, an export, embeddings), a default
where the command makes a report (``tgfr-demo``, ``tgfr-study``, ``RUN/eval``), optional where
the result is printed anyway (``retrieve``, ``bench``).

``key=value`` overrides set nested config fields (``align.epochs=2``, ``model.dim=64``; for the
study, ``training.align.epochs=2``), values read as YAML; options such as ``--dataset`` are
overrides of their config keys. Every argument, path and config is checked (:mod:`tgfr.arguments`,
:mod:`tgfr.config`) before any work and before any output directory is created: a mistake ends
the command with one line on stderr naming the option or key, what it accepts and what was given,
and exit status 2. Ctrl-C ends any command with one line (where a training stopped, and how to
continue it) and exit status 130. The benchmark module is imported only by ``tgfr bench``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from .arguments import (
    DIRECTORY,
    FILE,
    NEW_DIRECTORY,
    OUTPUT_DIRECTORY,
    OUTPUT_FILE,
    RUN,
    ArgumentParser,
    PathArgument,
    first_rank,
    non_negative_int,
    positive_float,
    positive_int,
)
from .config import ConfigError
from .data import QUALITY_LEVELS
from .data.sources import DATASETS, DataError
from .engine import CHECKPOINT_NAME, CheckpointError, ResumeError, RunExistsError, checkpoint_path
from .inference.embed import EMBEDDING_SUFFIXES
from .models import EMBED_MODES
from .retrieval.config import DATASETS as XMODAL_DATASETS
from .retrieval.config import PRESETS as XMODAL_PRESETS
from .study.presets import PRESETS as STUDY_PRESETS
from .training import PRESETS
from .training.config import CUDA_INDEX, DEVICES

DEMO_PRESETS = ("demo", "smoke")
# the paths the commands take, by what they name (see tgfr.arguments)
CONFIG_FILE = PathArgument(FILE, holds="config")
PHOTO = PathArgument(FILE)
TEXT_FILE = PathArgument(FILE)
FOLDER = PathArgument(DIRECTORY)
TGFR_RUN = PathArgument(RUN, holds="tgfr run")
XMODAL_RUN = PathArgument(RUN, holds="xmodal run")
MODEL = PathArgument(RUN, holds="model")  # a tgfr run or an exported model
NEW_TGFR_RUN = PathArgument(OUTPUT_DIRECTORY, holds="tgfr run")  # or one to continue (--resume)
NEW_XMODAL_RUN = PathArgument(OUTPUT_DIRECTORY, holds="xmodal run")
OUTPUT = PathArgument(OUTPUT_DIRECTORY)
# the errors of a user's input that the commands' code raises: each ends a command as a usage error
USER_ERRORS = (ConfigError, DataError, ResumeError, CheckpointError)


def _override(text: str) -> str:
    """A ``key=value`` config override, checked for shape here and for meaning by the config loader."""
    key, separator, _ = text.partition("=")
    if not separator or not key or key != key.strip():
        raise argparse.ArgumentTypeError(f"config overrides must look like key=value, got {text!r}")
    return text


def _device(text: str) -> str:
    """A torch device the training config also accepts (``auto``, ``cpu``, ``cuda``, ``cuda:N``), present here."""
    import torch

    if text not in DEVICES and not CUDA_INDEX[1](text):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICES)} or {CUDA_INDEX[0]}, got {text!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device")
    return text


def _add_model_argument(command, path_type: PathArgument, help: str, required: bool = True) -> None:
    """``--model`` (also ``--checkpoint``): the trained model the command uses."""
    command.add_argument("--model", "--checkpoint", dest="model", type=path_type, required=required, metavar="RUN"
                         if path_type.holds != "model" else "MODEL", help=help)


def _add_data_arguments(command: argparse.ArgumentParser, prefix: str = "") -> None:
    """--dataset, --data-root and --workers, which set the config keys ``dataset``, ``data_root`` and
    ``num_workers`` (under ``prefix``)."""
    command.add_argument("--dataset", choices=DATASETS, help=f"dataset (config key '{prefix}dataset'; default: "
                                                             "synthetic, the embedded set)")
    command.add_argument("--data-root", type=FOLDER, metavar="ROOT",
                         help=f"directory of a real dataset (config key '{prefix}data_root'; not with the synthetic "
                              "set)")
    command.add_argument("--workers", type=non_negative_int, metavar="N",
                         help=f"DataLoader worker processes (config key '{prefix}num_workers'; default: 0)")


def _add_config_source(command: argparse.ArgumentParser, presets, default: str | None) -> None:
    source = command.add_mutually_exclusive_group(required=default is None)
    source.add_argument("--config", type=CONFIG_FILE, help="YAML config file (the config.yaml a run wrote runs it "
                                                           "again)")
    source.add_argument("--preset", choices=sorted(presets), default=default,
                        help="built-in config preset" + (f" (default: {default})" if default else ""))


# The options that set config keys: option -> key (of the command's config)
DATA_OPTIONS = {"dataset": "dataset", "data_root": "data_root", "workers": "num_workers", "skip_bad": "skip_bad"}
STUDY_OPTIONS = {"seeds": "seeds", "jobs": "jobs", "text_model": "text_model",
                 **{option: f"training.{key}" for option, key in DATA_OPTIONS.items()}}
XMODAL_OPTIONS = {"dataset": "dataset", "data_root": "data_root", "skip_bad": "skip_bad"}


def _option_overrides(args, options: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The options given on the command line as ``key=value`` overrides (applied last: they win over the
    config file and the other overrides), and the option of each key they set."""
    given = {key: getattr(args, option) for option, key in options.items() if getattr(args, option, None) is not None}
    overrides = [f"{key}={json.dumps(str(value) if isinstance(value, Path) else value)}" for key, value in given.items()]
    flags = {key: "--" + option.replace("_", "-") for option, key in options.items() if key in given}
    return overrides, flags


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="tgfr", description="Text-guided face recognition: train, evaluate, "
                                                     "benchmark.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="make the embedded data, train all steps and evaluate, end to end")
    demo.add_argument("--out", type=OUTPUT, default="tgfr-demo",
                      help="output directory: the run in OUT/train and its report (default: tgfr-demo; run again, "
                           "the demo continues where it stopped)")
    demo.add_argument("--preset", choices=DEMO_PRESETS, default="demo", help="training preset (default: demo)")
    demo.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")

    train = commands.add_parser("train", help="train a model from a config file or preset")
    _add_config_source(train, PRESETS, None)
    train.add_argument("--out", type=NEW_TGFR_RUN, required=True,
                       help="run directory to make (config.yaml, checkpoint.pt, log.jsonl, split.json), or with "
                            "--resume the run to continue")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out (more epochs of the step it is in train too; nothing "
                            "else may change)")
    _add_data_arguments(train)
    train.add_argument("--skip-bad", action="store_true", default=None,
                       help="skip undecodable images, empty captions and one-photo test identities (listed in "
                            "the run's split.json) instead of stopping")
    train.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")

    evaluate = commands.add_parser("eval", help="evaluate a trained run on its test split")
    _add_model_argument(evaluate, TGFR_RUN, "run directory (or its checkpoint.pt) of tgfr train")
    evaluate.add_argument("--out", type=OUTPUT, help="report directory (default: RUN/eval)")
    evaluate.add_argument("--levels", nargs="+", choices=QUALITY_LEVELS, default=list(QUALITY_LEVELS),
                          help="probe quality levels (default: all)")
    evaluate.add_argument("--modes", nargs="+", choices=EMBED_MODES,
                          help="embedding modes (default: the run's own: image and the fusions it trained)")
    evaluate.add_argument("--attention-examples", type=non_negative_int, default=4, metavar="N",
                          help="photos whose word-region attention is drawn with the tgfr mode (default: 4; 0: none)")
    _add_data_arguments(evaluate)

    study = commands.add_parser("study", help="the paper's tables (baselines, loss ablation, quality levels) "
                                              "and figures over several seeds")
    _add_config_source(study, STUDY_PRESETS, "quick")
    study.add_argument("--out", type=OUTPUT, default="tgfr-study",
                       help="output directory of the study's runs, tables and figures (default: tgfr-study; run "
                            "again, the study continues where it stopped)")
    study.add_argument("--seeds", nargs="+", type=non_negative_int, metavar="N",
                       help="seeds (config key 'seeds'; default: the preset's; give key=value overrides before "
                            "--seeds)")
    study.add_argument("--jobs", type=non_negative_int, metavar="N",
                       help="seeds trained at once, each in a process of its own (config key 'jobs'; 0: one per "
                            "CPU core; default: the preset's, quick 0, paper and tiny 1)")
    study.add_argument("--text-model", metavar="PATH",
                       help="transformer caption encoder of the BERT-FLF and CGFR rows (config key 'text_model'): "
                            "a local Hugging Face model directory, 'minilm', 'none' to skip those rows, or 'auto' "
                            "(the default: minilm if installed)")
    _add_data_arguments(study, "training.")
    study.add_argument("overrides", nargs="*", type=_override, metavar="key=value",
                       help="study config overrides (every run's training config: training.KEY=VALUE)")

    xmodal = commands.add_parser("xmodal", help="X-Modal face retrieval from text or text+image queries")
    xmodal_commands = xmodal.add_subparsers(dest="xmodal_command", required=True, metavar="XCOMMAND")
    xtrain = xmodal_commands.add_parser("train", help="train the retrieval model")
    _add_config_source(xtrain, XMODAL_PRESETS, "quick")
    xtrain.add_argument("--out", type=NEW_XMODAL_RUN, required=True,
                        help="run directory to make (config.yaml, checkpoint.pt, log.jsonl, caches), or with "
                             "--resume the run to continue")
    xtrain.add_argument("--resume", action="store_true", help="continue the run in --out (with the same config)")
    xtrain.add_argument("--dataset", choices=XMODAL_DATASETS,
                        help="synthetic (embedded, the default) or celeba-dialog (needs its attribute levels "
                             "for change pairs; config key 'dataset')")
    xtrain.add_argument("--data-root", type=FOLDER, metavar="ROOT",
                        help="directory of the real dataset (config key 'data_root'; not with the synthetic set)")
    xtrain.add_argument("--skip-bad", action="store_true", default=None,
                        help="skip real images without file, identity, caption or levels instead of stopping")
    xtrain.add_argument("overrides", nargs="*", type=_override, metavar="key=value", help="config overrides")
    xeval = xmodal_commands.add_parser("eval", help="R@K table on people unseen in training")
    _add_model_argument(xeval, XMODAL_RUN, "run directory of tgfr xmodal train")
    xeval.add_argument("--out", type=OUTPUT, help="report directory (default: RUN/eval)")

    retrieve = commands.add_parser("retrieve", help="rank a face gallery for one text or text+image query")
    _add_model_argument(retrieve, XMODAL_RUN, "run directory of tgfr xmodal train")
    retrieve.add_argument("--text", required=True, help="description, or change description with --image")
    retrieve.add_argument("--image", type=PHOTO, help="reference face: composed query")
    retrieve.add_argument("--gallery", type=FOLDER,
                          help="directory of gallery images (default: the embedded test people)")
    retrieve.add_argument("--skip-bad", action="store_true",
                          help="leave out gallery images that do not decode instead of stopping")
    retrieve.add_argument("--top-k", type=positive_int, default=10, metavar="K", help="faces to return (default: 10)")
    retrieve.add_argument("--out", type=PathArgument(OUTPUT_FILE, suffixes=(".png", ".jpg", ".jpeg")),
                          help="image file to draw the query and its top-k into (default: none; the ranking is "
                               "printed)")
    retrieve.add_argument("--match", help="identity (or gallery name) of the correct match, framed in the grid")

    add_inference_commands(commands)

    # Listed for the help text only: main() hands everything after "bench" to the benchmark's parser.
    commands.add_parser("bench", help="benchmark the op backends (tgfr bench -h for its options)")
    return parser


def _usage_error(command: str, message: str) -> SystemExit:
    if first_rank():
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
    if "thresholds" in paths:
        print(f"verification thresholds (FAR=1e-3, normal quality): {paths['thresholds']}")


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

        options, flags = _option_overrides(args, XMODAL_OPTIONS)
        return _load_config("xmodal train", load_config, args.config or args.preset, [*args.overrides, *options],
                            flags)
    return None


def _require_run(command: str, out: Path) -> None:
    """``--resume`` continues a run: a directory without one (a mistyped ``--out``) is a usage error, not a
    new run."""
    if not (out / CHECKPOINT_NAME).is_file():
        raise _usage_error(command, f"--resume: {out} holds no run to continue (no {CHECKPOINT_NAME}); leave "
                                    "--resume out to start one")


def _report_directory(command: str, args) -> Path:
    """``--out``, or the run's ``eval`` directory when it is not given."""
    if args.out is not None:
        return args.out
    try:
        return OUTPUT(str(checkpoint_path(args.model).parent / "eval"))
    except argparse.ArgumentTypeError as error:
        raise _usage_error(command, f"--out (default RUN/eval): {error}") from None


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
    from .training import train

    config = command_config(args)
    if args.resume:
        _require_run("train", args.out)
    checkpoint = train(config, args.out, resume=args.resume, log=print if first_rank() else None)
    if first_rank():
        print(f"checkpoint: {checkpoint}")
    return 0


def _run_eval(args) -> int:
    from .evaluation import evaluate_checkpoint
    from .inference.export import is_export

    if is_export(args.model):
        raise _usage_error("eval", f"--model {args.model} is an exported model: tgfr eval needs the run directory "
                                   "it was exported from (its test split)")
    out = _report_directory("eval", args)
    try:
        paths = evaluate_checkpoint(args.model, out, levels=args.levels, modes=args.modes,
                                    attention_examples=args.attention_examples, dataset=args.dataset,
                                    data_root=args.data_root, num_workers=args.workers)
    except ConfigError as error:  # a mode the run did not train (a damaged run or its data: USER_ERRORS)
        raise _config_error("eval", error, {"modes": "--modes"}) from error
    _print_report(paths)
    return 0


def _run_study(args) -> int:
    from .study import run_study

    study = command_config(args)
    flags = _option_overrides(args, STUDY_OPTIONS)[1]
    started = time.perf_counter()
    try:
        paths = run_study(args.out, study, name=str(args.config) if args.config else args.preset)
    except ConfigError as error:  # a run's config, or runs in --out trained with another config
        raise _config_error("study", error, flags) from error
    print(paths["markdown"].read_text())
    print(f"tables: {paths['markdown']} and {paths['json'].name}; figures: {paths['roc']}, {paths['faces']}")
    print(f"total wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _run_bench(bench_argv: list[str]) -> int:
    from . import bench

    return bench.main(bench_argv, prog="tgfr bench") or 0


def _run_xmodal(args) -> int:
    from .retrieval import train_xmodal
    from .retrieval.commands import evaluate_run

    command = f"xmodal {args.xmodal_command}"
    if args.xmodal_command == "train":
        config = command_config(args)
        if args.resume:
            _require_run(command, args.out)
    else:
        out = _report_directory(command, args)
    try:
        if args.xmodal_command == "train":
            checkpoint = train_xmodal(config, args.out, resume=args.resume)
            print(f"checkpoint: {checkpoint}")
        else:
            table, paths = evaluate_run(args.model, out)
            print(table)
            print(f"table: {paths['markdown']} and {paths['json'].name}")
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error(command, str(error)) from error
    return 0


def _run_retrieve(args) -> int:
    from .retrieval.commands import retrieve

    try:
        results = retrieve(args.model, args.text, args.image, args.gallery, args.top_k, args.out, args.match,
                           args.skip_bad)
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error("retrieve", str(error)) from error
    print("rank  score   identity  name")
    for rank, (identity, name, score) in enumerate(results, start=1):
        mark = "  <- match" if args.match in (identity, name) else ""
        print(f"{rank:>4}  {score:+.4f}  {identity:<8}  {name}{mark}")
    if args.out:
        print(f"grid: {args.out}")
    return 0


# ---------------------------------------------------------------- using a trained model (tgfr.inference):
# verify, identify, embed, export, serve

MODEL_HELP = "trained model: a run directory of tgfr train (after tgfr eval, for its thresholds) or an exported one"


def add_inference_commands(commands) -> None:
    def model_arguments(command, required: bool = True):
        _add_model_argument(command, MODEL, MODEL_HELP, required)
        command.add_argument("--device", type=_device, default="auto",
                             help="cpu, cuda, cuda:N or auto (default: auto)")

    def mode_argument(command):
        command.add_argument("--mode", choices=EMBED_MODES,
                             help="embedding mode, one the model trained (default: tgfr with descriptions, image "
                                  "without)")

    verify = commands.add_parser("verify", help="do two photos show the same person? (score and decision)")
    verify.add_argument("image_a", type=PHOTO, metavar="A", help="first photo")
    verify.add_argument("image_b", type=PHOTO, metavar="B", help="second photo")
    model_arguments(verify)
    verify.add_argument("--caption-a", metavar="TEXT", help="description of photo A")
    verify.add_argument("--caption-b", metavar="TEXT", help="description of photo B")
    mode_argument(verify)
    verify.add_argument("--threshold", type=float, help="accept at this score (default: the model's, FAR=1e-3)")

    identify = commands.add_parser("identify", help="rank a gallery folder's faces for one probe photo")
    model_arguments(identify)
    identify.add_argument("--probe", type=PHOTO, required=True, metavar="PHOTO", help="probe photo")
    identify.add_argument("--caption", metavar="TEXT", help="description of the probe (the gallery's photos are "
                                                            "described in DIR/captions.jsonl)")
    identify.add_argument("--gallery", type=FOLDER, required=True, metavar="DIR",
                          help="folder of faces, one subfolder per identity (or identity = file name)")
    identify.add_argument("--top-k", type=positive_int, default=5, metavar="K", help="faces to list (default: 5)")
    mode_argument(identify)

    embed = commands.add_parser("embed", help="embeddings of a folder of photos (.npy or .safetensors)")
    model_arguments(embed)
    embed.add_argument("--images", type=FOLDER, required=True, metavar="DIR", help="folder of photos")
    embed.add_argument("--captions", type=TEXT_FILE, metavar="FILE.jsonl",
                       help='descriptions, one {"image": "path/below/DIR", "caption": "..."} per line')
    mode_argument(embed)
    embed.add_argument("--out", type=PathArgument(OUTPUT_FILE, suffixes=EMBEDDING_SUFFIXES), required=True,
                       help="output file: .npy (names in .json beside it) or .safetensors")
    embed.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="photos per batch")

    export = commands.add_parser("export", help="write a model as safetensors + config.json + model card")
    model_arguments(export)
    export.add_argument("--out", type=PathArgument(NEW_DIRECTORY), required=True,
                        help="new (or empty) directory to write the model into")

    serve = commands.add_parser("serve", help="local web app: verify, identify, search")
    model_arguments(serve, required=False)
    serve.add_argument("--xmodal", type=XMODAL_RUN, metavar="RUN", help="X-Modal run directory (Search tab)")
    serve.add_argument("--gallery", type=FOLDER, metavar="DIR", help="folder of faces for Identify (and Search)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                                                           "computer only)")
    serve.add_argument("--port", type=non_negative_int, default=7860, help="port (default: 7860; 0: any free)")
    serve.add_argument("--max-upload-mb", type=positive_float, default=10.0, metavar="MB",
                       help="largest photo accepted (default: 10)")


def _load_model(command: str, args):
    from .inference import load

    try:
        return load(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error(command, str(error)) from error


def _run_verify(args) -> int:
    model = _load_model("verify", args)
    try:
        result = model.verify(args.image_a, args.image_b, args.caption_a, args.caption_b, args.mode, args.threshold)
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error("verify", str(error)) from error
    decision = {True: "same person", False: "different people"}.get(
        result.same, "none: the model has no threshold for this mode (run tgfr eval on the run, or give --threshold)")
    threshold = "none" if result.threshold is None else f"{result.threshold:.4f}"
    print(f"score: {result.score:.4f}\nthreshold: {threshold}\nmode: {result.mode}\ndecision: {decision}")
    return 0


def _run_identify(args) -> int:
    model = _load_model("identify", args)
    try:
        matches = model.identify(args.probe, args.gallery, args.caption, args.top_k, args.mode)
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error("identify", str(error)) from error
    print("rank  score    identity  name")
    for match in matches:
        print(f"{match.rank:>4}  {match.score:+.4f}  {match.identity:<8}  {match.name}")
    return 0


def _run_embed(args) -> int:
    from .inference.embed import embed_folder, write_embeddings

    model = _load_model("embed", args)
    try:
        embeddings, names, mode = embed_folder(model, args.images, args.captions, args.mode, args.batch_size)
    except (FileNotFoundError, ValueError) as error:
        raise _usage_error("embed", str(error)) from error
    written = write_embeddings(args.out, embeddings, names, mode, str(args.model))
    print(f"{len(names)} embeddings of {embeddings.shape[1]} dimensions (mode {mode}): "
          + " and ".join(map(str, written)))
    return 0


def _run_export(args) -> int:
    from .inference import export

    model = _load_model("export", args)
    try:
        out = export(model, args.out, command=shlex.join(["tgfr", "export", "--model", str(args.model),
                                                          "--out", str(args.out)]))
    except FileExistsError as error:
        raise _usage_error("export", str(error)) from error
    print(f"model: {out} (model.safetensors, config.json, thresholds.json, README.md)")
    return 0


def _run_serve(args) -> int:
    try:
        from .inference.serve import create_app, open_gallery, serve
    except ImportError as error:
        raise _usage_error("serve", f"tgfr serve needs the web packages: pip install 'tgfr[serve]' ({error})") \
            from error
    from .retrieval import load as load_retriever

    if args.model is None and args.xmodal is None:
        raise _usage_error("serve", "give --model (Verify, Identify), --xmodal (Search) or both")
    recognizer = _load_model("serve", args) if args.model is not None else None
    gallery, gallery_error = open_gallery(recognizer, args.gallery) if recognizer and args.gallery else (None, None)
    if gallery_error:
        print(f"tgfr serve: {gallery_error}", file=sys.stderr)
    retriever = None
    if args.xmodal is not None:
        try:
            retriever = load_retriever(args.xmodal, args.gallery)
        except (FileNotFoundError, ValueError) as error:
            raise _usage_error("serve", f"--xmodal: {error}") from error
        try:
            retriever.index  # noqa: B018  (embedded once, before the first query)
        except (OSError, ValueError) as error:  # the Search tab says it at each query
            print(f"tgfr serve: the X-Modal gallery cannot be used: {error}", file=sys.stderr)
    app = create_app(recognizer, retriever, gallery, gallery_error, int(args.max_upload_mb * 2**20))
    serve(app, args.host, args.port, announce=lambda line: print(line, flush=True))
    return 0


COMMANDS = {"demo": _run_demo, "train": _run_train, "eval": _run_eval, "study": _run_study, "xmodal": _run_xmodal,
            "retrieve": _run_retrieve, "verify": _run_verify, "identify": _run_identify, "embed": _run_embed,
            "export": _run_export, "serve": _run_serve}


def _interrupted(command: str, interrupt: KeyboardInterrupt) -> str:
    """The one line Ctrl-C leaves: where a training stopped, and how to continue it."""
    where = getattr(interrupt, "where", None)  # tgfr.engine.TrainingInterrupted
    line = "interrupted" + (f" {where}" if where else "")
    if command in ("demo", "study"):  # they continue where they stopped
        return f"{line}; run the same command again to continue"
    if where and command in ("train", "xmodal train"):
        return f"{line}; " + ("rerun with --resume" if interrupt.saved else
                              "no epoch had finished: run the command again")
    return line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv[:1] == ["bench"] else ""
    try:
        if command == "bench":
            # The benchmark parses its own options, so they pass through untouched.
            return _run_bench(argv[1:])
        args = build_parser().parse_args(argv)
        command = args.command + (f" {args.xmodal_command}" if args.command == "xmodal" else "")
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, in any command: one line, exit status 130
        if first_rank():
            print(f"{' '.join(['tgfr', command]).strip()}: {_interrupted(command, interrupt)}", file=sys.stderr)
        raise SystemExit(130) from None
    except RunExistsError as error:
        raise _usage_error(command, f"{error.out_dir} already holds a run: add --resume to continue it, or choose "
                                    "another --out") from None
    except USER_ERRORS as error:
        raise _usage_error(command, str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
