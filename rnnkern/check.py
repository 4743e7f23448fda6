"""`rnnkern check`: the gradients of rnnkern's kernels, or of your own RNN, LSTM or GRU,
against oracles.

The work is :mod:`rnnkern.testing`'s; this module picks the configurations (a grid per cell),
loads a ``--impl FILE.py:NAME``, prints the table as the checks finish and writes
``check.json``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, List, Optional, Sequence, TextIO, Tuple, Union

import torch
from torch.autograd.gradcheck import GradcheckError

from . import isa, testing
from .modules import GRU, LSTM, RNN

Config = testing.Config

# `rnnkern check` without options: odd and tiny sizes, layers, directions, packing, no bias,
# tanh and relu, both dtypes; each against the reference loop and torch.nn.RNN.
DEFAULT_GRID: Tuple[Tuple[Config, str], ...] = (
    (Config(1, 1, 1, 1), "float64"),
    (Config(7, 3, 5, 17), "float64"),
    (Config(6, 4, 3, 5, nonlinearity="relu"), "float64"),
    (Config(5, 3, 4, 6, num_layers=2, bidirectional=True), "float64"),
    (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True, nonlinearity="relu"),
     "float64"),
    (Config(4, 3, 2, 5, bidirectional=True, bias=False), "float64"),
    (Config(12, 11, 4, 129), "float64"),
    (Config(7, 3, 5, 17), "float32"),
    (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True), "float32"),
)
# and against finite differences (an oracle without autograd), and torch.autograd.gradcheck
FINITE_DIFFERENCES_GRID = ((Config(4, 2, 3, 5, num_layers=2, bidirectional=True, packed=True),
                            "float64"),)
GRADCHECK_GRID = (Config(3, 2, 2, 3),
                  Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True,
                         nonlinearity="relu"))
# A NumPy bptt is one layer, one direction, unpacked; tanh unless --nonlinearity says.
BPTT_GRID = ((Config(1, 1, 1, 1), "float64"), (Config(7, 3, 5, 17), "float64"),
             (Config(6, 4, 3, 5), "float64"), (Config(12, 11, 4, 129), "float64"))


def _gated(cell: str, grid):
    return tuple((replace(c, cell=cell), d) for c, d in grid)


# The LSTM and the GRU: the same kinds of configuration (no relu), the LSTM with proj_size too.
_GATED_GRID = (
    (Config(1, 1, 1, 1), "float64"),
    (Config(7, 3, 5, 17), "float64"),
    (Config(5, 3, 4, 6, num_layers=2, bidirectional=True), "float64"),
    (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True), "float64"),
    (Config(4, 3, 2, 5, bidirectional=True, bias=False), "float64"),
    (Config(12, 11, 4, 129), "float64"),
    (Config(7, 3, 5, 17), "float32"),
    (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True), "float32"),
)
_PROJ_GRID = (
    (Config(6, 4, 3, 5, proj_size=3), "float64"),
    (Config(7, 3, 4, 6, num_layers=2, bidirectional=True, packed=True, proj_size=2), "float64"),
    (Config(7, 3, 4, 6, num_layers=2, bidirectional=True, packed=True, proj_size=2), "float32"),
)
GRIDS = {"rnn": DEFAULT_GRID, "lstm": _gated("lstm", _GATED_GRID + _PROJ_GRID),
         "gru": _gated("gru", _GATED_GRID)}
FINITE_DIFFERENCES_GRIDS = {
    "rnn": FINITE_DIFFERENCES_GRID,
    "lstm": _gated("lstm", ((Config(3, 2, 2, 3, num_layers=2, bidirectional=True,
                                    packed=True, proj_size=2), "float64"),)),
    "gru": _gated("gru", FINITE_DIFFERENCES_GRID),
}
GRADCHECK_GRIDS = {
    "rnn": GRADCHECK_GRID,
    "lstm": (Config(3, 2, 2, 3, cell="lstm"),
             Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True, cell="lstm",
                    proj_size=2)),
    "gru": (Config(3, 2, 2, 3, cell="gru"),
            Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True, cell="gru")),
}
BPTT_GRIDS = {cell: _gated(cell, BPTT_GRID) for cell in testing.CELLS}
DEFAULT_SIZE = (5, 3, 4, 6)
DEFAULT_REFERENCES = ("reference", "torch")


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
    configurations described: each size (default 5x3x4x6) with the options."""
    chosen = sizes or layers is not None or bidirectional or packed or nonlinearity or dtype \
        or proj_size
    references = tuple(references or DEFAULT_REFERENCES)
    if not chosen:
        grid = BPTT_GRIDS[cell] if bptt else GRIDS[cell]
        checks = [Check(c, d, r) for c, d in grid for r in references]
        if not bptt:
            if builtin:
                checks += [Check(c, d, "finite-differences")
                           for c, d in FINITE_DIFFERENCES_GRIDS[cell]]
            checks += [Check(c, "float64", "gradcheck") for c in GRADCHECK_GRIDS[cell]]
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


