"""Gradient checks for anyone's BPTT: compare a candidate with an oracle, and say where it parts.

Three cells (``cell=``): ``"rnn"`` (torch.nn.RNN), ``"lstm"`` (torch.nn.LSTM), ``"gru"``
(torch.nn.GRU). A *candidate* is one of:

- a ``torch.nn.Module`` class constructed like the cell's torch class (``rnnkern.RNN``,
  ``rnnkern.LSTM``, ``torch.nn.GRU``, your own layer), with its parameter names
  (``weight_ih_l0``, ``bias_hh_l1_reverse``, ``weight_hr_l0`` with ``proj_size``, …) and called
  as ``module(input, hx)`` → ``(output, h_n)`` (the LSTM: ``module(input, (h0, c0))`` →
  ``(output, (h_n, c_n))``) with time-major input or a ``PackedSequence``;
- a NumPy function that returns the gradients of ``L = Σ y ⊙ grad_y`` for one layer, one
  direction (shapes as in DESIGN.md sections 1 and 1b, weights with torch's gate order):
  ``bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` with the keys
  ``x, h0, w_ih, w_hh, b_ih, b_hh`` for the RNN and the GRU, and for the LSTM
  ``bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` with the keys
  ``x, h0, c0, w_ih, w_hh, b_ih, b_hh``; optionally with its NumPy forward, the same
  arguments without ``grad_y``, returning ``y``.

A *reference* is ``"reference"`` (:mod:`rnnkern.reference`, a plain autograd loop),
``"torch"`` (the torch class), ``"rnnkern"`` (``rnnkern.RNN``/``LSTM``/``GRU``, the kernels),
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

# DESIGN.md section 5: float64 within 1e-10 (relative to the largest value of the tensor);
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
# A NumPy bptt's arguments (before grad_y) and the canonical key of each gradient.
_BPTT_ARGUMENTS = {
    "rnn": ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
    "gru": ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
    "lstm": ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"),
}
_BPTT_CANONICAL = {"x": "input", "h0": "hx", "c0": "cx", "w_ih": "weight_ih_l0",
                   "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}
Candidate = Union[type, Callable[..., Any], str]


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Config:
    """One configuration: sizes (T steps, B rows, I inputs, H hidden units) and the options
    that the cell's torch class takes. ``packed``: variable lengths (1 … T, the longest T) as
    an unsorted PackedSequence. ``nonlinearity`` is the Elman cell's only; ``proj_size`` the
    LSTM's only (0: none)."""

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
    def states(self) -> Tuple[str, ...]:
        """The initial-state keys: ``("hx",)``, the LSTM ``("hx", "cx")``."""
        return ("hx", "cx") if self.cell == "lstm" else ("hx",)

    def describe(self) -> str:
        """e.g. ``7x3x5x17 L2 bi packed tanh`` or ``6x4x3x5 proj3 lstm``."""
        parts = [f"{self.T}x{self.B}x{self.I}x{self.H}"]
        parts += [f"L{self.num_layers}"] if self.num_layers > 1 else []
        parts += ["bi"] if self.bidirectional else []
        parts += ["packed"] if self.packed else []
        parts += ["no-bias"] if not self.bias else []
        parts += [f"proj{self.proj_size}"] if self.proj_size else []
        parts += [self.nonlinearity] if self.cell == "rnn" else [self.cell]
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
        layer = int(name.split("_l")[1].split("_")[0])
        rows = _cells.get(self.cell).gate_count * self.H
        if name.startswith("bias"):
            return (rows,)
        if name.startswith("weight_hr"):
            return (self.proj_size, self.H)
        if name.startswith("weight_hh"):
            return (rows, self.output_size)
        return (rows, self.I if layer == 0 else self.directions * self.output_size)

    def state_shape(self, key: str) -> Tuple[int, ...]:
        """``hx``/``h_n`` (L·D, B, P or H) and ``cx``/``c_n`` (L·D, B, H)."""
        width = self.H if key in ("cx", "c_n") else self.output_size
        return (self.num_layers * self.directions, self.B, width)


