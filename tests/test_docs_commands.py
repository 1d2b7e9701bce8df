"""The commands, examples and links in README.md and docs/*.md keep working.

Every command line of a shell block (```bash, ```sh, ```console, or an unmarked block of ``tgfr`` lines) that runs
``tgfr`` (also as ``.venv/bin/tgfr``, ``python -m tgfr`` or ``torchrun ... -m tgfr``), a ``tgfr.*`` module or a
script of the repository is parsed by that program's own argument parser, up to ``parse_args`` and no further:
argument names, choices and required arguments are checked, paths need not exist. The ``key=value`` overrides of
``tgfr`` commands go through the config loaders, which reject unknown keys. Python blocks compile and the README's
run; YAML blocks load as training configs; relative links and the repository paths named in inline code exist.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
# the first word of a line that makes an unmarked block a shell block
TGFR_LINE = re.compile(r"^(\$ )?(\S*/)?(tgfr |torchrun .*-m tgfr |python3? -m tgfr )")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class DocCommandError(Exception):
    """A documented command that its program would reject."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the block's first content line
    language: str
    text: str


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    kind: str  # "tgfr", "module" or "script"
    target: str  # the module or script; "tgfr" for the command line
    argv: tuple[str, ...]

    def __str__(self):
        return f"{self.where}: {shlex.join([self.target, *self.argv])}"


def code_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced code blocks of a Markdown file."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks, opened = [], None
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence and opened is None:
            opened = (number, fence.group(1), fence.group(2).lower(), [])
        elif opened is not None and line.strip().startswith(opened[1]) and not line.strip().strip(opened[1][0]):
            blocks.append(Block(path, opened[0] + 1, opened[2], "\n".join(opened[3])))
            opened = None
        elif opened is not None:
            opened[3].append(line)
    return blocks


def is_shell(block: Block) -> bool:
    if block.language in SHELL_LANGUAGES:
        return True
    return block.language == "" and any(TGFR_LINE.match(line.strip()) for line in block.text.splitlines())


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, text) of each command line: continuations joined, prompts stripped, console output dropped."""
    result, pending, start = [], "", None
    for offset, line in enumerate(block.text.splitlines()):
        if start is None:
            start = block.line + offset
            if block.language == "console" and not line.startswith("$ "):
                start = None
                continue  # output, not a command
            line = line[2:] if line.startswith("$ ") else line
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        result.append((start, pending + line))
        pending, start = "", None
    return result


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line: comments dropped, split at ``&&``, ``||``, ``;``, ``|`` and ``&``; a
    ``for VAR in ...; do BODY; done`` loop gives its body once per value, with ``$VAR`` expanded."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return _split(list(lexer))


def _split(tokens: list[str]) -> list[list[str]]:
    if tokens[:1] == ["for"]:
        variable, do = tokens[1], tokens.index("do")
        values = [t for t in tokens[3:do] if t != ";"]
        body = tokens[do + 1:len(tokens) - tokens[::-1].index("done") - 1]
        reference = re.compile(rf"\$(\{{{re.escape(variable)}\}}|{re.escape(variable)}\b)")
        return [c for value in values for c in _split([reference.sub(lambda _: value, t) for t in body])]
    commands, current = [], []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    return commands


def program_call(words: list[str]) -> tuple[str, str, list[str]] | None:
    """(kind, target, argv) of a simple command that runs tgfr, a tgfr module or a repository script, else None."""
    while words and ASSIGNMENT.match(words[0]):
        words = words[1:]  # VAR=value prefixes
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    if program == "tgfr":
        return "tgfr", "tgfr", words[1:]
    if program == "torchrun" and "-m" in words:
        at = words.index("-m")
        module, argv = words[at + 1], words[at + 2:]
    elif re.fullmatch(r"python[0-9.]*", program) and len(words) > 1:
        if words[1] == "-m":
            module, argv = words[2], words[3:]
        elif words[1].endswith(".py"):
            return "script", words[1], words[2:]
        else:
            return None
    else:
        return None
    if module == "tgfr":
        return "tgfr", "tgfr", argv
    return ("module", module, argv) if module.startswith("tgfr.") else None


def commands_of(block: Block) -> list[Command]:
    if not is_shell(block):
        return []
    found = []
    for number, line in logical_lines(block):
        for words in simple_commands(line):
            call = program_call(words)
            if call is not None:
                where = f"{block.path.relative_to(ROOT) if block.path.is_absolute() else block.path}:{number}"
                found.append(Command(where, call[0], call[1], tuple(call[2])))
    return found


# --- parsing a documented command with its program's own parser, and no further ---

class _Parsed(BaseException):  # not caught by an entry point's `except Exception`
    def __init__(self, namespace):
        self.namespace = namespace


def _accepts(convert, text: str) -> bool:
    try:
        convert(text)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def _accept_missing_paths(parser: argparse.ArgumentParser) -> None:
    """Replace every argument converter that accepts an existing path but rejects a missing one with ``Path``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                _accept_missing_paths(subparser)
        elif callable(action.type) and action.type is not Path:
            exists = _accepts(action.type, str(ROOT)) or _accepts(action.type, __file__)
            if exists and not _accepts(action.type, str(ROOT / "no-such-path-of-the-docs-test")):
                action.type = Path


