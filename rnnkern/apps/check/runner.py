"""`rnnkern check`: the gradients of rnnkern's kernels, or of your own RNN, LSTM, GRU (any
cell of :mod:`rnnkern.cells`), against oracles.

The work is :mod:`rnnkern.testing`'s; this module picks the configurations (a grid per cell,
built from the cell's spec),
loads a ``--impl FILE.py:NAME``, prints the table as the checks finish and writes
``check.json``.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, List, Optional, Sequence, TextIO, Tuple, Union

import torch
from torch.autograd.gradcheck import GradcheckError

from ... import isa, testing
from ...cells import NAMES as CELL_NAMES
from ...cells import get as cell_spec

Config = testing.Config

# The grids are built from each cell's spec, not written per cell: a row is for every cell
# (_EVERY), only for a cell that takes nonlinearity (_NONLINEARITY: the relu rows of their own),
# only for one with a projection (_PROJECTION) or only for one without (_NO_PROJECTION). A
# cell without nonlinearity runs a relu row as tanh; one without a projection drops proj_size.
def _every(spec) -> bool:
    return True


def _nonlinearity(spec) -> bool:
    return spec.nonlinearity


def _projection(spec) -> bool:
    return spec.projection


def _no_projection(spec) -> bool:
    return not spec.projection


# `rnnkern check` without options: odd and tiny sizes, layers, directions, packing, no bias,
# tanh and relu (proj_size for the LSTM), both dtypes; each against the reference loop and
# the torch class.
_GRID = (
    (Config(1, 1, 1, 1), "float64", _every),
    (Config(7, 3, 5, 17), "float64", _every),
    (Config(6, 4, 3, 5, nonlinearity="relu"), "float64", _nonlinearity),
    (Config(5, 3, 4, 6, num_layers=2, bidirectional=True), "float64", _every),
    (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True, nonlinearity="relu"),
     "float64", _every),
    (Config(4, 3, 2, 5, bidirectional=True, bias=False), "float64", _every),
    (Config(12, 11, 4, 129), "float64", _every),
    (Config(7, 3, 5, 17), "float32", _every),
    (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True), "float32", _every),
    (Config(6, 4, 3, 5, proj_size=3), "float64", _projection),
    (Config(7, 3, 4, 6, num_layers=2, bidirectional=True, packed=True, proj_size=2), "float64",
     _projection),
    (Config(7, 3, 4, 6, num_layers=2, bidirectional=True, packed=True, proj_size=2), "float32",
     _projection),
)
# and against finite differences (an oracle without autograd), and torch.autograd.gradcheck
_FINITE_DIFFERENCES_GRID = (
    (Config(4, 2, 3, 5, num_layers=2, bidirectional=True, packed=True), "float64",
     _no_projection),
    (Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True, proj_size=2), "float64",
     _projection),
)
_GRADCHECK_GRID = (
    (Config(3, 2, 2, 3), "float64", _every),
    (Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True, nonlinearity="relu",
            proj_size=2), "float64", _every),
)
# A NumPy bptt is one layer, one direction, unpacked; tanh unless --nonlinearity says.
_BPTT_GRID = ((Config(1, 1, 1, 1), "float64", _every), (Config(7, 3, 5, 17), "float64", _every),
              (Config(6, 4, 3, 5), "float64", _every),
              (Config(12, 11, 4, 129), "float64", _every))


def _for_cell(cell: str, rows) -> Tuple[Tuple[Config, str], ...]:
    """The rows of a grid that apply to ``cell``, as its configurations."""
    spec = cell_spec(cell)
    found = []
    for config, dtype, applies in rows:
        if not applies(spec):
            continue
        config = replace(config, cell=cell,
                         nonlinearity=config.nonlinearity if spec.nonlinearity else "tanh",
                         proj_size=config.proj_size if spec.projection else 0)
        found.append((config, dtype))
    return tuple(found)


def grid(cell: str) -> Tuple[Tuple[Config, str], ...]:
    """The built-in grid of (configuration, dtype) for ``cell``, from its spec."""
    return _for_cell(cell, _GRID)


def finite_differences_grid(cell: str) -> Tuple[Tuple[Config, str], ...]:
    """The configurations checked against finite differences (rnnkern's own modules)."""
    return _for_cell(cell, _FINITE_DIFFERENCES_GRID)


def gradcheck_grid(cell: str) -> Tuple[Config, ...]:
    """The configurations run by torch.autograd.gradcheck."""
    return tuple(config for config, _ in _for_cell(cell, _GRADCHECK_GRID))


def bptt_grid(cell: str) -> Tuple[Tuple[Config, str], ...]:
    """The built-in grid of a NumPy bptt."""
    return _for_cell(cell, _BPTT_GRID)


# Each cell's grids, and those of the default cell (Config's, the Elman RNN) by their names.
GRIDS = {cell: grid(cell) for cell in CELL_NAMES}
FINITE_DIFFERENCES_GRIDS = {cell: finite_differences_grid(cell) for cell in CELL_NAMES}
GRADCHECK_GRIDS = {cell: gradcheck_grid(cell) for cell in CELL_NAMES}
BPTT_GRIDS = {cell: bptt_grid(cell) for cell in CELL_NAMES}
DEFAULT_GRID = GRIDS[Config.cell]
FINITE_DIFFERENCES_GRID = FINITE_DIFFERENCES_GRIDS[Config.cell]
GRADCHECK_GRID = GRADCHECK_GRIDS[Config.cell]
BPTT_GRID = BPTT_GRIDS[Config.cell]
DEFAULT_SIZE = (5, 3, 4, 6)
DEFAULT_REFERENCES = ("reference", "torch")
# Seconds one check (the candidate, the oracles, the localisation) may run; with hard_exit,
# HARD_EXIT_GRACE seconds more end the process if the candidate cannot be interrupted.
DEFAULT_TIMEOUT = 300.0
HARD_EXIT_GRACE = 30.0


@dataclass(frozen=True)
class Check:
    """One row of the table: a configuration and dtype against one reference, or
    torch.autograd.gradcheck (reference ``"gradcheck"``)."""

    config: Config
    dtype: str
    reference: str


def load(spec: str) -> Tuple[Any, str]:
    """Imports ``FILE.py:NAME``; returns (the object, ``stem.NAME``). ValueError says what is
    wrong: the format, a missing file, an error while importing it, or a missing name."""
    path, colon, name = spec.rpartition(":")
    if not colon or not path or not name.isidentifier():
        raise ValueError(f"expected FILE.py:NAME (a Python file and a class or function in "
                         f"it), got {spec!r}")
    if not os.path.isfile(path):
        raise ValueError(f"no file {path!r} (from {spec!r})")
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = stem if stem.isidentifier() and stem not in sys.modules else \
        f"rnnkern_check_{abs(hash(os.path.realpath(path)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"{path!r} cannot be imported as a Python file (from {spec!r})")
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)  # the file may import its neighbours
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise ValueError(f"importing {path} raised {type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(folder)
    if not hasattr(module, name):
        defined = sorted(n for n, v in vars(module).items()
                         if not n.startswith("_") and callable(v)
                         and getattr(v, "__module__", None) == module_name)
        raise ValueError(f"{name!r} was not found in {path} (it defines: "
                         f"{', '.join(defined) or 'no classes or functions'})")
    obj = getattr(module, name)
    if not callable(obj):
        raise ValueError(f"{name!r} in {path} is not a class or a function (it is of type "
                         f"{type(obj).__name__})")
    return obj, f"{stem}.{name}"


def is_bptt(candidate: Any) -> bool:
    """A NumPy bptt function (True) or a module class (False)."""
    return not isinstance(candidate, type)


def plan(*, bptt: bool, cell: str = "rnn",
         sizes: Optional[Sequence[Tuple[int, int, int, int]]] = None,
         layers: Optional[int] = None, bidirectional: bool = False, packed: bool = False,
         nonlinearity: Optional[str] = None, proj_size: Optional[int] = None,
         dtype: Optional[str] = None, references: Optional[Sequence[str]] = None,
         builtin: bool = False) -> List[Check]:
    """The rows to run for one cell. With no size or option given: the cell's built-in grid
    (for rnnkern's drop-in with ``builtin``: finite differences and gradcheck too). Else the
    configurations described: each size (default 5x3x4x6) with the options. References:
    default the reference loop and the torch class (the latter only for a drop-in cell;
    asking for it for another cell is a ValueError)."""
    chosen = sizes or layers is not None or bidirectional or packed or nonlinearity or dtype \
        or proj_size
    spec = cell_spec(cell)
    if references is None:  # a cell that is no drop-in for its torch class has no torch oracle
        references = [r for r in DEFAULT_REFERENCES if r in testing.references(cell)]
    elif "torch" in references and not spec.drop_in:
        raise ValueError(f"reference 'torch' does not exist for cell {cell!r}: "
                         f"rnnkern.{spec.title} is not a drop-in for torch.nn."
                         f"{spec.torch_type().__name__} (its parameters have other shapes); "
                         f"use one of {', '.join(testing.references(cell))}")
    references = tuple(references)
    if not chosen:
        rows = bptt_grid(cell) if bptt else grid(cell)
        checks = [Check(c, d, r) for c, d in rows for r in references]
        if not bptt:
            if builtin:
                checks += [Check(c, d, "finite-differences")
                           for c, d in finite_differences_grid(cell)]
            checks += [Check(c, "float64", "gradcheck") for c in gradcheck_grid(cell)]
        return checks
    configs = [Config(*size, num_layers=layers or 1, bidirectional=bidirectional,
                      packed=packed, nonlinearity=nonlinearity or "tanh", cell=cell,
                      proj_size=proj_size or 0)
               for size in (sizes or [DEFAULT_SIZE])]
    return [Check(c, dtype or "float64", r) for c in configs for r in references]


@dataclass
class Row:
    """What one check found."""

    check: Check
    passed: bool
    worst: str = "-"
    rel: Optional[float] = None
    allowed: Optional[float] = None
    enters: str = "-"
    details: str = ""
    error: bool = False  # the candidate raised instead of returning
    timed_out: bool = False  # it ran past the time limit


class CheckTimeout(BaseException):
    """Raised inside a candidate whose check runs past its time limit (a BaseException, so
    that ``except Exception`` in the candidate does not swallow it)."""


class Interrupted(KeyboardInterrupt):
    """The user's Ctrl-C stopped :func:`run`; ``rows`` are the checks that finished before,
    of ``total``."""

    def __init__(self, rows: List["Row"], total: int) -> None:
        super().__init__(f"interrupted after {len(rows)} of {total} checks")
        self.rows, self.total = rows, total


class _Guard:
    """One check's time limit and Ctrl-C watch.

    On the main thread where the platform has SIGALRM, an interval timer raises
    :class:`CheckTimeout` in whatever Python code runs when the limit passes, and again each
    second after (a candidate may catch it once). SIGINT sets ``user_interrupt`` before
    raising KeyboardInterrupt, which tells the user's Ctrl-C from a KeyboardInterrupt the
    candidate raises itself. Signals reach Python code only: a call in C that never
    returns to Python (a busy loop in an extension) is not interrupted; ``hard_exit`` then
    ends the process with status 1 after a grace period (faulthandler's watchdog thread,
    which needs no GIL), printing every thread's stack. Off the main thread nothing is
    interrupted and every KeyboardInterrupt counts as the user's; there, and without
    setitimer (Windows), a check that returns past its limit is marked timed out."""

    def __init__(self, seconds: Optional[float], hard_exit: bool) -> None:
        self.seconds = seconds or None
        self.hard_exit = hard_exit and self.seconds is not None
        self.expired = False
        self.user_interrupt = False
        self.tells_interrupts = False  # our SIGINT handler was installed
        self._interrupts = False  # and still is
        self._alarm = None
        self._armed = False
        self._start = 0.0

    def _on_alarm(self, signum, frame):
        if self._armed:
            self.expired = True
            raise CheckTimeout

    def _on_interrupt(self, signum, frame):
        self.user_interrupt = True
        raise KeyboardInterrupt

    def __enter__(self) -> "_Guard":
        self._start = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._on_interrupt)
                self.tells_interrupts = self._interrupts = True
            if self.seconds is not None and hasattr(signal, "setitimer"):
                self._armed = True
                handler = signal.signal(signal.SIGALRM, self._on_alarm)
                self._alarm = (handler, signal.setitimer(signal.ITIMER_REAL, self.seconds, 1.0))
        if self.hard_exit:
            try:
                faulthandler.dump_traceback_later(self.seconds + HARD_EXIT_GRACE, exit=True,
                                                  file=sys.__stderr__)
            except (AttributeError, OSError, ValueError):  # no stderr with a file descriptor
                self.hard_exit = False
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._disarm()
        except BaseException:  # a signal arrived while disarming: finish, then pass it on
            self._disarm()
            raise
        if self.seconds is not None and time.monotonic() - self._start > self.seconds:
            self.expired = True  # also where nothing could interrupt it

    def _disarm(self) -> None:
        self._armed = False  # from here on the alarm handler does nothing
        if self._alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            handler, (delay, interval) = self._alarm
            signal.signal(signal.SIGALRM, handler)
            self._alarm = None
            if delay:  # someone else's timer, less the time spent here
                left = delay - (time.monotonic() - self._start)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)
        if self._interrupts:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._interrupts = False
        if self.hard_exit:
            faulthandler.cancel_dump_traceback_later()
            self.hard_exit = False


