"""The `xt` command.

Each subcommand lives in `xtimage.commands.<name>` with a ``register(subparsers)`` that
adds its parser and sets ``func``. Exit codes: 0 success, 1 failure (a bug or a runtime
error), 2 bad usage or input (an `XTError`, printed as one line). ``--debug`` shows the
traceback.

Startup is kept light: this module and the command modules import no torch; each command
imports what it runs inside its ``run``, so help, usage errors and config errors answer at
once (benchmarks/cli_startup.py, tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from xtimage.errors import XTError, did_you_mean

COMMANDS = ["info", "demo", "train", "eval", "predict", "view", "bench", "convert"]


class Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose invalid choices (a misspelled subcommand) get a
    "did you mean"."""

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r}{did_you_mean(str(value), action.choices)} "
                f"(choose from {choices})",
            )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="xt",
        description="xT for extremely large images: plan, train, evaluate and predict.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"xtimage.commands.{name}").register(sub)
    return parser


def one_line(message: str) -> str:
    """A message as one line. An error re-raised from a data-loader worker carries the
    worker's traceback in its text: its last line is the error itself."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in message and lines:
        return re.sub(r"^[\w.]+: ", "", lines[-1], count=1)
    return " ".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # tifffile logs what it finds odd in a file beside our one-line error
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except XTError as exc:
        if args.debug:
            raise
        print(f"xt {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure we did not anticipate: one line, traceback on --debug
        if args.debug:
            raise
        print(
            f"xt {args.command}: failed: {type(exc).__name__}: {exc} (rerun with --debug "
            f"for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
