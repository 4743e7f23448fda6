"""The commands: ``rnnkern <command>`` or ``python -m rnnkern <command>``.

Each command is a subpackage that adds its own parser (``add_parser``) and runs it
(``run``); its work lives beside it. The library (rnnkern's other modules) never imports
this package.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional

from ..cells import CELLS
from . import bench, check, train, vanish
from .arguments import HelpFormatter, out_dir

DESCRIPTION = ("rnnkern: fast, exact backpropagation through time for "
               + ", ".join(f"the {cell.title}" for cell in CELLS[:-1])
               + f" and the {CELLS[-1].title}.")

EPILOG = """\
Every command writes its files into one folder, --out (default ./rnnkern-results), and
prints where. "rnnkern <command> --help" shows a command's options and their defaults.
"""

COMMANDS = (bench, vanish, train, check)

# Old spellings still accepted, for one release: (command, old) -> new.
DEPRECATED = {("bench", "--steps"): "--step-by-step", ("vanish", "--T"): "--seq-len",
              ("train", "--T"): "--seq-len", ("train", "--engine"): "--impl"}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="rnnkern", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"rnnkern {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(command_module=command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line with ``argv`` (default: sys.argv[1:]); returns the exit status.
    Every argument is checked before any work: a bad one ends the command with argparse's
    usage line and a one-line message (exit status 2)."""
    parser = build_parser()
    argv = _negative_values(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    for token in argv:
        new = DEPRECATED.get((args.command, token.split("=")[0]))
        if new:
            print(f"note: {token.split('=')[0]} is deprecated and goes in the next release; "
                  f"use {new}", file=sys.stderr)
    command = args.command_module
    command.check_arguments(args, args.parser)
    args.out = out_dir(args.parser, args.out)
    return command.run(args)


def _negative_values(argv: List[str]) -> List[str]:
    """An option's value that starts with a minus and a digit (--size -5x2x3x4) joined to it
    (--size=-5x2x3x4): argparse would take it for an option, and its type then says what is
    wrong with the value."""
    out: List[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"-\d", token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out