_COLUMNS = ("configuration", "dtype", "reference", "worst tensor", "rel err", "allowed",
            "error enters", "result")
_REFERENCE_NAMES = {"reference": "rnnkern.reference", "torch": "torch.nn.{cls}",
                    "rnnkern": "rnnkern.{cls}", "finite-differences": "finite differences",
                    "gradcheck": "autograd.gradcheck"}


def _reference_name(check: Check) -> str:
    return _REFERENCE_NAMES[check.reference].format(cls=cell_spec(check.config.cell).title)


def _run_one(candidate: Any, name: str, check: Check, forward: Optional[Callable[..., Any]],
             atol: Optional[float], rtol: Optional[float], seed: int,
             timeout: Optional[float] = None, hard_exit: bool = False) -> Row:
    """One check under :class:`_Guard`. Whatever the candidate raises, BaseExceptions such as
    SystemExit included, is a failed row; the user's Ctrl-C raises KeyboardInterrupt."""
    c = check.config
    options = dict(size=(c.T, c.B, c.I, c.H), num_layers=c.num_layers,
                   bidirectional=c.bidirectional, packed=c.packed,
                   nonlinearity=c.nonlinearity, bias=c.bias, cell=c.cell,
                   proj_size=c.proj_size, seed=seed)
    guard = _Guard(timeout, hard_exit)
    report, error = None, None
    try:
        with guard:
            if check.reference == "gradcheck":
                testing.gradcheck(candidate, **options)
            else:
                report = testing.compare(candidate, check.reference, dtype=check.dtype,
                                         atol=atol, rtol=rtol, forward=forward, name=name,
                                         **options)
    except BaseException as raised:  # the candidate's own failure is a result, not a crash
        error = raised
    if guard.user_interrupt or (isinstance(error, KeyboardInterrupt)
                                and not guard.tells_interrupts):
        raise KeyboardInterrupt from None  # the user's Ctrl-C, even if the candidate caught it
    if guard.expired:
        return Row(check, False, details=f"timed out: still running after {timeout:g} s "
                   f"(--timeout {timeout:g})", error=True, timed_out=True)
    if isinstance(error, GradcheckError):
        return Row(check, False, details=f"torch.autograd.gradcheck: {error}".strip())
    if isinstance(error, SystemExit):
        return Row(check, False, details=f"SystemExit: {error.code} (the candidate called "
                   "sys.exit() or raised SystemExit)", error=True)
    if isinstance(error, KeyboardInterrupt):
        return Row(check, False, details=f"KeyboardInterrupt: {error} (raised by the "
                   "candidate, not a Ctrl-C)", error=True)
    if error is not None:
        return Row(check, False, details=f"{type(error).__name__}: {error}", error=True)
    if report is None:
        return Row(check, True)
    worst = report.worst
    enters = report.localisation.short() if report.localisation else "-"
    return Row(check, report.passed, worst.name, worst.rel, worst.allowed_rel, enters,
               "" if report.passed else report.table())


