"""Gradient checks for anyone's BPTT: compare a candidate with an oracle, and say where it parts.

The cells of :mod:`rnnkern.cells` (``cell=``): ``"rnn"`` (torch.nn.RNN), ``"lstm"``
(torch.nn.LSTM), ``"gru"`` (torch.nn.GRU), …; every fact about a cell (its states, gates,
parameter shapes, reference loop, torch class, the words of the localisation) is read from
its spec. A *candidate* is one of:

- a ``torch.nn.Module`` class constructed like the cell's torch class (``rnnkern.RNN``,
  ``rnnkern.LSTM``, ``torch.nn.GRU``, your own layer), with its parameter names
  (``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0`` with ``proj_size``, …) and called
  as ``module(input, hx)`` → ``(output, h_n)`` (the LSTM: ``module(input, (h0, c0))`` →
  ``(output, (h_n, c_n))``) with time-major input or a ``PackedSequence``;
- a NumPy function that returns the gradients of ``L = Σ y ⊙ grad_y`` for one layer, one
  direction (shapes as in docs/design.md sections 1 and 1b, weights with torch's gate order):
  ``bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` with the keys
  ``x, h0, w_ih, w_hh, b_ih, b_hh`` for the RNN and the GRU, and for the LSTM
  ``bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` with the keys
  ``x, h0, c0, w_ih, w_hh, b_ih, b_hh`` (in general the spec's ``bptt_arguments``);
  optionally with its NumPy forward, the same arguments without ``grad_y``, returning ``y``.

A *reference* is ``"reference"`` (:mod:`rnnkern.reference`, a plain autograd loop),
``"torch"`` (the torch class; only for a cell whose module is a drop-in for it),
``"rnnkern"`` (``rnnkern.RNN``/``LSTM``/``GRU``, the kernels),
``"finite-differences"`` (central differences in float64 of the reference's forward, no
autograd at all; small sizes only), or another candidate.

:func:`compare` runs both on one random problem (the loss is ``Σ output ⊙ grad_output +
Σ h_n ⊙ grad_h_n`` (``+ Σ c_n ⊙ grad_c_n``) with random weights) and returns a
:class:`Report`: per tensor the largest absolute and relative error and where it is (step,
batch row, unit). When gradients differ it walks back from the last step and says where the
error enters (:class:`Localisation`): for every cell the step whose gate pre-activation
gradient δ_t differs, or the step whose hand-off to the previous state differs (for the
LSTM, to h_{t-1} or to c_{t-1}, each named). The hand-offs are seen in problems restarted at
a later step; a candidate whose results depend on where a step lies (an absolute step, a
chunk boundary) is caught at that and reported as "between steps t + 1 and t". A NumPy bptt's
forward is compared only when it is given (``forward=``).
:func:`assert_gradients_close` raises ``AssertionError`` with the report as a table.

This module is a library: it imports nothing of rnnkern.apps (the commands).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import cells as _cells
from . import reference as _reference_module

__all__ = ["Config", "TensorError", "Localisation", "Report", "REFERENCES", "CELLS", "compare",
           "assert_gradients_close", "gradcheck"]

REFERENCES = ("reference", "torch", "rnnkern", "finite-differences")


def references(cell: str = "rnn") -> Tuple[str, ...]:
    """The references that exist for ``cell``: :data:`REFERENCES`, without ``"torch"`` for a
    cell whose module is not a drop-in for its torch class."""
    return tuple(r for r in REFERENCES if r != "torch" or _cells.get(cell).drop_in)

# docs/design.md section 5: float64 within 1e-10 (relative to the largest value of the tensor);
# float32 within F32_FACTOR times torch's own float32 error against float64 (and at least
# F32_FACTOR * F32_FLOOR, so that a tensor torch gets exact by luck still has room).
F64_RTOL = 1e-10
F32_FACTOR = 8.0
F32_FLOOR = 1e-6
# Central differences (4-point stencil, step FD_STEP) against the float64 reference: about
# 1e-11 relative on tanh problems; relu's kinks are rarely within a step of a pre-activation.
FD_RTOL = 1e-8
FD_STEP = 1e-4
FD_MAX_ELEMENTS = 20000
# Localisation reruns the problem from each step back; beyond this many steps it stops.
LOCALISE_MAX_STEPS = 200

CELLS = _cells.NAMES
# The canonical key of each of a NumPy bptt's gradients (the states' h0 → hx, c0 → cx, …).
_BPTT_CANONICAL = {"x": "input", "w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0",
                   "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}


def _bptt_key(argument: str) -> str:
    return _BPTT_CANONICAL.get(argument) or f"{argument[:-1]}x"  # h0 → hx


def _spec(cell: str) -> _cells.Cell:
    """The registry's spec of ``cell`` (read at each call, so that a registered cell counts)."""
    return _cells.get(cell)


def _names() -> Tuple[str, ...]:
    return _cells.NAMES


