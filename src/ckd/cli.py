"""The ``ckd`` command. Each subcommand is a module of ``ckd.commands`` with ``HELP`` (its line in
``ckd --help``), ``add_parser(subparsers)`` and ``run(args)``; user mistakes print one line on
stderr and exit 2.

Start-up: only the chosen subcommand's parser is built, and command modules import torch (and
numpy, matplotlib, dysts) inside ``run``, so ``ckd --help``, an argument error and
``ckd forecast --horizon H --method parrot|last|mean`` never import torch (docs/performance.md).
Run as a program, ``ckd`` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: OpenMP threads
that sleep instead of spinning between operations (the thread rule, ``ckd.threads``)."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import re
import sys
import warnings

from .names import MAX_INT  # noqa: F401 - every integer flag fits a torch int64 / numpy seed

# Subcommands in the order ``ckd --help`` lists them.
COMMANDS = ["predict", "demo", "reproduce", "train", "evaluate", "compare", "forecast", "zoo"]


def integer(minimum: int = 0, maximum: int = MAX_INT):
    """argparse ``type`` for an integer flag in [minimum, maximum]: argparse names the flag in
    its one-line error ("argument --seed: must be an integer in 0 .. 2**63 - 1, got -1")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(text) from None  # argparse: "invalid int value: 'text'"
        if not minimum <= value <= maximum:
            top = "2**63 - 1" if maximum == MAX_INT else str(maximum)
            raise argparse.ArgumentTypeError(f"must be an integer in {minimum} .. {top}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def path(text: str) -> str:
    """argparse ``type`` for a file or folder flag (IN, -o, --out, --plot, --report, --data, ...): a
    name that is empty or only blanks is refused (argparse names the flag in its one-line error);
    ``Path('')`` would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path ({text!r}); give a file or folder name")
    return text



class UsageError(Exception):
    """A user mistake: reported as one line, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line on stderr."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: {message}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``ckd`` parser. ``only``: build that subcommand's options alone (the others are listed
    with their ``HELP`` line, no options; "" builds none): what ``main`` does, so that parsing
    imports one command's options and nothing heavy. None builds them all."""
    parser = Parser(prog="ckd", description="Causal kernel descent: next-token prediction in context.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"ckd.commands.{name}")
        if only is None or name == only:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ckd`` on argv (default: the program's arguments); the exit status. Warnings are held and
    printed (``ckd: warning: ...``) once the command has finished; when it fails they are dropped, so
    that an error is always exactly one stderr line."""
    if argv is None:  # run as a program: before torch is imported (a call from Python leaves os.environ alone)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            return main(sys.argv[1:])
        finally:
            # The interpreter's exit collects every object torch's import made (~0.3 s, a fifth of
            # `ckd forecast`'s wall time); frozen objects are left to the process's end instead.
            gc.freeze()
    held: list[str] = []
    warnings.showwarning = lambda message, *args, **kwargs: held.append(f"ckd: warning: {message}")
    try:
        first = next((a for a in argv if not a.startswith("-")), None)
        args = build_parser(first if first in COMMANDS else "").parse_args(argv)
        if args.command is None:
            raise UsageError("ckd: choose a command (ckd --help lists them)")
        code = int(args.run(args) or 0)
        for line in held:
            print(line, file=sys.stderr)
        return code
    except (UsageError, ValueError, TypeError, OSError, FloatingPointError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"ckd: error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # a safety net behind the memory estimates
        text = str(err)
        if not isinstance(err, MemoryError) and "allocate" not in text and "out of memory" not in text:
            raise
        asked = re.search(r"allocate (\d+) bytes", text)
        size = f" ({int(asked.group(1)) / 1e9:.3g} GB asked)" if asked else ""
        print(f"ckd: error: out of memory{size}; use a smaller input (shorter, fewer sequences or layers)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