def _cells(row: Row) -> List[str]:
    check = row.check
    number = (lambda v: "-" if v is None else f"{v:.1e}")
    result = "ok" if row.passed else \
        ("TIMEOUT" if row.timed_out else "ERROR" if row.error else "FAIL")
    return [check.config.describe(), check.dtype, _reference_name(check),
            row.worst, number(row.rel), number(row.allowed), row.enters, result]


def _widths(checks: Sequence[Check], bptt: bool) -> List[int]:
    longest = len("grad w_ih") if bptt else \
        len("grad ") + max(len(p) for c in checks for p in c.config.param_names())
    widths = [max(len(c.config.describe()) for c in checks), 7,
              max(len(_reference_name(c)) for c in checks), longest, 7, 7, 15, 6]
    return [max(w, len(h)) for w, h in zip(widths, _COLUMNS)]


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def run(candidate: Any, name: str, checks: Sequence[Check], *,
        forward: Optional[Callable[..., Any]] = None, atol: Optional[float] = None,
        rtol: Optional[float] = None, seed: int = 0, out: Optional[TextIO] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT, hard_exit: bool = False,
        progress: Optional[Callable[[List[Row], Check], None]] = None) -> List[Row]:
    """Runs the checks, printing the table row by row (to ``out``, default sys.stdout) and
    then what differs.

    ``timeout``: seconds per check (None or 0: no limit), past which the check is a failed
    row; ``hard_exit``: end the process when a candidate cannot be interrupted (see
    :class:`_Guard`). ``progress(rows, check)`` is called before each check with the rows so
    far. The user's Ctrl-C raises :class:`Interrupted` with the rows finished."""
    out = out or sys.stdout
    order = list(_REFERENCE_NAMES)
    references = [_reference_name(c) for c in sorted(
        {c.reference: c for c in checks if c.reference != "gradcheck"}.values(),
        key=lambda c: order.index(c.reference))]
    also = ", and torch.autograd.gradcheck" if any(c.reference == "gradcheck" for c in checks) \
        else ""
    print(f"rnnkern check: {name} against {', '.join(references)}{also}; torch "
          f"{torch.__version__}, rnnkern kernels {isa()}, seed {seed}", file=out)
    if atol is not None or rtol is not None:
        rule = f"max |error| ≤ {atol or 0:g} + {rtol or 0:g} · max |reference|"
    else:
        compared = [c for c in checks if c.reference != "gradcheck"]
        rules = [(any(c.dtype == "float64" and c.reference != "finite-differences"
                      for c in compared), f"float64 relative error ≤ {testing.F64_RTOL:g}"),
                 (any(c.reference == "finite-differences" for c in compared),
                  f"against finite differences ≤ {testing.FD_RTOL:g}"),
                 (any(c.dtype == "float32" for c in compared),
                  f"float32 ≤ {testing.F32_FACTOR:g} × {_float32_baselines(checks)}'s own "
                  "float32 error")]
        rule = ", ".join(text for on, text in rules if on) or "-"
    print(f"tolerance: {rule}; rel err = max |error| / max |reference|, worst tensor", file=out)
    widths = _widths(checks, is_bptt(candidate))
    print(_line(_COLUMNS, widths), file=out, flush=True)
    rows: List[Row] = []
    terminal = sys.stderr.isatty()  # on a terminal: what runs now, until its row is printed
    try:
        for number, check in enumerate(checks, 1):
            if progress is not None:
                progress(list(rows), check)
            if terminal:
                print(f"[{number}/{len(checks)}] {check.config.describe()} {check.dtype} "
                      f"against {_reference_name(check)} ...", end="\r", file=sys.stderr,
                      flush=True)
            row = _run_one(candidate, name, check, forward, atol, rtol, seed, timeout,
                           hard_exit)
            if terminal:
                print("\033[K", end="", file=sys.stderr, flush=True)  # clear that line
            rows.append(row)
            print(_line(_cells(row), widths), file=out, flush=True)
    except KeyboardInterrupt:
        raise Interrupted(rows, len(checks)) from None
    failed = [r for r in rows if not r.passed]
    if not failed:
        print(f"all {len(rows)} checks agree", file=out)
        return rows
    print(f"{len(failed)} of {len(rows)} checks differ", file=out)
    shown = set()
    for row in failed:  # the references agree, so one report per configuration is enough
        key = (row.check.config, row.check.dtype, row.check.reference == "gradcheck")
        if key in shown:
            continue
        shown.add(key)
        print("", file=out)
        if row.error:
            print(f"{row.check.config.describe()}, {row.check.dtype}, against "
                  f"{_reference_name(row.check)}: {row.details}", file=out)
        else:
            print(row.details if row.check.reference != "gradcheck" else
                  f"{row.check.config.describe()}: {row.details}", file=out)
    return rows