def _and(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _cells_with(option: str) -> str:
    """The cells that take ``option`` (``nonlinearity``, ``projection``), e.g. ``'rnn'``."""
    names = [repr(c.name) for c in _cells.CELLS if getattr(c, option)]
    return " or ".join(names) or "none"
Candidate = Union[type, Callable[..., Any], str]


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Config:
    """One configuration: sizes (T steps, B rows, I inputs, H hidden units) and the options
    that the cell's torch class takes. ``packed``: variable lengths (1 … T, the longest T) as
    an unsorted PackedSequence. ``nonlinearity`` only for a cell that takes it (the Elman
    cell); ``proj_size`` only for one with a projection (the LSTM; 0: none)."""

    T: int
    B: int
    I: int  # noqa: E741
    H: int
    num_layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    nonlinearity: str = "tanh"
    bias: bool = True
    cell: str = "rnn"
    proj_size: int = 0

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The width of h (P with proj_size, else H)."""
        return self.proj_size or self.H

    @property
    def spec(self) -> _cells.Cell:
        """The cell's spec in :mod:`rnnkern.cells`."""
        return _spec(self.cell)

    @property
    def states(self) -> Tuple[str, ...]:
        """The initial-state keys: ``("hx",)``, the LSTM ``("hx", "cx")``."""
        return self.spec.state_keys

    @property
    def finals(self) -> Tuple[str, ...]:
        """The final-state keys: ``("h_n",)``, the LSTM ``("h_n", "c_n")``."""
        return self.spec.final_keys

    def describe(self) -> str:
        """e.g. ``7x3x5x17 L2 bi packed tanh`` or ``6x4x3x5 proj3 lstm``: the cell is named
        unless it is the default one (``rnn``), the nonlinearity for a cell that takes it."""
        parts = [f"{self.T}x{self.B}x{self.I}x{self.H}"]
        parts += [f"L{self.num_layers}"] if self.num_layers > 1 else []
        parts += ["bi"] if self.bidirectional else []
        parts += ["packed"] if self.packed else []
        parts += ["no-bias"] if not self.bias else []
        parts += [f"proj{self.proj_size}"] if self.proj_size else []
        parts += [self.cell] if self.cell != Config.cell else []
        parts += [self.nonlinearity] if self.spec.nonlinearity else []
        return " ".join(parts)

    def param_names(self) -> List[str]:
        """In the torch class's order (for the LSTM with proj_size, weight_hr last)."""
        names = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[:self.directions]:
                names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
                if self.bias:
                    names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
                if self.proj_size:
                    names += [f"weight_hr_l{layer}{suffix}"]
        return names

    def param_shape(self, name: str) -> Tuple[int, ...]:
        """The shape of parameter ``name`` (``weight_hh_l1_reverse``, …), as the cell's spec
        gives it (:meth:`rnnkern.cells.Cell.parameter_shape`)."""
        kind, _, rest = name.partition("_l")
        layer = int(rest.split("_")[0])
        width = self.I if layer == 0 else self.directions * self.output_size
        return self.spec.parameter_shape(kind, width, self.H, self.proj_size)

    def state_shape(self, key: str) -> Tuple[int, ...]:
        """``hx``/``h_n`` (L·D, B, P or H) and ``cx``/``c_n`` (L·D, B, H): the first state,
        h, is P wide with proj_size, the others H."""
        first = key in (self.states[0], self.finals[0])
        width = self.output_size if first else self.H
        return (self.num_layers * self.directions, self.B, width)


def _validate_config(config: Config) -> None:
    sizes = (config.T, config.B, config.I, config.H)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ValueError(f"size must be (T, B, I, H), four positive integers, got {sizes}")
    if config.cell not in _names():
        raise ValueError(f"cell must be one of {', '.join(map(repr, _names()))}, "
                         f"got {config.cell!r}")
    spec = config.spec
    if not (isinstance(config.num_layers, int) and config.num_layers > 0):
        raise ValueError(f"num_layers must be a positive integer, got {config.num_layers!r}")
    if config.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {config.nonlinearity!r}")
    if not spec.nonlinearity and config.nonlinearity != "tanh":
        raise ValueError(f"nonlinearity applies to cell {_cells_with('nonlinearity')} only, got "
                         f"nonlinearity={config.nonlinearity!r} with cell={config.cell!r}")
    proj = config.proj_size
    if not (isinstance(proj, int) and not isinstance(proj, bool) and proj >= 0):
        raise ValueError(f"proj_size must be an integer ≥ 0, got {proj!r}")
    if proj and not spec.projection:
        raise ValueError(f"proj_size applies to cell {_cells_with('projection')} only, got "
                         f"proj_size={proj} with cell={config.cell!r}")
    if proj >= config.H:
        raise ValueError(f"proj_size must be smaller than H = {config.H} (as "
                         f"{_like(config.cell)} requires), got {proj}")


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, np.dtype):
        dtype = dtype.name
    for name, forms in (("float64", (torch.float64, np.float64, "float64", "double")),
                        ("float32", (torch.float32, np.float32, "float32", "float"))):
        if any(dtype is f or (isinstance(dtype, str) and dtype == f) for f in forms):
            return name
    raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")


# ----------------------------------------------------------------------------- problems

@dataclass
class _Problem:
    """Inputs, weights and the loss's output gradients, all float64 NumPy arrays (rounded to
    float32 values when the check runs in float32)."""

    config: Config
    x: np.ndarray                 # (T, B, I), zero past each row's length when packed
    states: Dict[str, np.ndarray]  # by key: hx (L·D, B, P or H), the LSTM's cx (L·D, B, H)
    weights: Dict[str, np.ndarray]
    grad_output: np.ndarray       # (T, B, D·P or D·H), zero past each row's length
    final_grads: Dict[str, np.ndarray]  # by key: h_n like hx, c_n like cx
    lengths: Optional[np.ndarray] = None

    @property
    def hx(self) -> np.ndarray:
        return self.states[self.config.states[0]]

    def state(self, key: str) -> np.ndarray:
        return self.states[key]

    def final_grad(self, key: str) -> np.ndarray:
        return self.final_grads[key]

    def suffix(self, start: int, states: Dict[str, np.ndarray]) -> "_Problem":
        """The same loss from step ``start`` on: every layer's states at step ``start - 1``
        (``states["hx"]`` (L, B, P or H), for the LSTM ``states["cx"]`` too) become the
        initial states. One direction, no packing."""
        config = replace(self.config, T=self.config.T - start)
        return _Problem(config, self.x[start:], {k: states[k] for k in config.states},
                        self.weights, self.grad_output[start:], dict(self.final_grads))


def _make_problem(config: Config, seed: int, final_state_grad: bool,
                  float32: bool) -> _Problem:
    rng = np.random.default_rng(seed)
    T, B, I, H, D = config.T, config.B, config.I, config.H, config.directions
    k = 1 / math.sqrt(H)
    x = rng.standard_normal((T, B, I))
    hx = 0.5 * rng.standard_normal(config.state_shape(config.states[0]))
    weights = {name: rng.uniform(-k, k, config.param_shape(name))
               for name in config.param_names()}
    grad_output = rng.standard_normal((T, B, D * config.output_size))
    grad_h_n = rng.standard_normal(hx.shape) if final_state_grad else np.zeros(hx.shape)
    lengths = None
    if config.packed:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T
        alive = np.arange(T)[:, None] < lengths[None, :]
        x = x * alive[:, :, None]
        grad_output = grad_output * alive[:, :, None]
    problem = _Problem(config, x, {config.states[0]: hx}, weights, grad_output,
                       {config.finals[0]: grad_h_n}, lengths)
    # the other states (the LSTM's c) are drawn last, so that the arrays before are those of
    # the same seed for every cell
    for key, final in zip(config.states[1:], config.finals[1:]):
        shape = config.state_shape(key)
        problem.states[key] = 0.5 * rng.standard_normal(shape)
        problem.final_grads[final] = rng.standard_normal(shape) if final_state_grad else \
            np.zeros(shape)
    if float32:  # the float64 oracle then sees exactly the values the float32 run sees
        def rounded(a: np.ndarray) -> np.ndarray:
            return a.astype(np.float32).astype(np.float64)
        problem.x, problem.grad_output = rounded(problem.x), rounded(problem.grad_output)
        problem.states = {k: rounded(v) for k, v in problem.states.items()}
        problem.final_grads = {k: rounded(v) for k, v in problem.final_grads.items()}
        problem.weights = {n: rounded(w) for n, w in weights.items()}
    return problem


# ----------------------------------------------------------------------------- the oracle