def parse_only(run, argv: list[str]) -> argparse.Namespace | None:
    """Run a program's entry point until its first ``parse_args`` returns, and return what that parsed (None
    for ``--help``); a parser error raises ``DocCommandError``. Path arguments need not exist."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        _accept_missing_paths(self)
        raise _Parsed(original(self, args, namespace))

    def error(self, message):
        raise DocCommandError(f"{self.prog}: error: {message}")

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args), \
            mock.patch.object(argparse.ArgumentParser, "error", error), \
            mock.patch.object(sys, "argv", argv), mock.patch.dict(os.environ):
        try:
            run()
        except _Parsed as parsed:
            return parsed.namespace
        except SystemExit as exit_:
            if exit_.code in (0, None):  # --help
                return None
            raise DocCommandError(f"{shlex.join(argv)}: exit status {exit_.code} before parsing") from exit_
    raise DocCommandError(f"{shlex.join(argv)} returned without parsing any arguments")


def check_tgfr_command(argv: list[str]) -> None:
    """``tgfr ARGV`` as the command line would take it: parsed by ``tgfr.cli.main``'s parsers (``tgfr bench``'s
    own included), then resolved into the config the command would run with (its ``key=value`` overrides and the
    options that set config keys included). The one place that knows the command line."""
    from tgfr.cli import command_config, main

    args = parse_only(lambda: main(argv), ["tgfr", *argv])
    if getattr(args, "command", None) is None:  # --help, or tgfr bench's namespace
        return
    if getattr(args, "config", None) is not None and not Path(args.config).is_file():
        return  # a YAML file of the reader's own (`--config my.yaml`): only its options could be checked
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            command_config(args)
    except SystemExit as error:
        raise DocCommandError(stderr.getvalue().strip() or f"exit {error.code}") from error


def check_command(command: Command) -> None:
    """Raise DocCommandError if the program of ``command`` would reject its arguments."""
    argv = list(command.argv)
    if command.kind == "tgfr":
        check_tgfr_command(argv)
    elif command.kind == "module":
        parse_only(lambda: runpy.run_module(command.target, run_name="__main__", alter_sys=True),
                   [command.target, *argv])
    else:
        script = ROOT / command.target
        if not script.is_file():
            raise DocCommandError(f"no such script: {command.target}")
        parse_only(lambda: runpy.run_path(str(script), run_name="__main__"), [str(script), *argv])


# --- the tests ---

BLOCKS = [block for path in DOCS for block in code_blocks(path)]
COMMANDS = [command for block in BLOCKS for command in commands_of(block)]


def _where(block: Block) -> str:
    return f"{block.path.relative_to(ROOT)}:{block.line}"


def test_the_docs_have_commands():
    kinds = {command.kind for command in COMMANDS}
    assert {"tgfr", "module", "script"} <= kinds, f"extracted only {kinds} from {len(BLOCKS)} code blocks"


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_parses(command):
    try:
        check_command(command)
    except ModuleNotFoundError as error:
        if error.name and not error.name.startswith("tgfr"):
            pytest.skip(f"{error.name} is not installed")
        raise
    except DocCommandError as error:
        pytest.fail(f"{command.where}: {error}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "python"], ids=_where)
def test_python_example_compiles(block):
    compile(block.text, _where(block), "exec")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language == "python" and b.path.name == "README.md"],
                         ids=_where)
def test_readme_python_example_runs(block):
    exec(compile(block.text, _where(block), "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.language in ("yaml", "yml")], ids=_where)
def test_yaml_example_is_a_training_config(block, tmp_path):
    from tgfr.training import load_config

    path = tmp_path / "config.yaml"
    path.write_text(block.text)
    load_config(path)


def _prose(path: Path) -> str:
    """The Markdown of ``path`` without its fenced code blocks."""
    return re.sub(r"^\s*(```|~~~).*?^\s*\1\s*$", "", path.read_text(), flags=re.M | re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", _prose(path), flags=re.M)}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`\n]*`", "", _prose(path))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


REPOSITORY_PATH = re.compile(r"^(?:tgfr|csrc|kernels|benchmarks|tests|docs|\.ci)/[\w./-]*$")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_the_docs_exist(path):
    spans = re.findall(r"`([^`\n]+)`", _prose(path))
    missing = sorted({s for s in spans if REPOSITORY_PATH.match(s) and not (ROOT / s).exists()})
    assert not missing, f"{path.relative_to(ROOT)} names files that do not exist: {missing}"


# --- the checker itself: it extracts what a reader would run, and it can fail ---

SAMPLE = """
```bash
$ .venv/bin/tgfr demo --out d seed=1  # a comment
OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py --worlds 1 2 \\
    --batch 8 && python -m tgfr.kernels.compile_check --arch 80; pip install x
for n in a b; do tgfr xmodal train --out runs/$n negatives=$n && tgfr xmodal eval --checkpoint runs/${n}; done
torchrun --nproc_per_node=2 -m tgfr train --preset smoke --out r
```

