"""Gradient checks for anyone's BPTT: compare a candidate with an oracle, and say where it parts.

A *candidate* is one of:

- a ``torch.nn.Module`` class constructed like ``torch.nn.RNN`` (``rnnkern.RNN``,
  ``torch.nn.RNN``, your own layer), with torch.nn.RNN's parameter names
  (``weight_ih_l0``, ``bias_hh_l1_reverse``, …) and called as ``module(input, hx)`` →
  ``(output, h_n)`` with time-major input or a ``PackedSequence``;
- a NumPy function ``bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` that returns the
  gradients of ``L = Σ y ⊙ grad_y`` under the keys ``x, h0, w_ih, w_hh, b_ih, b_hh`` (one layer,
  one direction, shapes as in DESIGN.md section 1), optionally with its NumPy forward
  ``forward(x, h0, w_ih, w_hh, b_ih, b_hh) -> y``.

A *reference* is ``"reference"`` (:mod:`rnnkern.reference`, a plain autograd loop),
``"torch"`` (``torch.nn.RNN``), ``"rnnkern"`` (``rnnkern.RNN``, the kernels),
``"finite-differences"`` (central differences in float64 of the reference's forward, no
autograd at all; small sizes only), or another candidate.

:func:`compare` runs both on one random problem (the loss is ``Σ output ⊙ grad_output +
Σ h_n ⊙ grad_h_n`` with random weights) and returns a :class:`Report`: per tensor the largest
absolute and relative error and where it is (step, batch row, unit). When gradients differ it
walks back from the last step and says where the error enters (:class:`Localisation`).
:func:`assert_gradients_close` raises ``AssertionError`` with the report as a table.

This module is a library: it imports no application module (bench, cli, check, …).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import reference as _reference_module

__all__ = ["Config", "TensorError", "Localisation", "Report", "REFERENCES", "compare",
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

_CELLS = ("rnn",)  # "lstm" and "gru" join here with their reference loops and torch classes
_BPTT_KEYS = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
Candidate = Union[type, Callable[..., Any], str]


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Config:
    """One configuration: sizes (T steps, B rows, I inputs, H hidden units) and the options
    that torch.nn.RNN's constructor and input take. ``packed``: variable lengths (1 … T, the
    longest T) as an unsorted PackedSequence."""

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

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def describe(self) -> str:
        """e.g. ``7x3x5x17 L2 bi packed tanh``."""
        parts = [f"{self.T}x{self.B}x{self.I}x{self.H}"]
        parts += [f"L{self.num_layers}"] if self.num_layers > 1 else []
        parts += ["bi"] if self.bidirectional else []
        parts += ["packed"] if self.packed else []
        parts += ["no-bias"] if not self.bias else []
        parts += [self.nonlinearity] + ([self.cell] if self.cell != "rnn" else [])
        return " ".join(parts)

    def param_names(self) -> List[str]:
        names = []
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[:self.directions]:
                names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
                if self.bias:
                    names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
        return names

    def param_shape(self, name: str) -> Tuple[int, ...]:
        layer = int(name.split("_l")[1].split("_")[0])
        if name.startswith("bias"):
            return (self.H,)
        if name.startswith("weight_hh"):
            return (self.H, self.H)
        return (self.H, self.I if layer == 0 else self.directions * self.H)


def _validate_config(config: Config) -> None:
    sizes = (config.T, config.B, config.I, config.H)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ValueError(f"size must be (T, B, I, H), four positive integers, got {sizes}")
    if config.cell not in _CELLS:
        raise ValueError(f"cell must be one of {_CELLS} (LSTM and GRU are not supported yet), "
                         f"got {config.cell!r}")
    if not (isinstance(config.num_layers, int) and config.num_layers > 0):
        raise ValueError(f"num_layers must be a positive integer, got {config.num_layers!r}")
    if config.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {config.nonlinearity!r}")


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
    hx: np.ndarray               # (L·D, B, H)
    weights: Dict[str, np.ndarray]
    grad_output: np.ndarray      # (T, B, D·H), zero past each row's length
    grad_h_n: np.ndarray         # (L·D, B, H)
    lengths: Optional[np.ndarray] = None

    def suffix(self, start: int, states: np.ndarray) -> "_Problem":
        """The same loss from step ``start`` on: h_{start-1} of every layer (``states``,
        (L, B, H)) becomes the initial state. One direction, no packing."""
        config = replace(self.config, T=self.config.T - start)
        return _Problem(config, self.x[start:], states, self.weights,
                        self.grad_output[start:], self.grad_h_n)


def _make_problem(config: Config, seed: int, final_state_grad: bool,
                  float32: bool) -> _Problem:
    rng = np.random.default_rng(seed)
    T, B, I, H, D = config.T, config.B, config.I, config.H, config.directions
    k = 1 / math.sqrt(H)
    x = rng.standard_normal((T, B, I))
    hx = 0.5 * rng.standard_normal((config.num_layers * D, B, H))
    weights = {name: rng.uniform(-k, k, config.param_shape(name))
               for name in config.param_names()}
    grad_output = rng.standard_normal((T, B, D * H))
    grad_h_n = rng.standard_normal(hx.shape) if final_state_grad else np.zeros(hx.shape)
    lengths = None
    if config.packed:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T
        alive = np.arange(T)[:, None] < lengths[None, :]
        x = x * alive[:, :, None]
        grad_output = grad_output * alive[:, :, None]
    problem = _Problem(config, x, hx, weights, grad_output, grad_h_n, lengths)
    if float32:  # the float64 oracle then sees exactly the values the float32 run sees
        for name in ("x", "hx", "grad_output", "grad_h_n"):
            setattr(problem, name, getattr(problem, name).astype(np.float32).astype(np.float64))
        problem.weights = {n: w.astype(np.float32).astype(np.float64) for n, w in weights.items()}
    return problem


# ----------------------------------------------------------------------------- the oracle

class _ReferenceRNN(torch.nn.RNN):
    """torch.nn.RNN's parameters and input handling, computed by :func:`rnnkern.reference.rnn`
    layer by layer and direction by direction (no dropout)."""

    def forward(self, input, hx=None):  # type: ignore[override]
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is not None and sorted_indices is not None:
                hx = hx.index_select(1, sorted_indices)
            batch = int(batch_sizes[0])
        else:
            data, batch_sizes = input, None
            batch = input.shape[1]
        D = 2 if self.bidirectional else 1
        if hx is None:
            hx = data.new_zeros(self.num_layers * D, batch, self.hidden_size)
        nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
        layer_input, h_n = data, []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                index = layer * D + direction
                w = [getattr(self, name) for name in self._all_weights[index]]
                b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
                out, h = _reference_module.rnn(layer_input, hx[index], w[0], w[1], b_ih, b_hh,
                                               nonlinearity, batch_sizes=batch_sizes,
                                               reverse=direction == 1)
                outputs.append(out)
                h_n.append(h)
            layer_input = torch.cat(outputs, -1)
        h_n = torch.stack(h_n)
        if packed:
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
            return PackedSequence(layer_input, batch_sizes, sorted_indices,
                                  unsorted_indices), h_n
        return layer_input, h_n


def _layer_states(problem: _Problem) -> List[np.ndarray]:
    """Every layer's hidden states (T, B, H), float64, from the reference loop (one direction,
    no packing)."""
    config = problem.config
    states = []
    with torch.no_grad():
        layer_input = torch.from_numpy(problem.x)
        for layer in range(config.num_layers):
            w = [torch.from_numpy(problem.weights[name]) for name in config.param_names()
                 if name.endswith(f"_l{layer}")]
            b_ih, b_hh = (w[2], w[3]) if config.bias else (None, None)
            out, _ = _reference_module.rnn(layer_input, torch.from_numpy(problem.hx[layer]),
                                           w[0], w[1], b_ih, b_hh, config.nonlinearity)
            states.append(out.numpy())
            layer_input = out
    return states


# ----------------------------------------------------------------------------- runners

_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_NUMPY_DTYPES = {"float64": np.float64, "float32": np.float32}


def _class_name(cls: Any) -> str:
    known = {(torch.nn.RNN.__module__, "RNN"): "torch.nn.RNN", ("rnnkern.modules", "RNN"):
             "rnnkern.RNN", (__name__, "_ReferenceRNN"): "rnnkern.reference"}
    module = getattr(cls, "__module__", "") or ""
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None) or repr(cls)
    if (module, qualname) in known:
        return known[module, qualname]
    return f"{module}.{qualname}" if module and module != "__main__" else qualname


class _ModuleRunner:
    """Runs a module class built like torch.nn.RNN on a problem."""

    kind = "module"

    def __init__(self, cls: type, name: Optional[str] = None) -> None:
        self.cls = cls
        self.name = name or _class_name(cls)

    def build(self, config: Config, dtype: str) -> torch.nn.Module:
        module = self.cls(config.I, config.H, num_layers=config.num_layers,
                          nonlinearity=config.nonlinearity, bias=config.bias,
                          bidirectional=config.bidirectional, dtype=_TORCH_DTYPES[dtype])
        return module

    def parameters(self, module: torch.nn.Module, config: Config) -> List[torch.Tensor]:
        found = dict(module.named_parameters())
        names = config.param_names()
        for name in names:
            if name not in found:
                raise ValueError(
                    f"{self.name} has no parameter {name!r}: a candidate module must have "
                    f"torch.nn.RNN's parameter names ({', '.join(names)}); it has "
                    f"{', '.join(found) or 'none'}")
            if tuple(found[name].shape) != config.param_shape(name):
                raise ValueError(f"{self.name}'s parameter {name!r} has shape "
                                 f"{tuple(found[name].shape)}, expected "
                                 f"{config.param_shape(name)} (as torch.nn.RNN's)")
        return [found[name] for name in names]

    def forward(self, module, problem: _Problem, x, hx):
        config = problem.config
        inp = x
        if config.packed:
            inp = pack_padded_sequence(x, torch.from_numpy(problem.lengths),
                                       enforce_sorted=False)
        result = module(inp, hx)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(f"{self.name}(input, hx) must return (output, h_n) as "
                            f"torch.nn.RNN does, got {type(result).__name__}")
        out, h_n = result
        if config.packed:
            if not isinstance(out, PackedSequence):
                raise TypeError(f"{self.name}: for a PackedSequence input the output must be "
                                f"a PackedSequence, got {type(out).__name__}")
            out, _ = pad_packed_sequence(out, total_length=config.T)
        expected = {"output": (config.T, config.B, config.directions * config.H),
                    "h_n": tuple(problem.hx.shape)}
        for label, t in (("output", out), ("h_n", h_n)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected[label]:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{self.name}: {label} must have shape {expected[label]}, "
                                 f"got {got}")
        return out, h_n

    def run(self, problem: _Problem, dtype: str) -> Dict[str, np.ndarray]:
        config = problem.config
        module = self.build(config, dtype)
        params = self.parameters(module, config)
        tdtype = _TORCH_DTYPES[dtype]
        with torch.no_grad():
            for p, name in zip(params, config.param_names()):
                p.copy_(torch.from_numpy(problem.weights[name]))
        x = torch.tensor(problem.x, dtype=tdtype, requires_grad=True)
        hx = torch.tensor(problem.hx, dtype=tdtype, requires_grad=True)
        with torch.enable_grad():
            out, h_n = self.forward(module, problem, x, hx)
            loss = ((out * torch.from_numpy(problem.grad_output).to(tdtype)).sum()
                    + (h_n * torch.from_numpy(problem.grad_h_n).to(tdtype)).sum())
            grads = torch.autograd.grad(loss, [x, hx, *params], allow_unused=True)
        inputs = [x, hx, *params]
        result = {"output": out.detach(), "h_n": h_n.detach()}
        for key, g, t in zip(["input", "hx", *config.param_names()], grads, inputs):
            result[key] = torch.zeros_like(t) if g is None else g
        return {k: v.detach().to(torch.float64).numpy() for k, v in result.items()}


class _FiniteDifferences(_ModuleRunner):
    """Outputs from the reference loop's forward; gradients by central differences of the
    loss (4-point stencil) in float64, without autograd."""

    kind = "finite-differences"

    def __init__(self) -> None:
        super().__init__(_ReferenceRNN, "finite differences")

    @staticmethod
    def check_size(config: Config) -> None:
        count = (config.T * config.B * config.I
                 + config.num_layers * config.directions * config.B * config.H
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
        hx = torch.tensor(problem.hx)
        gy = torch.from_numpy(problem.grad_output)
        gn = torch.from_numpy(problem.grad_h_n)
        with torch.no_grad():
            for p, name in zip(params, names):
                p.copy_(torch.from_numpy(problem.weights[name]))

            def loss() -> float:
                out, h_n = self.forward(module, problem, x, hx)
                return float((out * gy).sum() + (h_n * gn).sum())

            out, h_n = self.forward(module, problem, x, hx)
            result = {"output": out.numpy().copy(), "h_n": h_n.numpy().copy()}
            step = FD_STEP
            for key, t in zip(["input", "hx", *names], [x, hx, *params]):
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
    """Runs a NumPy ``bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` (and optionally
    ``forward(x, h0, w_ih, w_hh, b_ih, b_hh) -> y``)."""

    kind = "bptt"

    def __init__(self, bptt: Callable[..., Any], forward: Optional[Callable[..., Any]] = None,
                 name: Optional[str] = None) -> None:
        self.bptt = bptt
        self.forward_fn = forward
        self.name = name or _class_name(bptt)

    def run(self, problem: _Problem, dtype: str) -> Dict[str, np.ndarray]:
        config = problem.config
        npdtype = _NUMPY_DTYPES[dtype]
        w = problem.weights
        args = {"x": problem.x, "h0": problem.hx[0], "w_ih": w["weight_ih_l0"],
                "w_hh": w["weight_hh_l0"], "b_ih": w["bias_ih_l0"], "b_hh": w["bias_hh_l0"]}

        def arrays() -> List[np.ndarray]:  # fresh copies: a candidate may write into them
            return [np.array(a, dtype=npdtype) for a in args.values()]

        grads = self.bptt(*arrays(), np.array(problem.grad_output, dtype=npdtype))
        if not isinstance(grads, dict):
            raise TypeError(f"{self.name} must return a dict with keys "
                            f"{', '.join(_BPTT_KEYS)}, got {type(grads).__name__}")
        result = {}
        for key, canonical in zip(_BPTT_KEYS, ("input", "hx", "weight_ih_l0", "weight_hh_l0",
                                               "bias_ih_l0", "bias_hh_l0")):
            if key not in grads:
                raise ValueError(f"{self.name}'s result has no key {key!r}: it must return a "
                                 f"dict with keys {', '.join(_BPTT_KEYS)}, got keys "
                                 f"{', '.join(map(repr, grads)) or 'none'}")
            result[canonical] = _as_array(self.name, f"result[{key!r}]", grads[key],
                                          args[key].shape, f"the shape of {key}")
        result["hx"] = result["hx"][None]
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
            name: Optional[str] = None, argument: str = "candidate"):
    if isinstance(candidate, str):
        if candidate not in REFERENCES:
            raise ValueError(f"{argument} must be one of {', '.join(REFERENCES)}, a module "
                             f"class or a NumPy bptt function, got {candidate!r}")
        if candidate == "finite-differences":
            return _FiniteDifferences()
        if candidate == "reference":
            return _ModuleRunner(_ReferenceRNN)
        if candidate == "torch":
            return _ModuleRunner(torch.nn.RNN)
        from .modules import RNN
        return _ModuleRunner(RNN)
    if isinstance(candidate, type):
        if not issubclass(candidate, torch.nn.Module):
            raise TypeError(f"{argument} must be a torch.nn.Module class constructed like "
                            f"torch.nn.RNN or a NumPy bptt function, got the class "
                            f"{_class_name(candidate)}")
        return _ModuleRunner(candidate, name)
    if isinstance(candidate, torch.nn.Module):
        raise TypeError(f"{argument} must be a module class, not an instance: pass "
                        f"{type(candidate).__name__} (it is built like torch.nn.RNN for each "
                        "configuration, with random weights)")
    if callable(candidate):
        return _BpttRunner(candidate, forward, name)
    raise TypeError(f"{argument} must be a torch.nn.Module class constructed like "
                    "torch.nn.RNN or a NumPy function bptt(x, h0, w_ih, w_hh, b_ih, b_hh, "
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
    ``quantity``: ``"delta"`` (δ_t = ∂L/∂h_t ⊙ φ'(a_t), seen in ∂L/∂x_t = δ_t W_ih),
    ``"grad_h"`` (∂L/∂h_t, the gradient that reaches h_t, seen in the ∂L/∂h0 of the problem
    started at step t + 1), ``"output"`` (the forward pass), ``"after the loop"`` (only
    weight or bias sums differ) or ``"configuration"``. ``layer``: for ``"grad_h"``, the
    layer whose ∂L/∂h_t differs most."""

    step: Optional[int]
    quantity: str
    message: str
    layer: Optional[int] = None

    def short(self) -> str:
        """A few words for a table cell, e.g. ``step 4 (δ)``."""
        if self.step is None:
            return self.quantity
        what = {"delta": "δ", "grad_h": "∂L/∂h", "output": "forward"}[self.quantity]
        return "∂L/∂h0" if self.step == -1 else f"step {self.step} ({what})"


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
            direction = " reverse" if j >= config.H else ""
            return f"step {t}, row {b}, unit {j % config.H}{direction}"
        return f"step {t}, row {b}, unit {j}"
    if key in ("hx", "h_n"):
        ld, b, j = index
        if bptt or (config.num_layers == 1 and not config.bidirectional):
            return f"row {b}, unit {j}"
        layer, direction = divmod(ld, config.directions)
        return f"layer {layer}{' reverse' if direction else ''}, row {b}, unit {j}"
    if len(index) == 2:
        return f"unit {index[0]}, column {index[1]}"
    return f"unit {index[0]}"


_BPTT_NAMES = {"output": "y", "h_n": "h_n", "input": "grad x", "hx": "grad h0",
               "weight_ih_l0": "grad w_ih", "weight_hh_l0": "grad w_hh",
               "bias_ih_l0": "grad b_ih", "bias_hh_l0": "grad b_hh"}


def _display(key: str, bptt: bool) -> str:
    if bptt:
        return _BPTT_NAMES[key]
    return key if key in ("output", "h_n") else f"grad {key}"


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
                 cell) -> Config:
    if size is None:
        size = (5, 3, 4, 6)
    try:
        T, B, I, H = size  # noqa: E741
    except (TypeError, ValueError):
        raise ValueError(f"size must be (T, B, I, H), four positive integers, got {size!r}") \
            from None
    config = Config(T, B, I, H, num_layers, bool(bidirectional), bool(packed), nonlinearity,
                    bool(bias), cell)
    _validate_config(config)
    for runner in runners:
        if runner.kind != "bptt":
            continue
        extra = [f"{name}={value!r}" for name, value, plain in
                 (("num_layers", num_layers, 1), ("bidirectional", bidirectional, False),
                  ("packed", packed, False), ("bias", bias, True)) if value != plain]
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
    # float32: torch.nn.RNN's own float32 run against the float64 reference
    torch32 = _ModuleRunner(torch.nn.RNN).run(problem, "float32")
    exact = ref if reference_runner.kind != "finite-differences" else \
        _ModuleRunner(_ReferenceRNN).run(problem, "float64")
    allowed = {k: F32_FACTOR * max(_errors(torch32[k], exact[k])[1], F32_FLOOR) for k in keys}
    return allowed, f"relative error ≤ {F32_FACTOR:g} × torch.nn.RNN's float32 error"


def compare(candidate: Candidate, reference: Candidate = "reference", *,
            size: Optional[Sequence[int]] = None, num_layers: int = 1,
            bidirectional: bool = False, packed: bool = False, nonlinearity: str = "tanh",
            bias: bool = True, cell: str = "rnn", dtype: Any = "float64",
            atol: Optional[float] = None, rtol: Optional[float] = None, seed: int = 0,
            forward: Optional[Callable[..., Any]] = None, localise: bool = True,
            name: Optional[str] = None) -> Report:
    """Compares ``candidate`` with ``reference`` on one random problem; returns a Report.

    Args:
        candidate: a torch.nn.Module class constructed like torch.nn.RNN, a NumPy
            ``bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y) -> dict`` (see the module
            docstring), or one of the references' names.
        reference: ``"reference"``, ``"torch"``, ``"rnnkern"``, ``"finite-differences"``, or
            another candidate (always run in float64).
        size: (T, B, I, H); default (5, 3, 4, 6).
        num_layers, bidirectional, nonlinearity, bias: as torch.nn.RNN's constructor takes
            them (module candidates; a NumPy bptt is one layer, one direction).
        packed: variable lengths as an unsorted PackedSequence (module candidates).
        cell: ``"rnn"`` (the Elman cell); LSTM and GRU will join here.
        dtype: ``"float64"`` or ``"float32"``, the candidate's dtype.
        atol, rtol: a tensor passes when max |error| ≤ atol + rtol · max |reference|.
            Default: float64 rtol 1e-10 (1e-8 against finite differences); float32 relative
            error within 8 times torch.nn.RNN's own float32 error.
        seed: seed of the random weights, inputs and loss.
        forward: with a NumPy bptt, its forward ``(x, h0, w_ih, w_hh, b_ih, b_hh) -> y``,
            compared too.
        localise: when gradients differ, find the step where the error enters.
        name: the candidate's name in the report.

    The loss is ``Σ output ⊙ grad_output + Σ h_n ⊙ grad_h_n`` (for a NumPy bptt
    ``Σ y ⊙ grad_y``) with random ``grad_output`` and ``grad_h_n``.
    """
    candidate_runner = _runner(candidate, forward, name)
    reference_runner = _runner(reference, argument="reference")
    dtype = _dtype_name(dtype)
    for label, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0
                                      and math.isfinite(value)):
            raise ValueError(f"{label} must be a finite number ≥ 0, got {value!r}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed must be an integer ≥ 0, got {seed!r}")
    config = _config_from((candidate_runner, reference_runner), size, num_layers,
                          bidirectional, packed, nonlinearity, bias, cell)
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
    keys = [k for k in ("output", "h_n", "input", "hx", *config.param_names())
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
    if "h_n" in by_key and not by_key["h_n"].passed:
        return Localisation(None, "output", "the output agrees but h_n does not: h_n must "
                            "be each sequence's state at its own last step")
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
    #    then ∂L/∂h_{t-1} through the ∂L/∂h0 of the same problem started at step t. That ∂L/∂h0
    #    also goes through the candidate's hand-off to its initial state, so a difference
    #    there counts only if δ_{t-1} differs too; else only the hand-off is wrong and the
    #    shorter problems can tell nothing more.
    gradients = [t for t in report.tensors if t.key not in ("output", "h_n")]
    rel_bound = max(t.allowed_rel for t in gradients)
    x_bound = by_key["input"].allowed_abs if "input" in by_key else math.inf

    def delta_differs(t: int) -> bool:
        return not np.abs(got["input"][t] - ref["input"][t]).max() <= x_bound

    states = _layer_states(problem)
    last = max(0, config.T - LOCALISE_MAX_STEPS)
    hand_off_wrong = False
    for t in range(config.T - 1, last - 1, -1):
        if delta_differs(t):
            return Localisation(t, "delta", _delta_message(t, config.T))
        if t > 0 and hand_off_wrong:
            continue
        if t > 0:
            start = problem.suffix(t, np.stack([s[t - 1] for s in states]))
            c, r = candidate_runner.run(start, dtype)["hx"], reference_runner.run(
                start, "float64")["hx"]
        else:
            c, r = got["hx"], ref["hx"]
        diff = np.abs(c - r).reshape(c.shape[0], -1).max(axis=1)
        diff = np.where(np.isnan(diff), np.inf, diff)
        if not diff.max() <= rel_bound * np.abs(r).max():
            if t > 0 and not delta_differs(t - 1):
                hand_off_wrong = True
                continue
            layer = int(np.argmax(diff))
            return Localisation(t - 1, "grad_h", _grad_h_message(t, layer, config), layer)
    if last > 0:
        return Localisation(None, "unknown", f"steps {config.T - 1} down to {last} agree; "
                            f"localisation stops after {LOCALISE_MAX_STEPS} steps")
    names = ", ".join(t.name for t in report.failed())
    return Localisation(None, "after the loop", "every ∂L/∂x_t and ∂L/∂h_t agrees, so every "
                        f"δ_t is right: the error is in the sums after the loop ({names})")


def _delta_message(t: int, T: int) -> str:
    if t == T - 1:
        return (f"step {t} (the last): δ_{t} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while "
                f"∂L/∂h_{t} is only the loss's own gradient there: the error is inside step "
                f"{t}, in the φ'(a_{t}) factor or in how ∂L/∂h_{t} is formed")
    return (f"step {t}: δ_{t} differs, seen in ∂L/∂x_{t} = δ_{t} W_ih, while the gradient "
            f"sent back from step {t + 1} to h_{t} agrees: the error is inside step {t}, in the "
            f"φ'(a_{t}) factor or in adding ∂L/∂y_{t} and the gradient from step {t + 1}")


def _grad_h_message(t: int, layer: int, config: Config) -> str:
    target = "h0 (the initial state)" if t == 0 else f"h_{t - 1}"
    where = f" of layer {layer}" if config.num_layers > 1 else ""
    return (f"step {t - 1}: ∂L/∂{target}{where} differs while δ_{t} agrees: the gradient "
            f"sent back from step {t} to step {t - 1} is wrong (it is δ_{t} W_hh: W_hh itself, "
            "not its transpose)" if t > 0 else
            f"∂L/∂h0{where} differs while every δ_t agrees: the gradient sent back from "
            "step 0 to the initial state (δ_0 W_hh) is wrong")


# ----------------------------------------------------------------------------- gradcheck

def gradcheck(candidate: type, *, size: Sequence[int] = (3, 2, 2, 3), num_layers: int = 1,
              bidirectional: bool = False, packed: bool = False, nonlinearity: str = "tanh",
              bias: bool = True, cell: str = "rnn", seed: int = 0) -> bool:
    """``torch.autograd.gradcheck`` in float64 of a module class built like torch.nn.RNN,
    with respect to its input, hx and every parameter. Keep the size tiny. Returns True, or
    raises ``torch.autograd.gradcheck.GradcheckError`` saying which Jacobian differs."""
    runner = _runner(candidate)
    if runner.kind != "module":
        raise TypeError("gradcheck needs a module class built like torch.nn.RNN, got "
                        f"{type(candidate).__name__}")
    config = _config_from((runner,), size, num_layers, bidirectional, packed, nonlinearity,
                          bias, cell)
    problem = _make_problem(config, seed, final_state_grad=True, float32=False)
    module = runner.build(config, "float64")
    runner.parameters(module, config)  # torch.nn.RNN's names and shapes, or a clear error
    names = config.param_names()

    def function(x, hx, *weights):
        def call(inp, h):
            return torch.func.functional_call(module, dict(zip(names, weights)), (inp, h))
        return runner.forward(call, problem, x, hx)

    inputs = [torch.tensor(problem.x, requires_grad=True),
              torch.tensor(problem.hx, requires_grad=True),
              *[torch.tensor(problem.weights[n], requires_grad=True) for n in names]]
    return bool(torch.autograd.gradcheck(function, inputs))