def _cells_of(checks: Sequence[Check]) -> List[str]:
    """The cells of the checks, in the registry's order."""
    found = dict.fromkeys(k.config.cell for k in checks)
    return [c for c in CELL_NAMES if c in found] + [c for c in found if c not in CELL_NAMES]


def _class_names(checks: Sequence[Check]) -> str:
    """RNN, LSTM, GRU, or e.g. LSTM/GRU for checks of several cells."""
    return "/".join(cell_spec(c).title for c in _cells_of(checks))


def _float32_baselines(checks: Sequence[Check]) -> str:
    """Whose float32 error bounds float32 results: torch.nn.RNN (torch.nn.LSTM/GRU for
    several cells), the torch class of a drop-in; for a cell that is not one, its reference
    loop's."""
    specs = [cell_spec(c) for c in _cells_of(checks)]
    drop_ins = [s.title for s in specs if s.drop_in]
    names = [f"torch.nn.{'/'.join(drop_ins)}"] if drop_ins else []
    names += ["rnnkern.reference"] if len(drop_ins) < len(specs) else []
    return " and ".join(names)


def as_dicts(rows: Sequence[Row]) -> List[dict]:
    """The rows for check.json."""
    found = []
    for row in rows:
        entry = asdict(row.check.config)
        entry.update(dtype=row.check.dtype, reference=row.check.reference, passed=row.passed,
                     worst_tensor=row.worst, rel_err=_json_number(row.rel),
                     allowed=_json_number(row.allowed),
                     error_enters=row.enters, error=row.error, timed_out=row.timed_out,
                     details=row.details)
        found.append(entry)
    return found