```
tgfr eval --checkpoint r --out e
```
"""


def test_extraction():
    blocks = code_blocks(Path("sample.md"), SAMPLE)
    found = [(c.where, c.kind, c.target, list(c.argv)) for b in blocks for c in commands_of(b)]
    assert found == [
        ("sample.md:3", "tgfr", "tgfr", ["demo", "--out", "d", "seed=1"]),
        ("sample.md:4", "script", "benchmarks/bench_distributed.py", ["--worlds", "1", "2", "--batch", "8"]),
        ("sample.md:4", "module", "tgfr.kernels.compile_check", ["--arch", "80"]),
        ("sample.md:6", "tgfr", "tgfr", ["xmodal", "train", "--out", "runs/a", "negatives=a"]),
        ("sample.md:6", "tgfr", "tgfr", ["xmodal", "eval", "--checkpoint", "runs/a"]),
        ("sample.md:6", "tgfr", "tgfr", ["xmodal", "train", "--out", "runs/b", "negatives=b"]),
        ("sample.md:6", "tgfr", "tgfr", ["xmodal", "eval", "--checkpoint", "runs/b"]),
        ("sample.md:7", "tgfr", "tgfr", ["train", "--preset", "smoke", "--out", "r"]),
        ("sample.md:11", "tgfr", "tgfr", ["eval", "--checkpoint", "r", "--out", "e"]),
    ]


@pytest.mark.parametrize("line", [
    "tgfr train --preset demo --out runs/a --no-such-flag",
    "tgfr train --preset demo --out runs/a align.no_such_key=1",
    "tgfr train --preset no_such_preset --out runs/a",
    "tgfr eval --out runs/a/eval",  # --checkpoint is required
    "tgfr demo model.no_such_key=1",
    "tgfr study --preset quick no_such_key=1",
    "tgfr xmodal train --preset quick --out runs/x no_such_key=1",
    "tgfr xmodal train --preset no_such_preset --out runs/x",
    "tgfr xmodal train --preset quick --out runs/x negatives=no_such_grade",
    "tgfr xmodal train --dataset mmcelebahq --data-root /data --out runs/x",
    "tgfr bench --no-such-flag",
    "tgfr no-such-command",
    "python benchmarks/bench_distributed.py --no-such-flag",
    "python benchmarks/no_such_script.py",
])
def test_a_wrong_command_is_rejected(line):
    (command,) = commands_of(Block(ROOT / "sample.md", 1, "bash", line))
    with pytest.raises(DocCommandError):
        check_command(command)


def test_paths_need_not_exist():
    (command,) = commands_of(Block(ROOT / "sample.md", 1, "bash", "tgfr eval --checkpoint no/such/run --out e"))
    check_command(command)