_COLUMNS = ("configuration", "dtype", "reference", "worst tensor", "rel err", "allowed",
            "error enters", "result")
_REFERENCE_NAMES = {"reference": "rnnkern.reference", "torch": "torch.nn.{cls}",
                    "rnnkern": "rnnkern.{cls}", "finite-differences": "finite differences",
                    "gradcheck": "autograd.gradcheck"}
_CLASS_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _reference_name(check: Check) -> str:
    return _REFERENCE_NAMES[check.reference].format(cls=_CLASS_NAMES[check.config.cell])


def _run_one(candidate: Any, name: str, check: Check, forward: Optional[Callable[..., Any]],
             atol: Optional[float], rtol: Optional[float], seed: int) -> Row:
    c = check.config
    options = dict(size=(c.T, c.B, c.I, c.H), num_layers=c.num_layers,
                   bidirectional=c.bidirectional, packed=c.packed,
                   nonlinearity=c.nonlinearity, bias=c.bias, cell=c.cell,
                   proj_size=c.proj_size, seed=seed)
    try:
        if check.reference == "gradcheck":
            testing.gradcheck(candidate, **options)
            return Row(check, True)
        report = testing.compare(candidate, check.reference, dtype=check.dtype, atol=atol,
                                 rtol=rtol, forward=forward, name=name, **options)
    except GradcheckError as error:
        return Row(check, False, details=f"torch.autograd.gradcheck: {error}".strip())
    except Exception as error:  # the candidate's own failure is a result, not a crash
        return Row(check, False, details=f"{type(error).__name__}: {error}", error=True)
    worst = report.worst
    enters = report.localisation.short() if report.localisation else "-"
    return Row(check, report.passed, worst.name, worst.rel, worst.allowed_rel, enters,
               "" if report.passed else report.table())


def _cells(row: Row) -> List[str]:
    check = row.check
    number = (lambda v: "-" if v is None else f"{v:.1e}")
    result = "ok" if row.passed else ("ERROR" if row.error else "FAIL")
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
        rtol: Optional[float] = None, seed: int = 0, out: Optional[TextIO] = None
        ) -> List[Row]:
    """Runs the checks, printing the table row by row (to ``out``, default sys.stdout) and
    then what differs."""
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
                  f"float32 ≤ {testing.F32_FACTOR:g} × torch.nn.{_class_names(checks)}'s own "
                  "float32 error")]
        rule = ", ".join(text for on, text in rules if on) or "-"
    print(f"tolerance: {rule}; rel err = max |error| / max |reference|, worst tensor", file=out)
    widths = _widths(checks, is_bptt(candidate))
    print(_line(_COLUMNS, widths), file=out, flush=True)
    rows = []
    progress = sys.stderr.isatty()  # on a terminal: what runs now, until its row is printed
    for number, check in enumerate(checks, 1):
        if progress:
            print(f"[{number}/{len(checks)}] {check.config.describe()} {check.dtype} against "
                  f"{_reference_name(check)} ...", end="\r", file=sys.stderr,
                  flush=True)
        row = _run_one(candidate, name, check, forward, atol, rtol, seed)
        if progress:
            print("\033[K", end="", file=sys.stderr, flush=True)  # clear that line
        rows.append(row)
        print(_line(_cells(row), widths), file=out, flush=True)
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


def _class_names(checks: Sequence[Check]) -> str:
    """RNN, LSTM, GRU, or e.g. LSTM/GRU for checks of several cells."""
    cells = [c for c in testing.CELLS if any(k.config.cell == c for k in checks)]
    return "/".join(_CLASS_NAMES[c] for c in cells)


def as_dicts(rows: Sequence[Row]) -> List[dict]:
    """The rows for check.json."""
    found = []
    for row in rows:
        entry = asdict(row.check.config)
        entry.update(dtype=row.check.dtype, reference=row.check.reference, passed=row.passed,
                     worst_tensor=row.worst, rel_err=_json_number(row.rel),
                     allowed=_json_number(row.allowed),
                     error_enters=row.enters, error=row.error, details=row.details)
        found.append(entry)
    return found


def _json_number(value: Optional[float]) -> Optional[Union[float, str]]:
    """JSON has no inf or NaN: those become strings."""
    return value if value is None or math.isfinite(value) else str(value)


def default_candidate(cell: str = "rnn") -> Tuple[type, str]:
    """rnnkern's drop-in for the cell (rnnkern.RNN, LSTM or GRU), the kernels."""
    cls = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[cell]
    return cls, f"rnnkern.{cls.__name__}"


def write_json(rows: Sequence[Row], name: str, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"candidate": name, "torch": torch.__version__, "kernels": isa(),
                   "passed": all(r.passed for r in rows), "checks": as_dicts(rows)}, f,
                  indent=2)