def _validate_config(config: Config) -> None:
    sizes = (config.T, config.B, config.I, config.H)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ValueError(f"size must be (T, B, I, H), four positive integers, got {sizes}")
    if config.cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, "
                         f"got {config.cell!r}")
    if not (isinstance(config.num_layers, int) and config.num_layers > 0):
        raise ValueError(f"num_layers must be a positive integer, got {config.num_layers!r}")
    if config.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {config.nonlinearity!r}")
    if config.cell != "rnn" and config.nonlinearity != "tanh":
        raise ValueError(f"nonlinearity applies to cell 'rnn' only, got "
                         f"nonlinearity={config.nonlinearity!r} with cell={config.cell!r}")
    proj = config.proj_size
    if not (isinstance(proj, int) and not isinstance(proj, bool) and proj >= 0):
        raise ValueError(f"proj_size must be an integer ≥ 0, got {proj!r}")
    if proj and config.cell != "lstm":
        raise ValueError(f"proj_size applies to cell 'lstm' only, got proj_size={proj} with "
                         f"cell={config.cell!r}")
    if proj >= config.H:
        raise ValueError(f"proj_size must be smaller than H = {config.H} (as torch.nn.LSTM "
                         f"requires), got {proj}")


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
    x: np.ndarray                # (T, B, I), zero past each row's length when packed
    hx: np.ndarray               # (L·D, B, P or H)
    weights: Dict[str, np.ndarray]
    grad_output: np.ndarray      # (T, B, D·P or D·H), zero past each row's length
    grad_h_n: np.ndarray         # like hx
    lengths: Optional[np.ndarray] = None
    cx: Optional[np.ndarray] = None        # the LSTM's: (L·D, B, H)
    grad_c_n: Optional[np.ndarray] = None  # like cx

    def state(self, key: str) -> np.ndarray:
        return {"hx": self.hx, "cx": self.cx}[key]

    def final_grad(self, key: str) -> np.ndarray:
        return {"h_n": self.grad_h_n, "c_n": self.grad_c_n}[key]

    def suffix(self, start: int, states: Dict[str, np.ndarray]) -> "_Problem":
        """The same loss from step ``start`` on: every layer's state at step ``start - 1``
        (``states["hx"]`` (L, B, P or H), for the LSTM ``states["cx"]`` too) becomes the
        initial state. One direction, no packing."""
        config = replace(self.config, T=self.config.T - start)
        return _Problem(config, self.x[start:], states["hx"], self.weights,
                        self.grad_output[start:], self.grad_h_n, cx=states.get("cx"),
                        grad_c_n=self.grad_c_n)


def _make_problem(config: Config, seed: int, final_state_grad: bool,
                  float32: bool) -> _Problem:
    rng = np.random.default_rng(seed)
    T, B, I, H, D = config.T, config.B, config.I, config.H, config.directions
    k = 1 / math.sqrt(H)
    x = rng.standard_normal((T, B, I))
    hx = 0.5 * rng.standard_normal(config.state_shape("hx"))
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
    problem = _Problem(config, x, hx, weights, grad_output, grad_h_n, lengths)
    if config.cell == "lstm":  # drawn last, so the other arrays are those of the same seed
        shape = config.state_shape("cx")
        problem.cx = 0.5 * rng.standard_normal(shape)
        problem.grad_c_n = rng.standard_normal(shape) if final_state_grad else np.zeros(shape)
    if float32:  # the float64 oracle then sees exactly the values the float32 run sees
        for name in ("x", "hx", "grad_output", "grad_h_n", "cx", "grad_c_n"):
            if getattr(problem, name) is not None:
                setattr(problem, name,
                        getattr(problem, name).astype(np.float32).astype(np.float64))
        problem.weights = {n: w.astype(np.float32).astype(np.float64) for n, w in weights.items()}
    return problem


# ----------------------------------------------------------------------------- the oracle

