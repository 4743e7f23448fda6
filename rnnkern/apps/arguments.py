"""What the commands share: argument types, the help formatter, the --out folder, the check
that torch is installed, and the machine's name for reports."""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys

DEFAULT_OUT = "rnnkern-results"

TORCH_MISSING = (
    "this command needs torch (pip install torch). On Linux, PyPI's default torch wheel is the "
    "multi-GB CUDA build; for the CPU-only build use PyTorch's CPU wheel index:\n"
    "    pip install torch --index-url https://download.pytorch.org/whl/cpu\n"
    "For the CUDA build, pick the command for your CUDA version at "
    "https://pytorch.org/get-started/locally/ (on Linux, plain 'pip install torch' gives one)."
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows each option's default, except for
    switches (on/off) and options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text or default is None
                or default is argparse.SUPPRESS or isinstance(default, bool)):
            return text
        if isinstance(default, (list, tuple)):
            shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            return f"{text} (default: {shown})"
        return text + " (default: %(default)s)"


def positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def nonnegative_int(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return int(text)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def positive_float(text: str) -> float:
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text!r}")
    return value


def size(text: str):
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected TxBxIxH with positive integers, got {text!r}")
    return tuple(int(p) for p in parts)


def memory_bytes() -> float:
    """The memory the machine has free now (MemAvailable, Linux), else all of it; inf when
    neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return math.inf


def recurrent_bytes(T: int, B: int, I: int, H: int, gates: int, layers: int = 1,  # noqa: E741
                    directions: int = 1, itemsize: int = 4) -> int:
    """A rough lower bound on one train step's memory: the input and its gradient, each
    layer-direction's gates and states kept for backward, and the weights."""
    rows = T * B
    saved = rows * (2 * I + layers * directions * (gates + 2) * H)
    weights = layers * directions * gates * H * (I + (directions + 1) * H)
    return (saved + weights) * itemsize


def check_memory(parser: argparse.ArgumentParser, option: str, what: str, needed: float) -> None:
    """A usage error when ``needed`` bytes are more than the machine has free."""
    free = memory_bytes()
    if needed > free:
        parser.error(f"argument {option}: {what} needs at least {needed / 2**30:.3g} GiB of "
                     f"memory, more than the {free / 2**30:.3g} GiB free on this machine")


def add_out(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"folder to write {what} into, created if missing")


def out_dir(parser: argparse.ArgumentParser, path: str) -> str:
    """Creates the --out folder (before any work) and returns its real path; a path that is
    an existing file or cannot be created or written to is a usage error."""
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"argument --out: {path!r} is an existing file; --out names a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        parser.error(f"argument --out: cannot create the folder {path!r}: "
                     f"{error.strerror or error}")
    real = os.path.realpath(path)
    probe = os.path.join(real, f".rnnkern-write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        parser.error(f"argument --out: cannot write into the folder {path!r}: "
                     f"{error.strerror or error}")
    return real


def wrote(path: str) -> None:
    print(f"wrote {os.path.realpath(path)}")


def no_matplotlib() -> None:
    print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)


def has_torch() -> bool:
    """Whether torch imports; if not, says how to install it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print(TORCH_MISSING, file=sys.stderr)
        return False
    return True


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else lscpu, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cell_choices(all_: bool = False):
    """The registry's cell names for --cell, with "all" where a command runs every cell."""
    from ..cells import NAMES

    return list(NAMES) + (["all"] if all_ else [])
