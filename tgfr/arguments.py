"""What the command lines of tgfr share: a parser whose usage errors are one line, and typed arguments.

A user's mistake on the command line ends the command with one line on stderr,
``PROG: error: MESSAGE``, and exit status 2: never argparse's usage block, never a traceback.
A path argument says what it must name (:class:`PathArgument`) and is checked when it is
parsed, before the command touches any file: an empty path is not the current directory, an
input must exist as a file or a directory, and an output must be creatable where it is named
(no file in the way; a file's folder must exist, a directory's missing folders are created).
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

# What a path argument names
FILE = "file"  # an existing file (input)
DIRECTORY = "directory"  # an existing directory (input)
RUN = "run"  # an existing run directory, checkpoint file or exported model: its contents are checked on loading
OUTPUT_DIRECTORY = "output directory"  # a directory the command creates (with its missing folders) or writes into
NEW_DIRECTORY = "new directory"  # a directory the command creates: none there yet, or an empty one
OUTPUT_FILE = "output file"  # a file the command writes, in an existing folder
PATH_KINDS = (FILE, DIRECTORY, RUN, OUTPUT_DIRECTORY, NEW_DIRECTORY, OUTPUT_FILE)


def first_rank() -> bool:
    """Whether this process reports: under torchrun every rank runs the command, and rank 0 alone prints
    (the others exit the same way, silently)."""
    return os.environ.get("RANK", "0") == "0"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr and exit status 2 (its
    sub-command parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n" if first_rank() else None)


@dataclass(frozen=True)
class PathArgument:
    """The ``type`` of a path argument: what it must name (one of :data:`PATH_KINDS`), the file endings
    it takes (``suffixes``, for files), and what it holds (``holds``: ``"config"`` for a YAML config,
    ``"tgfr run"``, ``"xmodal run"`` or ``"model"`` (a tgfr run or an exported model) for runs), which
    the command checks when it reads it."""

    expects: str
    suffixes: tuple[str, ...] = ()
    holds: str | None = None

    def __post_init__(self):
        if self.expects not in PATH_KINDS:
            raise ValueError(f"expects must be one of {PATH_KINDS}, got {self.expects!r}")

    @property
    def __name__(self) -> str:  # argparse names a type by it
        return self.expects

    def shape(self, text: str) -> Path:
        """``text`` as a path, checked for what needs no file system: not empty, one of the suffixes."""
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected the path of {_article(self.expects)}, got an empty string")
        path = Path(text).expanduser()
        if self.suffixes and path.suffix.lower() not in self.suffixes:
            raise argparse.ArgumentTypeError(f"{text} must end in {' or '.join(self.suffixes)}")
        return path

    def __call__(self, text: str) -> Path:
        path = self.shape(text)
        if self.expects in (FILE, DIRECTORY, RUN):
            if not path.exists():
                raise argparse.ArgumentTypeError(f"no such {'file' if self.expects == FILE else 'file or directory'}"
                                                 f": {text}")
            if self.expects == FILE and not path.is_file():
                raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
            if self.expects == DIRECTORY and not path.is_dir():
                raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
        elif self.expects == OUTPUT_FILE:
            if path.is_dir():
                raise argparse.ArgumentTypeError(f"{text} is a directory; expected the name of a file to write")
            if not path.parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: there is no directory {path.parent} to write it into")
        else:
            _check_creatable_directory(path, text)
            if self.expects == NEW_DIRECTORY and path.is_dir() and any(path.iterdir()):
                raise argparse.ArgumentTypeError(f"{text} already exists and is not empty: name a new directory")
        return path


def _article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _check_creatable_directory(path: Path, text: str) -> None:
    """A directory can be created at ``path`` (or is there): no file at it or at any of its folders."""
    for existing in (path, *path.parents):
        if existing.is_dir():
            return
        if existing.exists():
            raise argparse.ArgumentTypeError(f"{text} is a file, not a directory" if existing == path else
                                             f"{text} cannot be created: {existing} is a file")


def _number(text: str, convert, minimum, strict: bool, what: str):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is not None and math.isfinite(value) and (value > minimum if strict else value >= minimum):
        return value
    wanted = f"{what} {'>' if strict else '>='} {minimum:g}"
    if "=" in text:  # a key=value override taken by an option with several values (argparse's nargs="+")
        raise argparse.ArgumentTypeError(f"{text!r} is a key=value override, not {wanted}: give the overrides "
                                         f"before this option")
    raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")


def non_negative_int(text: str) -> int:
    return _number(text, int, 0, False, "an integer")


def positive_int(text: str) -> int:
    return _number(text, int, 1, False, "an integer")


def positive_float(text: str) -> float:
    return _number(text, float, 0, True, "a number")