def _json_number(value: Optional[float]) -> Optional[Union[float, str]]:
    """JSON has no inf or NaN: those become strings."""
    return value if value is None or math.isfinite(value) else str(value)


def default_candidate(cell: str = "rnn") -> Tuple[type, str]:
    """rnnkern's module for the cell (rnnkern.RNN, LSTM, GRU, …), the kernels."""
    cls = cell_spec(cell).module_type()
    return cls, f"rnnkern.{cls.__name__}"


def write_json(rows: Sequence[Row], name: str, path: str, *, finished: bool = True,
               running: Optional[Check] = None) -> None:
    """check.json. ``finished`` False: the run stopped or goes on, and ``passed`` is False;
    ``running``: the check under way (written before it starts, so that a process that dies
    in it leaves a check.json that says so)."""
    entries = as_dicts(rows)
    if running is not None:
        entry = asdict(running.config)
        entry.update(dtype=running.dtype, reference=running.reference, passed=False,
                     worst_tensor="-", rel_err=None, allowed=None, error_enters="-",
                     error=True, timed_out=False,
                     details="did not finish: the process ended during this check")
        entries.append(entry)
    with open(path, "w") as f:
        json.dump({"candidate": name, "torch": torch.__version__, "kernels": isa(),
                   "passed": finished and all(r.passed for r in rows), "finished": finished,
                   "checks": entries}, f, indent=2)