def _layer_weights(module: torch.nn.Module, layer: int, suffix: str = "") -> List[Any]:
    """(w_ih, w_hh, b_ih, b_hh) of one layer-direction (biases None without bias), and w_hr
    (None without proj_size) for the LSTM."""
    def get(kind: str) -> Optional[torch.Tensor]:
        return getattr(module, f"{kind}_l{layer}{suffix}", None)
    weights = [get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")]
    return weights + [get("weight_hr")] if isinstance(module, torch.nn.LSTM) else weights


def _reference_layer(cell: str, nonlinearity: str, layer_input, state, weights,
                     batch_sizes=None, reverse: bool = False):
    """One layer-direction by :mod:`rnnkern.reference`: (output, state at the last step);
    ``state`` is h0, or for the LSTM (h0, c0)."""
    if cell == "lstm":
        return _reference_module.lstm(layer_input, state, *weights, batch_sizes=batch_sizes,
                                      reverse=reverse)
    if cell == "gru":
        return _reference_module.gru(layer_input, state, *weights, batch_sizes=batch_sizes,
                                     reverse=reverse)
    return _reference_module.rnn(layer_input, state, *weights, nonlinearity,
                                 batch_sizes=batch_sizes, reverse=reverse)


def _reference_forward(module: torch.nn.RNNBase, cell: str, input, hx):
    """The torch class's input and state handling around :func:`_reference_layer`, layer by
    layer and direction by direction (no dropout)."""
    packed = isinstance(input, PackedSequence)
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None and sorted_indices is not None:
            hx = tuple(h.index_select(1, sorted_indices) for h in hx) if cell == "lstm" \
                else hx.index_select(1, sorted_indices)
        batch = int(batch_sizes[0])
    else:
        data, batch_sizes = input, None
        batch = input.shape[1]
    D = 2 if module.bidirectional else 1
    if hx is None:
        h0 = data.new_zeros(module.num_layers * D, batch,
                            getattr(module, "proj_size", 0) or module.hidden_size)
        hx = (h0, data.new_zeros(module.num_layers * D, batch, module.hidden_size)) \
            if cell == "lstm" else h0
    nonlinearity = "relu" if module.mode == "RNN_RELU" else "tanh"
    layer_input, finals = data, []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(D):
            index = layer * D + direction
            state = (hx[0][index], hx[1][index]) if cell == "lstm" else hx[index]
            out, final = _reference_layer(cell, nonlinearity, layer_input, state,
                                          _layer_weights(module, layer, "_reverse" * direction),
                                          batch_sizes, direction == 1)
            outputs.append(out)
            finals.append(final if cell == "lstm" else (final,))
        layer_input = torch.cat(outputs, -1)
    states = [torch.stack(column) for column in zip(*finals)]
    if packed and unsorted_indices is not None:
        states = [s.index_select(1, unsorted_indices) for s in states]
    state = tuple(states) if cell == "lstm" else states[0]
    if packed:
        return PackedSequence(layer_input, batch_sizes, sorted_indices, unsorted_indices), state
    return layer_input, state


class _ReferenceRNN(torch.nn.RNN):
    """torch.nn.RNN's parameters and input handling, computed by :func:`rnnkern.reference.rnn`."""

    def forward(self, input, hx=None):  # type: ignore[override]
        return _reference_forward(self, "rnn", input, hx)


class _ReferenceLSTM(torch.nn.LSTM):
    """torch.nn.LSTM's, computed by :func:`rnnkern.reference.lstm`."""

    def forward(self, input, hx=None):  # type: ignore[override]
        return _reference_forward(self, "lstm", input, hx)


class _ReferenceGRU(torch.nn.GRU):
    """torch.nn.GRU's, computed by :func:`rnnkern.reference.gru`."""

    def forward(self, input, hx=None):  # type: ignore[override]
        return _reference_forward(self, "gru", input, hx)


_REFERENCE_CLASSES = {"rnn": _ReferenceRNN, "lstm": _ReferenceLSTM, "gru": _ReferenceGRU}


def _layer_states(problem: _Problem) -> List[Dict[str, np.ndarray]]:
    """Every layer's states at every step, float64, from the reference loop (one direction,
    no packing): per layer ``{"hx": (T, B, P or H)}``, for the LSTM with ``"cx"`` (T, B, H)."""
    config = problem.config
    layers = []
    with torch.no_grad():
        layer_input = torch.from_numpy(problem.x)
        for layer in range(config.num_layers):
            weights = [None if problem.weights.get(name) is None else
                       torch.from_numpy(problem.weights[name]) for name in
                       (f"{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih",
                                                        "bias_hh", "weight_hr"))]
            weights = weights if config.cell == "lstm" else weights[:4]
            state = tuple(torch.from_numpy(problem.state(k)[layer]) for k in config.states)
            steps: Dict[str, List[Any]] = {k: [] for k in config.states}
            for t in range(config.T):  # step by step: the LSTM's c_t is not an output
                _, final = _reference_layer(config.cell, config.nonlinearity,
                                            layer_input[t:t + 1],
                                            state if config.cell == "lstm" else state[0],
                                            weights)
                state = tuple(final) if config.cell == "lstm" else (final,)
                for key, value in zip(config.states, state):
                    steps[key].append(value)
            found = {k: torch.stack(v).numpy() for k, v in steps.items()}
            layers.append(found)
            layer_input = torch.from_numpy(found["hx"])
    return layers