def _layer_weights(module: torch.nn.Module, spec: _cells.Cell, layer: int,
                   suffix: str = "") -> List[Any]:
    """(w_ih, w_hh, b_ih, b_hh) of one layer-direction (biases None without bias), and w_hr
    (None without proj_size) for a cell with a projection (the LSTM)."""
    def get(kind: str) -> Optional[torch.Tensor]:
        return getattr(module, f"{kind}_l{layer}{suffix}", None)
    weights = [get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")]
    return weights + [get("weight_hr")] if spec.projection else weights


def _reference_layer(cell: str, nonlinearity: str, layer_input, states, weights,
                     batch_sizes=None, reverse: bool = False):
    """One layer-direction by the cell's reference loop (:mod:`rnnkern.reference`):
    (output, the states at the last step), ``states`` a tuple (h0,), or the LSTM's (h0, c0);
    see :meth:`rnnkern.cells.Cell.reference_layer`."""
    return _spec(cell).reference_layer(layer_input, tuple(states), weights, nonlinearity,
                                       batch_sizes, reverse)


def _reference_forward(module: torch.nn.Module, spec: _cells.Cell, input, hx):
    """The torch class's input and state handling around :func:`_reference_layer`, layer by
    layer and direction by direction (no dropout)."""
    several = len(spec.states) > 1
    packed = isinstance(input, PackedSequence)
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None and sorted_indices is not None:
            hx = tuple(h.index_select(1, sorted_indices) for h in hx) if several \
                else hx.index_select(1, sorted_indices)
        batch = int(batch_sizes[0])
    else:
        data, batch_sizes = input, None
        batch = input.shape[1]
    D = 2 if module.bidirectional else 1
    if hx is None:
        widths = [getattr(module, "proj_size", 0) or module.hidden_size] + \
            [module.hidden_size] * (len(spec.states) - 1)
        hx = tuple(data.new_zeros(module.num_layers * D, batch, w) for w in widths)
    initial = tuple(hx) if several else (hx,)
    nonlinearity = getattr(module, "nonlinearity", "tanh") if spec.nonlinearity else "tanh"
    layer_input, finals = data, []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(D):
            index = layer * D + direction
            out, final = _reference_layer(spec.name, nonlinearity, layer_input,
                                          tuple(h[index] for h in initial),
                                          _layer_weights(module, spec, layer,
                                                         "_reverse" * direction),
                                          batch_sizes, direction == 1)
            outputs.append(out)
            finals.append(final)
        layer_input = torch.cat(outputs, -1)
    states = [torch.stack(column) for column in zip(*finals)]
    if packed and unsorted_indices is not None:
        states = [s.index_select(1, unsorted_indices) for s in states]
    state = tuple(states) if several else states[0]
    if packed:
        return PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices), state
    return layer_input, state


_REFERENCE_CLASSES: Dict[str, type] = {}


def _reference_class(cell: str) -> type:
    """The module class whose forward is the cell's reference loop, built once per cell.

    For a drop-in it subclasses the torch class (torch.nn.RNN's parameters and input
    handling, computed by rnnkern.reference.rnn, …); for a cell that is not one (its torch
    class has other parameter shapes) it subclasses rnnkern's module, whose parameters it
    keeps and whose forward it replaces."""
    spec = _spec(cell)
    cached = _REFERENCE_CLASSES.get(cell)
    if cached is not None and cached.spec == spec:
        return cached
    base = spec.torch_type() if spec.drop_in else spec.module_type()

    def forward(self, input, hx=None):
        return _reference_forward(self, self.spec, input, hx)

    name = f"_Reference{spec.title}"
    cls = type(name, (base,), {
        "__doc__": f"{base.__name__}'s parameters and input handling, computed by "
                   f"{spec.reference.replace(':', '.')}.",
        "__module__": __name__, "__qualname__": name, "spec": spec, "forward": forward})
    _REFERENCE_CLASSES[cell] = cls
    return cls


def _layer_states(problem: _Problem) -> List[Dict[str, np.ndarray]]:
    """Every layer's states at every step, float64, from the reference loop (one direction,
    no packing): per layer ``{"hx": (T, B, P or H)}``, for the LSTM with ``"cx"`` (T, B, H)."""
    config = problem.config
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + \
        (("weight_hr",) if config.spec.projection else ())
    layers = []
    with torch.no_grad():
        layer_input = torch.from_numpy(problem.x)
        for layer in range(config.num_layers):
            weights = [None if problem.weights.get(name) is None else
                       torch.from_numpy(problem.weights[name]) for name in
                       (f"{kind}_l{layer}" for kind in kinds)]
            state = tuple(torch.from_numpy(problem.state(k)[layer]) for k in config.states)
            steps: Dict[str, List[Any]] = {k: [] for k in config.states}
            for t in range(config.T):  # step by step: the LSTM's c_t is not an output
                _, state = _reference_layer(config.cell, config.nonlinearity,
                                            layer_input[t:t + 1], state, weights)
                for key, value in zip(config.states, state):
                    steps[key].append(value)
            found = {k: torch.stack(v).numpy() for k, v in steps.items()}
            layers.append(found)
            layer_input = torch.from_numpy(found[config.states[0]])
    return layers


# ----------------------------------------------------------------------------- runners

_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32}


def _class_name(cls: Any) -> str:
    if isinstance(cls, type) and cls in _REFERENCE_CLASSES.values():
        return "rnnkern.reference"
    module = getattr(cls, "__module__", "") or ""
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None) or repr(cls)
    for spec in _cells.CELLS:  # the registry's classes by their public names
        for path, public in ((spec.torch_class, spec.torch_class.replace(":", ".")),
                             (spec.module, f"rnnkern.{spec.title}")):
            where, _, attribute = path.partition(":")
            if qualname == attribute and (module == where or module.startswith(where + ".")):
                return public
    return f"{module}.{qualname}" if module and module != "__main__" else qualname


def _torch_name(cell: str) -> str:
    """The torch class of the cell, ``torch.nn.GRU``."""
    return f"torch.nn.{_spec(cell).torch_type().__name__}"


def _like(cell: str) -> str:
    """The class a candidate is built like: the torch class for a drop-in, else rnnkern's
    module (whose parameter shapes the torch class does not have)."""
    spec = _spec(cell)
    return _torch_name(cell) if spec.drop_in else f"rnnkern.{spec.title}"


def _float32_baseline(cell: str) -> type:
    """The float32 run that sets the float32 bound: the torch class's for a drop-in, else the
    reference loop's own."""
    spec = _spec(cell)
    return spec.torch_type() if spec.drop_in else _reference_class(cell)


def _float32_name(cell: str) -> str:
    return _torch_name(cell) if _spec(cell).drop_in else "rnnkern.reference"


