"""The ``ckd`` command. Each subcommand is a module of ``ckd.commands`` with
``add_parser(subparsers)``; user mistakes print one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# Subcommands in the order ``ckd --help`` lists them.
COMMANDS = ["predict", "demo", "reproduce", "train", "evaluate", "forecast", "zoo"]


class UsageError(Exception):
    """A user mistake: reported as one line, no traceback."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line on stderr."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ckd", description="Causal kernel descent: next-token prediction in context.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"ckd.commands.{name}").add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"ckd: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("ckd: choose a command (ckd --help lists them)")
        return int(args.run(args) or 0)
    except (UsageError, ValueError, TypeError, OSError, FloatingPointError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"ckd: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