# ----------------------------------------------------------------------------- runners

_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32}


def _class_name(cls: Any) -> str:
    known = {(torch.nn.RNN.__module__, n): f"torch.nn.{n}" for n in ("RNN", "LSTM", "GRU")}
    known.update({("rnnkern.modules", n): f"rnnkern.{n}" for n in ("RNN", "LSTM", "GRU")})
    known.update({(__name__, f"_Reference{n}"): "rnnkern.reference" for n in ("RNN", "LSTM",
                                                                               "GRU")})
    module = getattr(cls, "__module__", "") or ""
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None) or repr(cls)
    if (module, qualname) in known:
        return known[module, qualname]
    return f"{module}.{qualname}" if module and module != "__main__" else qualname


def _torch_name(cell: str) -> str:
    return f"torch.nn.{_cells.get(cell).torch_type().__name__}"


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
        if config.cell == "rnn":
            options["nonlinearity"] = config.nonlinearity
        if config.proj_size:
            options["proj_size"] = config.proj_size
        return self.cls(config.I, config.H, **options)

    def parameters(self, module: torch.nn.Module, config: Config) -> List[torch.Tensor]:
        found = dict(module.named_parameters())
        names = config.param_names()
        like = _torch_name(config.cell)
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
        like = _torch_name(config.cell)
        inp = x
        if config.packed:
            inp = pack_padded_sequence(x, torch.from_numpy(problem.lengths),
                                       enforce_sorted=False)
        lstm = config.cell == "lstm"
        result = module(inp, tuple(states) if lstm else states[0])
        shape = "(output, (h_n, c_n))" if lstm else "(output, h_n)"
        if not (isinstance(result, tuple) and len(result) == 2) or (
                lstm and not (isinstance(result[1], tuple) and len(result[1]) == 2)):
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
        finals = dict(zip(("h_n", "c_n"), final if lstm else (final,)))
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
        super().__init__(_REFERENCE_CLASSES[cell], "finite differences")

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
        keys = _BPTT_ARGUMENTS[config.cell]
        w = problem.weights
        values = {"x": problem.x, "h0": problem.hx[0],
                  "c0": None if problem.cx is None else problem.cx[0],
                  "w_ih": w["weight_ih_l0"], "w_hh": w["weight_hh_l0"],
                  "b_ih": w["bias_ih_l0"], "b_hh": w["bias_hh_l0"]}
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
            result[_BPTT_CANONICAL[key]] = _as_array(self.name, f"result[{key!r}]", grads[key],
                                                     args[key].shape, f"the shape of {key}")
        for key in config.states:
            result[key] = result[key][None]
        if self.forward_fn is not None:
            y = _as_array(_class_name(self.forward_fn), "its result y",
                          self.forward_fn(*arrays()), (config.T, config.B, config.H),
                          "(T, B, H)")
            result["output"] = y
            result["h_n"] = y[-1][None]
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
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    like = _torch_name(cell)
    if isinstance(candidate, str):
        if candidate not in REFERENCES:
            raise ValueError(f"{argument} must be one of {', '.join(REFERENCES)}, a module "
                             f"class or a NumPy bptt function, got {candidate!r}")
        if candidate == "finite-differences":
            return _FiniteDifferences(cell)
        if candidate == "reference":
            return _ModuleRunner(_REFERENCE_CLASSES[cell])
        if candidate == "torch":
            return _ModuleRunner(_cells.get(cell).torch_type())
        from . import modules
        return _ModuleRunner({"rnn": modules.RNN, "lstm": modules.LSTM,
                              "gru": modules.GRU}[cell])
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
                    f"{like} or a NumPy function bptt({', '.join(_BPTT_ARGUMENTS[cell])}, "
                    f"grad_y), got {type(candidate).__name__}")


