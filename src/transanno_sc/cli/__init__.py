"""Command line: ``transanno demo``, ``annotate``, ``pretrain``, ``train`` and ``evaluate``.

Each command is a thin wrapper: it checks its files and options, makes one library call and
writes the result. User errors print one line and exit with code 2 (``--debug`` or
``TRANSANNO_DEBUG=1`` re-raises them with their traceback); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings

from ._annotate import add_annotate_parser
from ._common import (
    USER_ERRORS,
    CLIError,
    _add_debug_option,
    _debug_requested,
    _error_message,
    _Parser,
    cli_wording,
)
from ._evaluate import add_demo_parser, add_evaluate_parser
from ._train import add_pretrain_parser, add_train_parser

__all__ = ["CLIError", "main"]


def _build_parser() -> argparse.ArgumentParser:
    from transanno_sc import __version__

    parser = _Parser(
        prog="transanno",
        description="Transformer cell-type annotation for single-cell RNA-seq (.h5ad files).",
        epilog="Run `transanno COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"transanno-sc {__version__}")
    _add_debug_option(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        add_demo_parser,
        add_annotate_parser,
        add_pretrain_parser,
        add_train_parser,
        add_evaluate_parser,
    ):
        add(sub)
    for command in sub.choices.values():
        _add_debug_option(command, top_level=False)
    return parser


def _quiet_libraries() -> None:
    """Progress lines and errors only: no Lightning or scvi-tools advice for developers."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (".*LeafSpec.*", ".*smaller than the logging interval.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=message)
    # mudata's notices on joining its modalities' obs/var when reading or writing a .h5mu
    warnings.filterwarnings("ignore", module=r"mudata\.")


@contextlib.contextmanager
def _warnings_as_lines(*, debug: bool, inputs: str = "the input"):
    """Print warnings as one ``transanno: warning: ...`` line each, in the command line's
    words (:func:`cli_wording`; with ``--debug``: as Python shows them, with file and line)."""
    if debug:
        yield
        return
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = cli_wording(" ".join(str(message).split()), inputs)
        print(f"transanno: warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``transanno`` command; returns the exit code."""
    args = _build_parser().parse_args(argv)
    _quiet_libraries()
    # what the library's messages call `adata` is, in this command, this file
    inputs = getattr(args, "inputs", "the input")
    try:
        with _warnings_as_lines(debug=_debug_requested(args), inputs=inputs):
            return args.func(args)
    except (CLIError, *USER_ERRORS) as e:
        if _debug_requested(args):
            raise
        print(f"transanno: error: {_error_message(e, inputs)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("transanno: interrupted", file=sys.stderr)
        return 130