class _ModuleRunner:
    """Runs a module class built like the cell's torch class on a problem."""

    kind = "module"

    def __init__(self, cls: type, name: Optional[str] = None) -> None:
        self.cls = cls
        self.name = name or _class_name(cls)

    def build(self, config: Config, dtype: str) -> torch.nn.Module:
        options: Dict[str, Any] = dict(num_layers=config.num_layers, bias=config.bias,
                                       bidirectional=config.bidirectional,
                                       dtype=_TORCH_DTYPES[dtype])
        if config.spec.nonlinearity:
            options["nonlinearity"] = config.nonlinearity
        if config.proj_size:
            options["proj_size"] = config.proj_size
        return self.cls(config.I, config.H, **options)

    def parameters(self, module: torch.nn.Module, config: Config) -> List[torch.Tensor]:
        found = dict(module.named_parameters())
        names = config.param_names()
        like = _like(config.cell)
        for name in names:
            if name not in found:
                raise ValueError(
                    f"{self.name} has no parameter {name!r}: a candidate module must have "
                    f"{like}'s parameter names ({', '.join(names)}); it has "
                    f"{', '.join(found) or 'none'}")
            if tuple(found[name].shape) != config.param_shape(name):
                raise ValueError(f"{self.name}'s parameter {name!r} has shape "
                                 f"{tuple(found[name].shape)}, expected "
                                 f"{config.param_shape(name)} (as {like}'s)")
        return [found[name] for name in names]

    def forward(self, module, problem: _Problem, x, states: Sequence[torch.Tensor]
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Calls ``module(input, hx)`` (the LSTM: ``hx = (h0, c0)``); returns the padded
        output and the final states by key (``h_n``, the LSTM's ``c_n`` too)."""
        config = problem.config
        like = _like(config.cell)
        inp = x
        if config.packed:
            inp = pack_padded_sequence(x, torch.from_numpy(problem.lengths),
                                       enforce_sorted=False)
        count = len(config.states)
        several = count > 1
        result = module(inp, tuple(states) if several else states[0])
        shape = f"(output, ({', '.join(config.finals)}))" if several else \
            f"(output, {config.finals[0]})"
        if not (isinstance(result, tuple) and len(result) == 2) or (
                several and not (isinstance(result[1], tuple) and len(result[1]) == count)):
            got = type(result).__name__ if not isinstance(result, tuple) else \
                f"a tuple of {len(result)}" if len(result) != 2 else \
                f"(output, {type(result[1]).__name__})"
            raise TypeError(f"{self.name}(input, hx) must return {shape} as {like} does, "
                            f"got {got}")
        out, final = result
        if config.packed:
            if not isinstance(out, PackedSequence):
                raise TypeError(f"{self.name}: for a PackedSequence input the output must be "
                                f"a PackedSequence, got {type(out).__name__}")
            out, _ = pad_packed_sequence(out, total_length=config.T)
        finals = dict(zip(config.finals, final if several else (final,)))
        expected = {"output": (config.T, config.B, config.directions * config.output_size)}
        expected.update({k: config.state_shape(k) for k in finals})
        for label, t in (("output", out), *finals.items()):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected[label]:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{self.name}: {label} must have shape {expected[label]}, "
                                 f"got {got}")
        return out, finals

    def run(self, problem: _Problem, dtype: str) -> Dict[str, np.ndarray]:
        config = problem.config
        module = self.build(config, dtype)
        params = self.parameters(module, config)
        tdtype = _TORCH_DTYPES[dtype]
        with torch.no_grad():
            for p, name in zip(params, config.param_names()):
                p.copy_(torch.from_numpy(problem.weights[name]))
        x = torch.tensor(problem.x, dtype=tdtype, requires_grad=True)
        states = [torch.tensor(problem.state(k), dtype=tdtype, requires_grad=True)
                  for k in config.states]
        with torch.enable_grad():
            out, finals = self.forward(module, problem, x, states)
            loss = (out * torch.from_numpy(problem.grad_output).to(tdtype)).sum()
            for key, t in finals.items():
                loss = loss + (t * torch.from_numpy(problem.final_grad(key)).to(tdtype)).sum()
            inputs = [x, *states, *params]
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        result = {"output": out.detach(), **{k: t.detach() for k, t in finals.items()}}
        for key, g, t in zip(["input", *config.states, *config.param_names()], grads, inputs):
            result[key] = torch.zeros_like(t) if g is None else g
        return {k: v.detach().to(torch.float64).numpy() for k, v in result.items()}


class _FiniteDifferences(_ModuleRunner):
    """Outputs from the reference loop's forward; gradients by central differences of the
    loss (4-point stencil) in float64, without autograd."""

    kind = "finite-differences"

    def __init__(self, cell: str = "rnn") -> None:
        super().__init__(_reference_class(cell), "finite differences")

    @staticmethod
    def check_size(config: Config) -> None:
        count = (config.T * config.B * config.I
                 + sum(math.prod(config.state_shape(k)) for k in config.states)
                 + sum(math.prod(config.param_shape(n)) for n in config.param_names()))
        if count > FD_MAX_ELEMENTS:
            raise ValueError(f"finite differences are for small sizes: {config.describe()} has "
                             f"{count} inputs and weights, more than {FD_MAX_ELEMENTS}; "
                             "use a smaller size")

    def run(self, problem: _Problem, dtype: str) -> Dict[str, np.ndarray]:
        config = problem.config
        names = config.param_names()
        self.check_size(config)
        module = self.build(config, "float64")
        params = self.parameters(module, config)
        x = torch.tensor(problem.x)
        states = [torch.tensor(problem.state(k)) for k in config.states]
        gy = torch.from_numpy(problem.grad_output)
        with torch.no_grad():
            for p, name in zip(params, names):
                p.copy_(torch.from_numpy(problem.weights[name]))

            def loss() -> float:
                out, finals = self.forward(module, problem, x, states)
                return float((out * gy).sum() + sum(
                    (t * torch.from_numpy(problem.final_grad(k))).sum()
                    for k, t in finals.items()))

            out, finals = self.forward(module, problem, x, states)
            result = {"output": out.numpy().copy(),
                      **{k: t.numpy().copy() for k, t in finals.items()}}
            step = FD_STEP
            for key, t in zip(["input", *config.states, *names], [x, *states, *params]):
                flat = t.view(-1)
                grad = np.zeros(flat.numel())
                for i in range(flat.numel()):
                    keep = float(flat[i])
                    values = []
                    for offset in (step, -step, 2 * step, -2 * step):
                        flat[i] = keep + offset
                        values.append(loss())
                    flat[i] = keep
                    grad[i] = (8 * (values[0] - values[1]) - (values[2] - values[3])) / (12 * step)
                result[key] = grad.reshape(tuple(t.shape))
        return result


def check_finite_differences_size(config: Config) -> None:
    """A ValueError saying so when ``config`` has more inputs and weights than finite
    differences take (FD_MAX_ELEMENTS)."""
    _FiniteDifferences.check_size(config)


class _BpttRunner:
    """Runs a NumPy bptt of one layer, one direction (see the module docstring for each
    cell's arguments and keys), and optionally its forward."""

    kind = "bptt"

    def __init__(self, bptt: Callable[..., Any], forward: Optional[Callable[..., Any]] = None,
                 name: Optional[str] = None) -> None:
        self.bptt = bptt
        self.forward_fn = forward
        self.name = name or _class_name(bptt)

    def run(self, problem: _Problem, dtype: str) -> Dict[str, np.ndarray]:
        config = problem.config
        npdtype = _NUMPY_DTYPES[dtype]
        keys = config.spec.bptt_arguments
        w = problem.weights
        values = {key: problem.x if key == "x" else
                  w[_bptt_key(key)] if key.startswith(("w_", "b_")) else
                  problem.state(_bptt_key(key))[0] for key in keys}
        args = {k: values[k] for k in keys}

        def arrays() -> List[np.ndarray]:  # fresh copies: a candidate may write into them
            return [np.array(a, dtype=npdtype) for a in args.values()]

        grads = self.bptt(*arrays(), np.array(problem.grad_output, dtype=npdtype))
        if not isinstance(grads, dict):
            raise TypeError(f"{self.name} must return a dict with keys "
                            f"{', '.join(keys)}, got {type(grads).__name__}")
        result = {}
        for key in keys:
            if key not in grads:
                raise ValueError(f"{self.name}'s result has no key {key!r}: it must return a "
                                 f"dict with keys {', '.join(keys)}, got keys "
                                 f"{', '.join(map(repr, grads)) or 'none'}")
            result[_bptt_key(key)] = _as_array(self.name, f"result[{key!r}]", grads[key],
                                                     args[key].shape, f"the shape of {key}")
        for key in config.states:
            result[key] = result[key][None]
        if self.forward_fn is not None:
            y = _as_array(_class_name(self.forward_fn), "its result y",
                          self.forward_fn(*arrays()), (config.T, config.B, config.H),
                          "(T, B, H)")
            result["output"] = y
            result[config.finals[0]] = y[-1][None]
        return result


def _as_array(owner: str, what: str, value: Any, shape: Tuple[int, ...],
              meaning: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {what} must be a NumPy array of floats, got "
                        f"{type(value).__name__}") from None
    if array.shape != tuple(shape):
        raise ValueError(f"{owner}: {what} has shape {array.shape}, expected {tuple(shape)} "
                         f"({meaning})")
    return array


def _runner(candidate: Any, forward: Optional[Callable[..., Any]] = None,
            name: Optional[str] = None, argument: str = "candidate", cell: str = "rnn"):
    if cell not in _names():
        raise ValueError(f"cell must be one of {', '.join(map(repr, _names()))}, got {cell!r}")
    spec = _spec(cell)
    like = _like(cell)
    if isinstance(candidate, str):
        if candidate not in REFERENCES:
            raise ValueError(f"{argument} must be one of {', '.join(REFERENCES)}, a module "
                             f"class or a NumPy bptt function, got {candidate!r}")
        if candidate == "finite-differences":
            return _FiniteDifferences(cell)
        if candidate == "reference":
            return _ModuleRunner(_reference_class(cell))
        if candidate == "torch":
            if not spec.drop_in:
                raise ValueError(f"{argument} 'torch' does not exist for cell {cell!r}: "
                                 f"rnnkern.{spec.title} is not a drop-in for "
                                 f"{_torch_name(cell)} (its parameters have other shapes); "
                                 f"use one of {', '.join(references(cell))}")
            return _ModuleRunner(spec.torch_type())
        return _ModuleRunner(spec.module_type())
    if isinstance(candidate, type):
        if not issubclass(candidate, torch.nn.Module):
            raise TypeError(f"{argument} must be a torch.nn.Module class constructed like "
                            f"{like} or a NumPy bptt function, got the class "
                            f"{_class_name(candidate)}")
        return _ModuleRunner(candidate, name)
    if isinstance(candidate, torch.nn.Module):
        raise TypeError(f"{argument} must be a module class, not an instance: pass "
                        f"{type(candidate).__name__} (it is built like {like} for each "
                        "configuration, with random weights)")
    if callable(candidate):
        return _BpttRunner(candidate, forward, name)
    raise TypeError(f"{argument} must be a torch.nn.Module class constructed like "
                    f"{like} or a NumPy function bptt({', '.join(spec.bptt_arguments)}, "
                    f"grad_y), got {type(candidate).__name__}")


# ----------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class TensorError:
    """How far one tensor of the candidate is from the reference.

    ``max_abs``: max abs(candidate − reference); ``rel``: that over max abs(reference);
    ``allowed_rel``: the bound on ``rel``; ``where``: the worst element in words
    (e.g. ``step 4, row 2, unit 0``) and ``index`` its index."""

    name: str
    key: str
    max_abs: float
    rel: float
    allowed_rel: float
    where: str
    index: Tuple[int, ...]

    @property
    def passed(self) -> bool:
        return self.rel <= self.allowed_rel  # False for NaN

    @property
    def allowed_abs(self) -> float:
        return self.allowed_rel * self.max_abs / self.rel if self.rel > 0 else 0.0


@dataclass(frozen=True)
class Localisation:
    """Where the error enters, found by walking back from the last step.

    ``step``: the step t of the first quantity (walking back) that differs, -1 for the
    gradient reaching the initial state, None when the error is not in the time loop.
    ``quantity``: ``"delta"`` (δ_t, the gradient of step t's pre-activations: for the RNN
    ∂L/∂h_t ⊙ φ'(a_t), for the LSTM and GRU all gates' (4H, 3H); seen in ∂L/∂x_t = δ_t W_ih),
    ``"grad_h"`` (∂L/∂h_t, the gradient that reaches h_t from step t + 1, seen in the ∂L/∂h0
    of the problem started at step t + 1), ``"grad_c"`` (the LSTM's ∂L/∂c_t from step t + 1,
    seen in that problem's ∂L/∂c0), ``"between"`` (δ_t differs and δ_{t+1} agrees, but the
    candidate's results depend on where a step lies in the sequence, so whether the hand-off
    from step t + 1 or step t itself is wrong cannot be told), ``"output"`` (the forward
    pass), ``"after the loop"`` (only weight or bias sums differ) or ``"configuration"``.
    ``"grad_<state>"`` in general, for each of the cell's states.
    ``layer``: for ``"grad_h"`` and ``"grad_c"``, the layer whose gradient differs most."""

    step: Optional[int]
    quantity: str
    message: str
    layer: Optional[int] = None

    def short(self) -> str:
        """A few words for a table cell, e.g. ``step 4 (δ)``."""
        if self.step is None:
            return self.quantity
        if self.quantity == "between":
            return f"steps {self.step + 1}→{self.step}"
        what = {"delta": "δ", "output": "forward"}.get(self.quantity) or \
            f"∂L/∂{self.quantity[len('grad_'):]}"
        return f"{what}0" if self.step == -1 else f"step {self.step} ({what})"


@dataclass
class Report:
    """The result of :func:`compare`; ``str(report)`` is a table."""

    candidate: str
    reference: str
    config: Config
    dtype: str
    tolerance: str
    tensors: List[TensorError]
    localisation: Optional[Localisation] = None
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    @property
    def worst(self) -> TensorError:
        """The tensor furthest beyond (or closest to) its bound."""
        def badness(t: TensorError) -> float:
            if t.allowed_rel > 0:
                return t.rel / t.allowed_rel
            return math.inf if t.rel > 0 else 0.0
        return max(self.tensors, key=badness)

    def failed(self) -> List[TensorError]:
        return [t for t in self.tensors if not t.passed]

    def table(self) -> str:
        verdict = "agree" if self.passed else "DIFFER"
        lines = [f"{self.candidate} against {self.reference}: {self.config.describe()}, "
                 f"{self.dtype} ({self.tolerance}): {verdict}"]
        rows = [("tensor", "max abs err", "rel err", "allowed", "worst element", "")]
        for t in self.tensors:
            rows.append((t.name, f"{t.max_abs:.1e}", f"{t.rel:.1e}", f"{t.allowed_rel:.1e}",
                         t.where, "ok" if t.passed else "FAIL"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if self.localisation is not None:
            lines.append(f"error enters: {self.localisation.message}")
        lines += self.notes
        return "\n".join(lines)

    __str__ = table


def _where(key: str, index: Tuple[int, ...], config: Config, bptt: bool) -> str:
    if key in ("input", "output"):
        t, b, j = index
        if key == "input":
            return f"step {t}, row {b}, feature {j}"
        if config.bidirectional:
            width = config.output_size
            direction = " reverse" if j >= width else ""
            return f"step {t}, row {b}, unit {j % width}{direction}"
        return f"step {t}, row {b}, unit {j}"
    if key in config.states + config.finals:
        ld, b, j = index
        if bptt or (config.num_layers == 1 and not config.bidirectional):
            return f"row {b}, unit {j}"
        layer, direction = divmod(ld, config.directions)
        return f"layer {layer}{' reverse' if direction else ''}, row {b}, unit {j}"
    unit = f"unit {index[0]}"
    gates = config.spec.gates
    if len(gates) > 1 and not key.startswith("weight_hr"):  # rows are gate blocks of H
        gate, j = divmod(index[0], config.H)
        unit = f"gate {gates[gate]}, unit {j}"
    return f"{unit}, column {index[1]}" if len(index) == 2 else unit


def _display(key: str, bptt: bool, config: Config) -> str:
    """A tensor's name in the report: ``grad weight_hh_l0``, for a NumPy bptt ``grad w_hh``
    (and its forward's ``y``)."""
    if key == "output":
        return "y" if bptt else key
    if key in config.finals:
        return key
    if bptt:
        return f"grad {next(a for a in config.spec.bptt_arguments if _bptt_key(a) == key)}"
    return f"grad {key}"


def _output_keys(config: Config) -> Tuple[str, ...]:
    """The forward's tensors: ``output``, ``h_n`` (the LSTM's ``c_n``)."""
    return ("output", *config.finals)


def _errors(candidate: np.ndarray, reference: np.ndarray) -> Tuple[float, float, Tuple[int, ...]]:
    diff = np.abs(candidate - reference)
    diff = np.where(np.isnan(diff), np.inf, diff)
    index = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(reference).max(initial=0.0))
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, rel, tuple(int(i) for i in index)


# ----------------------------------------------------------------------------- comparing

def _config_from(runners, size, num_layers, bidirectional, packed, nonlinearity, bias,
                 cell, proj_size=0) -> Config:
    if size is None:
        size = (5, 3, 4, 6)
    try:
        T, B, I, H = size  # noqa: E741
    except (TypeError, ValueError):
        raise ValueError(f"size must be (T, B, I, H), four positive integers, got {size!r}") \
            from None
    config = Config(T, B, I, H, num_layers, bool(bidirectional), bool(packed), nonlinearity,
                    bool(bias), cell, proj_size)
    _validate_config(config)
    for runner in runners:
        if runner.kind != "bptt":
            continue
        extra = [f"{name}={value!r}" for name, value, plain in
                 (("num_layers", num_layers, 1), ("bidirectional", bidirectional, False),
                  ("packed", packed, False), ("bias", bias, True),
                  ("proj_size", proj_size, 0)) if value != plain]
        if extra:
            raise ValueError(f"{extra[0]} needs a module candidate: a NumPy bptt "
                             f"({runner.name}) is one layer, one direction, unpacked, with "
                             "biases")
    return config


def _tolerances(problem: _Problem, dtype: str, reference_runner, ref: Dict[str, np.ndarray],
                keys: Sequence[str], atol: Optional[float], rtol: Optional[float]
                ) -> Tuple[Dict[str, float], str]:
    """The allowed relative error of each tensor, and the rule in words."""
    scale = {k: float(np.abs(ref[k]).max(initial=0.0)) for k in keys}

    def from_tol(a: float, r: float) -> Dict[str, float]:
        return {k: r + (a / scale[k] if scale[k] > 0 else (0.0 if a == 0 else math.inf))
                for k in keys}

    if atol is not None or rtol is not None:
        a, r = atol or 0.0, rtol or 0.0
        return from_tol(a, r), f"max |error| ≤ {a:g} + {r:g} · max |reference|"
    if dtype == "float64":
        r = FD_RTOL if reference_runner.kind == "finite-differences" else F64_RTOL
        return from_tol(0.0, r), f"relative error ≤ {r:g}"
    # float32: the torch class's own float32 run against the float64 reference
    cell = problem.config.cell
    torch32 = _ModuleRunner(_float32_baseline(cell)).run(problem, "float32")
    exact = ref if reference_runner.kind != "finite-differences" else \
        _ModuleRunner(_reference_class(cell)).run(problem, "float64")
    allowed = {k: F32_FACTOR * max(_errors(torch32[k], exact[k])[1], F32_FLOOR) for k in keys}
    return allowed, f"relative error ≤ {F32_FACTOR:g} × {_float32_name(cell)}'s float32 error"


def compare(candidate: Candidate, reference: Candidate = "reference", *,
            size: Optional[Sequence[int]] = None, num_layers: int = 1,
            bidirectional: bool = False, packed: bool = False, nonlinearity: str = "tanh",
            bias: bool = True, cell: str = "rnn", proj_size: int = 0, dtype: Any = "float64",
            atol: Optional[float] = None, rtol: Optional[float] = None, seed: int = 0,
            forward: Optional[Callable[..., Any]] = None, localise: bool = True,
            name: Optional[str] = None) -> Report:
    """Compares ``candidate`` with ``reference`` on one random problem; returns a Report.

    Args:
        candidate: a torch.nn.Module class constructed like the cell's torch class, a NumPy
            ``bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` (the LSTM's takes
            ``h0, c0``; see the module docstring), or one of the references' names.
        reference: ``"reference"``, ``"torch"`` (for a drop-in cell), ``"rnnkern"``,
            ``"finite-differences"``, or another candidate (always run in float64).
        size: (T, B, I, H); default (5, 3, 4, 6).
        num_layers, bidirectional, nonlinearity, bias, proj_size: as the torch class's
            constructor takes them (module candidates; a NumPy bptt is one layer, one
            direction, with biases); nonlinearity for a cell that takes it (``"rnn"``),
            proj_size for one with a projection (``"lstm"``).
        packed: variable lengths as an unsorted PackedSequence (module candidates).
        cell: a cell of :mod:`rnnkern.cells`: ``"rnn"`` (torch.nn.RNN), ``"lstm"``
            (torch.nn.LSTM), ``"gru"`` (torch.nn.GRU), ….
        dtype: ``"float64"`` or ``"float32"``, the candidate's dtype.
        atol, rtol: a tensor passes when max abs(error) ≤ atol + rtol · max abs(reference).
            Default: float64 rtol 1e-10 (1e-8 against finite differences); float32 relative
            error within 8 times the torch class's own float32 error.
        seed: seed of the random weights, inputs and loss.
        forward: with a NumPy bptt, its forward ``(x, h0, w_ih, w_hh, b_ih, b_hh) -> y``,
            compared too.
        localise: when gradients differ, find the step where the error enters.
        name: the candidate's name in the report.

    The loss is ``Σ output ⊙ grad_output + Σ h_n ⊙ grad_h_n`` (the LSTM's ``+ Σ c_n ⊙
    grad_c_n``; for a NumPy bptt ``Σ y ⊙ grad_y``) with random ``grad_output``,
    ``grad_h_n`` and ``grad_c_n``.
    """
    candidate_runner = _runner(candidate, forward, name, cell=cell)
    reference_runner = _runner(reference, argument="reference", cell=cell)
    dtype = _dtype_name(dtype)
    for label, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0
                                      and math.isfinite(value)):
            raise ValueError(f"{label} must be a finite number ≥ 0, got {value!r}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    config = _config_from((candidate_runner, reference_runner), size, num_layers,
                          bidirectional, packed, nonlinearity, bias, cell, proj_size)
    for runner in (candidate_runner, reference_runner):
        if runner.kind == "finite-differences":
            runner.check_size(config)
    return _compare(candidate_runner, reference_runner, config, dtype, atol, rtol, seed,
                    localise)


def _compare(candidate_runner, reference_runner, config: Config, dtype: str,
             atol: Optional[float], rtol: Optional[float], seed: int, localise: bool) -> Report:
    bptt = candidate_runner.kind == "bptt"
    final_state_grad = "bptt" not in (candidate_runner.kind, reference_runner.kind)
    problem = _make_problem(config, seed, final_state_grad=final_state_grad,
                            float32=dtype == "float32")
    got = candidate_runner.run(problem, dtype)
    ref = reference_runner.run(problem, "float64")
    keys = [k for k in (*_output_keys(config), "input", *config.states, *config.param_names())
            if k in got and k in ref]  # a NumPy bptt has outputs only with its forward
    allowed, rule = _tolerances(problem, dtype, reference_runner, ref, keys, atol, rtol)
    tensors = []
    for key in keys:
        max_abs, rel, index = _errors(got[key], ref[key])
        tensors.append(TensorError(_display(key, bptt, config), key, max_abs, rel, allowed[key],
                                   _where(key, index, config, bptt), index))
    report = Report(candidate_runner.name, reference_runner.name, config, dtype, rule, tensors)
    if not report.passed and localise:
        report.localisation = _localise(candidate_runner, reference_runner, problem, dtype,
                                        report, got, ref, atol, rtol, seed)
    return report


def assert_gradients_close(candidate: Candidate, reference: Candidate = "reference",
                           **options: Any) -> Report:
    """:func:`compare` with the same arguments; raises ``AssertionError`` with the report's
    table when any tensor differs, else returns the report."""
    report = compare(candidate, reference, **options)
    if not report.passed:
        raise AssertionError("gradients differ\n" + report.table())
    return report


# ----------------------------------------------------------------------------- localisation

def _localise(candidate_runner, reference_runner, problem: _Problem, dtype: str,
              report: Report, got, ref, atol, rtol, seed) -> Localisation:
    config = problem.config
    by_key = {t.key: t for t in report.tensors}
    # 1. the forward pass: the first step whose output differs
    if "output" in by_key and not by_key["output"].passed:
        bound = by_key["output"].allowed_abs
        for t in range(config.T):
            if not np.abs(got["output"][t] - ref["output"][t]).max() <= bound:
                return Localisation(t, "output", f"step {t}: the forward pass differs first "
                                    f"at output step {t} (the gradients follow from a "
                                    "different forward and are not localised)")
    for index, key in enumerate(config.finals):
        if key in by_key and not by_key[key].passed:
            agree = "the output agrees" + "".join(f" and {k} agrees"
                                                  for k in config.finals[:index])
            return Localisation(None, "output", f"{agree} but {key} does not: {key} must be "
                                "each sequence's state at its own last step")
    # 2. bidirectional or packed: localise on one direction, unpacked
    if config.bidirectional or config.packed:
        simple = replace(config, bidirectional=False, packed=False)
        inner = _compare(candidate_runner, reference_runner, simple, dtype, atol, rtol, seed,
                         localise=True)
        what = " and ".join(w for w, on in (("bidirectional", config.bidirectional),
                                             ("packed", config.packed)) if on)
        if inner.passed and config.bidirectional and config.packed:
            packed_only = _compare(candidate_runner, reference_runner,
                                   replace(config, bidirectional=False), dtype, atol, rtol,
                                   seed, localise=False)
            what = "bidirectional" if packed_only.passed else "packed"
        if inner.passed:
            return Localisation(None, "configuration", f"with one direction and no packing "
                                f"({simple.describe()}) every tensor agrees: the error comes "
                                f"with {what}")
        loc = inner.localisation
        return replace(loc, message=f"{loc.message} (found on {simple.describe()}, one "
                                    "direction, no packing)")
    # 3. walk back from the last step: δ_t through ∂L/∂x_t = δ_t W_ih of the full problem,
    #    then ∂L/∂h_{t-1} (and the LSTM's ∂L/∂c_{t-1}) through the ∂L/∂h0 (∂L/∂c0) of the same
    #    problem started at step t. That restart runs step t as the candidate's first step, so
    #    it shows the full problem's hand-off only if the candidate does the same wherever a
    #    step lies: `doubt` records the evidence that it does not (its δ differ in the restart
    #    where the full problem's agree, or only its hand-off to the initial state is wrong),
    #    and then restarts are no longer used.
    gradients = [t for t in report.tensors if t.key not in _output_keys(config)]
    rel_bound = max(t.allowed_rel for t in gradients)
    x_bound = by_key["input"].allowed_abs if "input" in by_key else math.inf
    no_forward = candidate_runner.kind == "bptt" and candidate_runner.forward_fn is None

    def delta_differs(t: int) -> bool:
        return not np.abs(got["input"][t] - ref["input"][t]).max() <= x_bound

    def last_differing(c, r) -> Optional[int]:
        """The last step whose ∂L/∂x differs (the first walking back), or None."""
        for i in range(c["input"].shape[0] - 1, -1, -1):
            if not np.abs(c["input"][i] - r["input"][i]).max() <= x_bound:
                return i
        return None

    states = _layer_states(problem)

    def restart(t: int) -> _Problem:
        return problem.suffix(t, {k: np.stack([layer[k][t - 1] for layer in states])
                                  for k in config.states})

    last = max(0, config.T - LOCALISE_MAX_STEPS)
    doubt: Optional[str] = None
    for t in range(config.T - 1, last - 1, -1):
        if delta_differs(t):
            if t == config.T - 1:
                return Localisation(t, "delta", _delta_message(t, config, no_forward))
            doubt = doubt or _reproduced(candidate_runner, reference_runner, problem,
                                         restart, t, dtype, seed, last_differing)
            if doubt:
                return Localisation(t, "between",
                                    _between_message(t, config, doubt, no_forward))
            return Localisation(t, "delta", _delta_message(t, config, no_forward))
        if t > 0 and doubt:
            continue
        if t > 0:
            start = restart(t)
            c, r = candidate_runner.run(start, dtype), reference_runner.run(start, "float64")
            shown = last_differing(c, r)
            if shown is not None:
                doubt = (f"restarted at step {t}, its δ_{t + shown} differs, where the full "
                         "problem's agrees")
                continue
        else:
            c, r = got, ref
        for key in config.states:
            diff = np.abs(c[key] - r[key]).reshape(c[key].shape[0], -1).max(axis=1)
            diff = np.where(np.isnan(diff), np.inf, diff)
            if diff.max() <= rel_bound * np.abs(r[key]).max():
                continue
            if t > 0 and not delta_differs(t - 1):
                doubt = (f"restarted at step {t}, its gradient to the initial state differs "
                         f"while the full problem's δ_{t - 1} agrees")
                break
            layer = int(np.argmax(diff))
            quantity = f"grad_{config.spec.states[config.states.index(key)]}"
            return Localisation(t - 1, quantity, _hand_off_message(t, layer, config, key),
                                layer)
    if last > 0:
        return Localisation(None, "unknown", f"steps {config.T - 1} down to {last} agree; "
                            f"localisation stops after {LOCALISE_MAX_STEPS} steps")
    names = ", ".join(t.name for t in report.failed())
    initial = _and([f"∂L/∂{state}0" for state in config.spec.states])
    return Localisation(None, "after the loop", f"every ∂L/∂x_t agrees, and so does "
                        f"{initial}, so every δ_t is right: the error is in the sums after "
                        f"the loop ({names})")


def _extended(problem: _Problem, before: int, after: int, seed: int, float32: bool
              ) -> _Problem:
    """The problem with ``before`` random steps (and a random initial state) in front and
    ``after`` random steps behind, whose ∂L/∂y are zero; with steps behind, the final states'
    gradients are zero too (they would reach a later step)."""
    config = problem.config
    rng = np.random.default_rng(seed + 1)
    B, I = config.B, config.I  # noqa: E741

    def steps(n: int, width: int) -> np.ndarray:
        return rng.standard_normal((n, B, width))
    x = np.concatenate([steps(before, I), problem.x, steps(after, I)])
    zeros = np.zeros((1, B, problem.grad_output.shape[2]))
    grad_output = np.concatenate([zeros] * before + [problem.grad_output] + [zeros] * after)
    states = {k: 0.5 * rng.standard_normal(v.shape) if before else v
              for k, v in problem.states.items()}  # in the order of the cell's states
    final_grads = {k: g * 0 if after else g for k, g in problem.final_grads.items()}
    if float32:
        x = x.astype(np.float32).astype(np.float64)
        states = {k: v.astype(np.float32).astype(np.float64) for k, v in states.items()}
    return _Problem(replace(config, T=config.T + before + after), x, states, problem.weights,
                    grad_output, final_grads)


def _reproduced(candidate_runner, reference_runner, problem: _Problem, restart, t: int,
                dtype: str, seed: int, last_differing) -> Optional[str]:
    """δ_t is the first to differ walking back, and the restart at step t + 1 handed off
    right. Whether that clears the hand-off of the full problem: the same error must show at
    step t when step t lies elsewhere in the sequence (the problem restarted at step t, or
    with a step in front when t = 0; and with a step behind). None when it does, else the
    evidence that it does not, in words."""
    T = problem.config.T
    float32 = dtype == "float32"
    trials = [(restart(t), 0, f"restarted at step {t}") if t > 0 else
              (_extended(problem, 1, 0, seed, float32), 1, "with a step before step 0"),
              (_extended(problem, 0, 1, seed, float32), t, f"with a step after step {T - 1}")]
    for shifted, index, how in trials:
        found = last_differing(candidate_runner.run(shifted, dtype),
                               reference_runner.run(shifted, "float64"))
        if found == index:
            continue
        offset = t - index  # the full problem's step of the shifted problem's index
        if found is None or found < index:
            return f"{how}, its δ_{t} agrees"
        return f"{how}, its δ_{found + offset} differs, where the full problem's agrees"
    return None


# What δ_t is, where an error in it arises and what step t sends back to step t - 1 are
# each cell's spec's (delta, error_inside, hand_offs: docs/design.md 1, 1b).


# A NumPy bptt given without its forward: its own forward was never compared.
_NO_FORWARD = ("the forward was not checked (no forward was given: forward=, or --forward in "
               "rnnkern check), so the error may be in the candidate's own forward")


def _delta_message(t: int, config: Config, no_forward: bool = False) -> str:
    spec = config.spec
    delta = spec.delta.format(t=t)
    inside = spec.error_inside.format(t=t)
    several = len(spec.states) > 1
    if t == config.T - 1:
        names = _and([f"∂L/∂{state}_{t}" for state in spec.states])
        carried = (f"{names} are only the loss's own gradients", f"{names} are formed") \
            if several else (f"{names} is only the loss's own gradient", f"{names} is formed")
        seen = (f"step {t} (the last): {delta} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while "
                f"{carried[0]} there")
        if no_forward:
            return (f"{seen}; {_NO_FORWARD}, at step {t} or before, or in its backward inside "
                    f"step {t}, {inside} or in how {carried[1]}")
        return f"{seen}: the error is inside step {t}, {inside} or in how {carried[1]}"
    targets = _and([f"{state}_{t}" for state in spec.states])
    sent = f"the gradients sent back from step {t + 1} to {targets} agree" if several else \
        f"the gradient sent back from step {t + 1} to {targets} agrees"
    seen = f"step {t}: {delta} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while {sent}"
    cause = f"{inside} or in adding ∂L/∂y_{t} and the gradient from step {t + 1}"
    if no_forward:
        return f"{seen}; {_NO_FORWARD}, or in its backward inside step {t}, {cause}"
    return f"{seen}: the error is inside step {t}, {cause}"


def _between_message(t: int, config: Config, doubt: str, no_forward: bool) -> str:
    """δ_t differs and δ_{t+1} agrees, but whether the hand-off from step t + 1 is right is
    not known (``doubt`` says why)."""
    delta = config.spec.delta.format(t=t)
    target = _and([f"{state}_{t}" for state in config.spec.states])
    message = (f"step {t}: {delta} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while δ_{t + 1} "
               f"agrees: the error enters between steps {t + 1} and {t}, in what step {t + 1} "
               f"sends back to {target} or inside step {t}, and which cannot be told: "
               f"{doubt}, so what the candidate computes at a step depends on where the step "
               "lies (an absolute step, a chunk boundary, the length), and a restarted "
               "problem does not show its hand-off")
    return f"{message}; {_NO_FORWARD}" if no_forward else message


def _hand_off_message(t: int, layer: int, config: Config, key: str) -> str:
    """∂L/∂h_{t-1} (key "hx") or ∂L/∂c_{t-1} ("cx") differs while δ_t agrees."""
    spec = config.spec
    index = config.states.index(key)
    state = spec.states[index]
    how = spec.hand_off(index).format(t=t)
    where = f" of layer {layer}" if config.num_layers > 1 else ""
    if t > 0:
        target = f"{state}_{t - 1}" if len(spec.states) > 1 else f"step {t - 1}"
        return (f"step {t - 1}: ∂L/∂{state}_{t - 1}{where} differs while δ_{t} agrees: the "
                f"gradient sent back from step {t} to {target} is wrong ({how})")
    return (f"∂L/∂{state}0{where} differs while every δ_t agrees: the gradient sent back from "
            f"step 0 to the initial state {state}0 is wrong ({how})")


# ----------------------------------------------------------------------------- gradcheck

def gradcheck(candidate: type, *, size: Sequence[int] = (3, 2, 2, 3), num_layers: int = 1,
              bidirectional: bool = False, packed: bool = False, nonlinearity: str = "tanh",
              bias: bool = True, cell: str = "rnn", proj_size: int = 0, seed: int = 0) -> bool:
    """``torch.autograd.gradcheck`` in float64 of a module class built like the cell's torch
    class, with respect to its input, initial state(s) and every parameter. Keep the size
    tiny. Returns True, or raises ``torch.autograd.gradcheck.GradcheckError`` saying which
    Jacobian differs."""
    runner = _runner(candidate, cell=cell)
    if runner.kind != "module":
        raise TypeError(f"gradcheck needs a module class built like {_like(cell)}, got "
                        f"{type(candidate).__name__}")
    config = _config_from((runner,), size, num_layers, bidirectional, packed, nonlinearity,
                          bias, cell, proj_size)
    problem = _make_problem(config, seed, final_state_grad=True, float32=False)
    module = runner.build(config, "float64")
    runner.parameters(module, config)  # the torch class's names and shapes, or a clear error
    names = config.param_names()
    count = len(config.states)

    def function(x, *tensors):
        states, weights = tensors[:count], tensors[count:]

        def call(inp, h):
            return torch.func.functional_call(module, dict(zip(names, weights)), (inp, h))
        out, finals = runner.forward(call, problem, x, states)
        return (out, *finals.values())

    inputs = [torch.tensor(problem.x, requires_grad=True),
              *[torch.tensor(problem.state(k), requires_grad=True) for k in config.states],
              *[torch.tensor(problem.weights[n], requires_grad=True) for n in names]]
    return bool(torch.autograd.gradcheck(function, inputs))