# ----------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class TensorError:
    """How far one tensor of the candidate is from the reference.

    ``max_abs``: max |candidate − reference|; ``rel``: that over max |reference|;
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
        what = {"delta": "δ", "grad_h": "∂L/∂h", "grad_c": "∂L/∂c",
                "output": "forward"}[self.quantity]
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
    if key in ("hx", "h_n", "cx", "c_n"):
        ld, b, j = index
        if bptt or (config.num_layers == 1 and not config.bidirectional):
            return f"row {b}, unit {j}"
        layer, direction = divmod(ld, config.directions)
        return f"layer {layer}{' reverse' if direction else ''}, row {b}, unit {j}"
    unit = f"unit {index[0]}"
    if config.cell != "rnn" and not key.startswith("weight_hr"):  # rows are gate blocks of H
        gate, j = divmod(index[0], config.H)
        unit = f"gate {_GATE_NAMES[config.cell][gate]}, unit {j}"
    return f"{unit}, column {index[1]}" if len(index) == 2 else unit


_GATE_NAMES = {"lstm": "ifgo", "gru": "rzn"}


_BPTT_NAMES = {"output": "y", "h_n": "h_n", "input": "grad x", "hx": "grad h0", "cx": "grad c0",
               "weight_ih_l0": "grad w_ih", "weight_hh_l0": "grad w_hh",
               "bias_ih_l0": "grad b_ih", "bias_hh_l0": "grad b_hh"}


def _display(key: str, bptt: bool) -> str:
    if bptt:
        return _BPTT_NAMES[key]
    return key if key in _OUTPUT_KEYS else f"grad {key}"


_OUTPUT_KEYS = ("output", "h_n", "c_n")


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
    torch32 = _ModuleRunner(_cells.get(cell).torch_type()).run(problem, "float32")
    exact = ref if reference_runner.kind != "finite-differences" else \
        _ModuleRunner(_REFERENCE_CLASSES[cell]).run(problem, "float64")
    allowed = {k: F32_FACTOR * max(_errors(torch32[k], exact[k])[1], F32_FLOOR) for k in keys}
    return allowed, f"relative error ≤ {F32_FACTOR:g} × {_torch_name(cell)}'s float32 error"


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
        reference: ``"reference"``, ``"torch"``, ``"rnnkern"``, ``"finite-differences"``, or
            another candidate (always run in float64).
        size: (T, B, I, H); default (5, 3, 4, 6).
        num_layers, bidirectional, nonlinearity, bias, proj_size: as the torch class's
            constructor takes them (module candidates; a NumPy bptt is one layer, one
            direction, with biases); nonlinearity for ``"rnn"`` only, proj_size for
            ``"lstm"`` only.
        packed: variable lengths as an unsorted PackedSequence (module candidates).
        cell: ``"rnn"`` (torch.nn.RNN), ``"lstm"`` (torch.nn.LSTM) or ``"gru"``
            (torch.nn.GRU).
        dtype: ``"float64"`` or ``"float32"``, the candidate's dtype.
        atol, rtol: a tensor passes when max |error| ≤ atol + rtol · max |reference|.
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
    keys = [k for k in (*_OUTPUT_KEYS, "input", *config.states, *config.param_names())
            if k in got and k in ref]  # a NumPy bptt has outputs only with its forward
    allowed, rule = _tolerances(problem, dtype, reference_runner, ref, keys, atol, rtol)
    tensors = []
    for key in keys:
        max_abs, rel, index = _errors(got[key], ref[key])
        tensors.append(TensorError(_display(key, bptt), key, max_abs, rel, allowed[key],
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
    for key in ("h_n", "c_n"):
        if key in by_key and not by_key[key].passed:
            agree = "the output agrees" + (" and h_n agrees" if key == "c_n" else "")
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
    gradients = [t for t in report.tensors if t.key not in _OUTPUT_KEYS]
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
            quantity = "grad_c" if key == "cx" else "grad_h"
            return Localisation(t - 1, quantity, _hand_off_message(t, layer, config, key),
                                layer)
    if last > 0:
        return Localisation(None, "unknown", f"steps {config.T - 1} down to {last} agree; "
                            f"localisation stops after {LOCALISE_MAX_STEPS} steps")
    names = ", ".join(t.name for t in report.failed())
    initial = "∂L/∂h0 and ∂L/∂c0" if config.cell == "lstm" else "∂L/∂h0"
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
    hx = 0.5 * rng.standard_normal(problem.hx.shape) if before else problem.hx
    cx = problem.cx
    if cx is not None and before:
        cx = 0.5 * rng.standard_normal(cx.shape)
    grad_h_n = problem.grad_h_n * 0 if after else problem.grad_h_n
    grad_c_n = None if problem.grad_c_n is None else \
        problem.grad_c_n * 0 if after else problem.grad_c_n
    if float32:
        x, hx = x.astype(np.float32).astype(np.float64), hx.astype(np.float32).astype(np.float64)
        cx = None if cx is None else cx.astype(np.float32).astype(np.float64)
    return _Problem(replace(config, T=config.T + before + after), x, hx, problem.weights,
                    grad_output, grad_h_n, cx=cx, grad_c_n=grad_c_n)


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


# What δ_t is, and what step t sends back to step t - 1, for each cell (DESIGN.md 1, 1b).
_DELTA = {"rnn": "δ_{t}", "lstm": "δ_{t} = [da_i da_f da_g da_o]_{t}",
          "gru": "δ_{t} = [da_r da_z da_n]_{t}"}
_INSIDE = {"rnn": "in the φ'(a_{t}) factor", "lstm": "in a gate's derivative, in dc_{t}",
           "gru": "in a gate's derivative"}
_HAND_OFF = {("rnn", "hx"): "it is δ_{t} W_hh: W_hh itself, not its transpose",
             ("gru", "hx"): "it is δ_{t} W_hh + ∂L/∂h_{t} ⊙ z_{t}, with the n block of δ_{t} "
                            "times r_{t}",
             ("lstm", "hx"): "it is δ_{t} W_hh, all four gate blocks: W_hh itself, not its "
                             "transpose",
             ("lstm", "cx"): "it is dc_{t} ⊙ f_{t}"}


# A NumPy bptt given without its forward: its own forward was never compared.
_NO_FORWARD = ("the forward was not checked (no forward was given: forward=, or --forward in "
               "rnnkern check), so the error may be in the candidate's own forward")


def _delta_message(t: int, config: Config, no_forward: bool = False) -> str:
    delta = _DELTA[config.cell].format(t=t)
    inside = _INSIDE[config.cell].format(t=t)
    if t == config.T - 1:
        carried = (f"∂L/∂h_{t} and ∂L/∂c_{t} are only the loss's own gradients",
                   f"∂L/∂h_{t} and ∂L/∂c_{t} are formed") if config.cell == "lstm" else \
            (f"∂L/∂h_{t} is only the loss's own gradient", f"∂L/∂h_{t} is formed")
        seen = (f"step {t} (the last): {delta} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while "
                f"{carried[0]} there")
        if no_forward:
            return (f"{seen}; {_NO_FORWARD}, at step {t} or before, or in its backward inside "
                    f"step {t}, {inside} or in how {carried[1]}")
        return f"{seen}: the error is inside step {t}, {inside} or in how {carried[1]}"
    sent = "the gradients sent back from step {0} to h_{1} and c_{1} agree" \
        if config.cell == "lstm" else "the gradient sent back from step {0} to h_{1} agrees"
    seen = (f"step {t}: {delta} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while "
            f"{sent.format(t + 1, t)}")
    cause = f"{inside} or in adding ∂L/∂y_{t} and the gradient from step {t + 1}"
    if no_forward:
        return f"{seen}; {_NO_FORWARD}, or in its backward inside step {t}, {cause}"
    return f"{seen}: the error is inside step {t}, {cause}"


def _between_message(t: int, config: Config, doubt: str, no_forward: bool) -> str:
    """δ_t differs and δ_{t+1} agrees, but whether the hand-off from step t + 1 is right is
    not known (``doubt`` says why)."""
    delta = _DELTA[config.cell].format(t=t)
    target = f"h_{t} and c_{t}" if config.cell == "lstm" else f"h_{t}"
    message = (f"step {t}: {delta} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while δ_{t + 1} "
               f"agrees: the error enters between steps {t + 1} and {t}, in what step {t + 1} "
               f"sends back to {target} or inside step {t}, and which cannot be told: "
               f"{doubt}, so what the candidate computes at a step depends on where the step "
               "lies (an absolute step, a chunk boundary, the length), and a restarted "
               "problem does not show its hand-off")
    return f"{message}; {_NO_FORWARD}" if no_forward else message


def _hand_off_message(t: int, layer: int, config: Config, key: str) -> str:
    """∂L/∂h_{t-1} (key "hx") or ∂L/∂c_{t-1} ("cx") differs while δ_t agrees."""
    state = "c" if key == "cx" else "h"
    how = _HAND_OFF[config.cell, key].format(t=t)
    where = f" of layer {layer}" if config.num_layers > 1 else ""
    if t > 0:
        target = f"{state}_{t - 1}" if config.cell == "lstm" else f"step {t - 1}"
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
        raise TypeError(f"gradcheck needs a module class built like {_torch_name(cell)}, got "
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
