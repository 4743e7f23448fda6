"""``rnnkern.RNN``, ``rnnkern.LSTM`` and ``rnnkern.GRU``: drop-ins for ``torch.nn.RNN``,
``torch.nn.LSTM`` and ``torch.nn.GRU`` that run on rnnkern's kernels; and the one-step cells
``rnnkern.RNNCell``, ``LSTMCell`` and ``GRUCell``, drop-ins for torch's.

Each is a subclass of its torch class: same constructor, parameters, state_dict, repr and
errors. Only the computation in ``forward`` differs. :func:`convert` and :func:`revert` swap
the class of every such layer inside an existing model.
"""

from __future__ import annotations

import copy
import inspect
import logging
import operator
import sys
import warnings
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import cells
from .cells import CELLS
from .functional import layers as _layers
from .functional import step as _step
from .functional import _plain_eager, _stack_inference_eager

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "revert"]

# Computed in float32 inside and returned in the input's dtype.
_UPCAST = (torch.float16, torch.bfloat16)
_KERNEL_DTYPES = (torch.float32, torch.float64)


def _let_dynamo_trace_rnn_modules() -> None:
    # Dynamo graph-breaks on every torch.nn.RNN instance unless this is set; it only lifts
    # that check (it also lets Dynamo trace into torch's own RNN, GRU and LSTM).
    import torch._dynamo

    torch._dynamo.config.allow_rnn = True


def _exporting() -> bool:
    """Whether a graph for deployment is being made (``torch.jit.trace``, ``torch.export`` and
    both ONNX exporters): it gets torch's own RNN operators, which run without rnnkern."""
    if torch.compiler.is_compiling():  # Dynamo and export; constant under Dynamo
        return torch.compiler.is_exporting()
    return torch.jit.is_tracing()


# Whether any device's autocast is on (one C call, before the slower per-device question).
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)
_is = operator.is_


def _input_data(input) -> Tensor:
    """The tensor inside ``input`` (a Tensor or a PackedSequence); TypeError for anything else."""
    if isinstance(input, PackedSequence):
        return input.data
    if not isinstance(input, Tensor):
        raise TypeError("input must be a torch.Tensor or a PackedSequence, got "
                        f"{type(input).__module__}.{type(input).__qualname__}")
    return input


def _autocast(device_type: str) -> bool:
    """Whether autocast is on for this device type (never for meta, which has none)."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def _check_weight_dtypes(module, input: Tensor) -> None:
    """torch.nn's rule: every weight has the input's dtype (autocast casts them itself)."""
    if _autocast(input.device.type):
        return
    for name, w in zip(module._flat_weights_names, module._flat_weights):
        if w is not None and w.dtype != input.dtype:
            raise RuntimeError(f"{name} has dtype {w.dtype} but the input has dtype "
                               f"{input.dtype}: the weights and the input must have one dtype "
                               f"(module.to({input.dtype}) or input.to({w.dtype}))")


def _refuse_recording(module) -> None:
    if module._gradient_flow is not None:
        raise RuntimeError("record_gradient_flow runs in eager mode only: stop recording "
                           "before tracing or exporting the model")


_QUANTIZED_IN_TORCH = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNNCell, torch.nn.LSTMCell,
                       torch.nn.GRUCell)


def _torch_class(module) -> type:
    """The torch.nn class that module's class replaces."""
    return next(c for c in type(module).__mro__ if c in _DROP_INS)


def _warn_if_quantized(module, qconfig) -> None:
    """torch.ao.quantization picks layers by exact class, so it leaves rnnkern's LSTM and GRU
    in float: say so when it marks one (propagate_qconfig_ sets ``qconfig`` on every module)."""
    torch_class = _torch_class(module)
    if torch_class not in _QUANTIZED_IN_TORCH:
        return
    if qconfig is None:  # asked for it? propagate_qconfig_'s own argument tells
        frame = sys._getframe(2)
        for _ in range(4):
            spec = frame.f_locals.get("qconfig_dict") if frame is not None else None
            if isinstance(spec, dict):
                if torch_class not in spec and type(module) not in spec:
                    return
                break
            frame = frame.f_back if frame is not None else None
    ours = f"rnnkern.{torch_class.__name__}"
    warnings.warn(f"torch.ao.quantization does not quantize {ours}: it matches torch.nn."
                  f"{torch_class.__name__} by exact class, so this layer stays in floating "
                  f"point. Call rnnkern.revert(model) before quantizing to get torch's "
                  f"quantized {torch_class.__name__}.", UserWarning, stacklevel=4)


class _DropIn:
    """What all of rnnkern's drop-ins add to their torch class: the hand-off to torch's class
    for scripting, and the warning when torch's quantization would skip them."""

    _cell = ""  # its spec in rnnkern.cells, set by each class
    _state_count, _takes_nonlinearity = 1, False  # from the spec, for the timed paths

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_cell"):
            spec = cells.get(cls._cell)
            cls._state_count, cls._takes_nonlinearity = len(spec.states), spec.nonlinearity

    def _get_name(self) -> str:
        """The name repr and print(model) show: rnnkern.LSTM(...) for rnnkern's own classes,
        so that a model shows what runs on rnnkern (a subclass shows its own name)."""
        name = type(self).__name__
        return f"rnnkern.{name}" if type(self) in _DROP_INS.values() else name

    def __prepare_scriptable__(self):
        """``torch.jit.script`` compiles torch's own class: a shallow copy of this module as
        that class (same Parameter objects), whose script runs where rnnkern is absent.
        Subclasses (whose forward may differ) are scripted as they are."""
        if type(self) not in _DROP_INS.values():
            return self
        twin = copy.copy(self)
        twin.__class__ = _torch_class(self)
        return twin

    def _forward_fast(self, input, hx):
        """The common case (a float32/64 CPU tensor, weights of its dtype, a valid hx or none,
        no projection, no autocast, no recording, no graph being made for deployment) with the
        fewest checks; None for anything else, which goes the whole way and gets the torch
        class's errors. A call that needs no gradient runs the whole stack in one call of the
        kernels (stack_inference)."""
        # straight-line code with each check made once: this path is timed in microseconds
        if type(input) is not Tensor or not input.is_cpu or self._gradient_flow is not None:
            return None
        eager = _plain_eager()
        if not eager and _exporting() or _any_autocast() and torch.is_autocast_enabled("cpu"):
            return None
        dtype = input.dtype
        if dtype is not torch.float32 and dtype is not torch.float64 \
                or getattr(self, "proj_size", 0):
            return None
        flat = self._flat_weights
        if type(self) not in _OURS or not all(map(_is, map(self._parameters.get,
                                                            self._flat_weights_names), flat)):
            self._update_flat_weights()  # parametrized or replaced weights
            flat = self._flat_weights
        count = self._state_count
        if hx is None:
            states = None
        elif count > 1:
            if type(hx) is not tuple or len(hx) != count:
                return None
            states = hx
        else:
            states = (hx,)
        batched = input.dim() == 3
        if not batched:
            if input.dim() != 2 or (states is not None and any(h.dim() != 2 for h in states)):
                return None
            input = input.unsqueeze(0 if self.batch_first else 1)
            if states is not None:
                states = tuple(h.unsqueeze(1) for h in states)
        if self.batch_first:
            input = input.transpose(0, 1)
        steps, batch, features = input.shape
        if steps == 0 or features != self.input_size:
            return None
        layers = self.num_layers * (2 if self.bidirectional else 1)
        if states is None:
            states = tuple(torch.zeros(layers, batch, self.hidden_size, dtype=dtype)
                           for _ in range(count))
        nonlinearity = None
        if self._takes_nonlinearity:
            nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
        fast = None
        if eager and not (self.training and self.dropout > 0 and self.num_layers > 1):
            fast = _stack_inference_eager(self._cell, input, states, flat, self.num_layers,
                                          self.bidirectional, nonlinearity)
        if fast is not None:
            output, hidden = fast
        else:
            for w in flat:
                if w.dtype is not dtype:
                    return None
            shape = (layers, batch, self.hidden_size)
            for h in states:
                if (type(h) is not Tensor or h.shape != shape or h.dtype is not dtype
                        or not h.is_cpu):
                    return None
            output, hidden = _layers(self._cell, input, states if count > 1 else states[0],
                                     flat, self.num_layers, self.bidirectional, nonlinearity,
                                     self.dropout, self.training, False)
            hidden = tuple(hidden) if count > 1 else (hidden,)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden)
        return output, hidden if count > 1 else hidden[0]

    @property
    def qconfig(self):
        try:
            return self.__dict__["qconfig"]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute 'qconfig'"
                                 ) from None

    @qconfig.setter
    def qconfig(self, value) -> None:
        _warn_if_quantized(self, value)
        self.__dict__["qconfig"] = value

    @qconfig.deleter
    def qconfig(self) -> None:
        try:
            del self.__dict__["qconfig"]
        except KeyError:
            raise AttributeError("qconfig") from None


def _one_state_forward(module, input: Union[Tensor, PackedSequence], hx: Optional[Tensor],
                       bad_dims: str, compute) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
    """torch.nn.RNN.forward's and torch.nn.GRU.forward's handling of input and hx, line by
    line, around compute(input, hx, batch_sizes, max_batch_size, unsorted_indices), which
    returns (output, hidden). ``bad_dims``: torch's message for input that is not 2-D or 3-D."""
    module._update_flat_weights()
    num_directions = 2 if module.bidirectional else 1
    orig_input = input
    is_batched = True
    batch_dim = 0 if module.batch_first else 1
    if isinstance(orig_input, PackedSequence):
        input, batch_sizes, sorted_indices, unsorted_indices = input
        max_batch_size = int(batch_sizes[0])
    else:
        batch_sizes = sorted_indices = unsorted_indices = None
        if input.dim() not in (2, 3):
            raise ValueError(bad_dims.format(input.dim()))
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError("For unbatched 2-D input, hx should also be 2-D but "
                                       f"got {hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
        elif hx is not None and hx.dim() != 3:
            raise RuntimeError("For batched 3-D input, hx should also be 3-D but got "
                               f"{hx.dim()}-D tensor")
        max_batch_size = input.size(0) if module.batch_first else input.size(1)
    if hx is None:
        hx = torch.zeros(module.num_layers * num_directions, max_batch_size, module.hidden_size,
                         dtype=input.dtype, device=input.device)
    else:
        hx = module.permute_hidden(hx, sorted_indices)
    module.check_forward_args(input, hx, batch_sizes)
    RNN._check_hidden_matches_input(module, input, hx, batch_sizes)
    output, hidden = compute(input, hx, batch_sizes, max_batch_size, unsorted_indices)
    if isinstance(orig_input, PackedSequence):
        output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        return output_packed, module.permute_hidden(hidden, unsorted_indices)
    if not is_batched:
        output = output.squeeze(batch_dim)
        hidden = hidden.squeeze(1)
    return output, module.permute_hidden(hidden, unsorted_indices)


class RNN(_DropIn, torch.nn.RNN):
    """``torch.nn.RNN`` with forward and backward on rnnkern's fused kernels: the CPU core, or
    for CUDA tensors the loops of ``rnnkern._cuda`` (see ``rnnkern.cuda_available()``).

    Use it exactly like ``torch.nn.RNN``; see its documentation for the arguments. float32 and
    float64 run on the kernels directly; float16 and bfloat16 (also under autocast) are
    computed in float32 and returned in that dtype. Second derivatives, forward-mode AD,
    ``torch.func`` transforms and the meta device run on the autograd loop of
    ``rnnkern.reference`` (same results, its speed). ``torch.jit.trace``, ``torch.jit.script``,
    ``torch.export`` and ``torch.onnx.export`` get torch.nn.RNN's own computation, so the graph
    they make holds torch's operators and runs without rnnkern.
    Creating one sets ``torch._dynamo.config.allow_rnn = True`` so that
    ``torch.compile(fullgraph=True)`` traces through it instead of breaking the graph.
    A model saved with ``torch.save`` loads with ``torch.load`` (``weights_only=True``) once
    rnnkern is imported.
    """

    _gradient_flow = None  # set by rnnkern.diagnostics.record_gradient_flow
    _cell = "rnn"  # its spec in rnnkern.cells

    def __init__(self, *args, **kwargs) -> None:
        # Arguments as torch.nn.RNN takes them (its parsing, its errors); the signature that
        # help() shows is set below.
        super().__init__(*args, **kwargs)
        _let_dynamo_trace_rnn_modules()

    def flatten_parameters(self) -> None:
        """Does nothing: rnnkern reads the weights where they are."""

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        """Runs the forward pass, like ``torch.nn.RNN.forward``."""
        fast = self._forward_fast(input, hx)
        if fast is not None:
            return fast
        if _exporting():
            _refuse_recording(self)
            return super().forward(input, hx)
        return self._forward_checked(input, hx)

    def _forward_checked(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor]
                         ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        data = _input_data(input)
        if data.device.type == "meta":  # shapes only (deferred initialisation)
            return super().forward(input, hx)

        def compute(input, hx, batch_sizes, max_batch_size, unsorted_indices):
            on_grad_norms = None
            if self._gradient_flow is not None:
                steps = input.size(1 if self.batch_first else 0) if batch_sizes is None \
                    else batch_sizes.numel()
                on_grad_norms = self._gradient_flow.callback(self, batch_sizes, steps,
                                                             max_batch_size, unsorted_indices)
            return _compute(self, input, hx, batch_sizes, on_grad_norms)

        return _one_state_forward(self, input, hx, "RNN: Expected input to be 2D or 3D, got {}D "
                                  "tensor instead", compute)

    def _check_hidden_matches_input(self, input: Tensor, hx: Tensor,
                                    batch_sizes: Optional[Tensor]) -> None:
        # torch.nn.RNN reports these from deep inside its kernels; same exception types here.
        if hx.device != input.device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found "
                               f"input tensor at {input.device} and hidden tensor at {hx.device}")
        if hx.dtype != input.dtype:
            raise RuntimeError(f"hx dtype ({hx.dtype}) does not match input dtype "
                               f"({input.dtype}); convert hx: hx.to({input.dtype})")
        if batch_sizes is None and input.size(0 if not self.batch_first else 1) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")


def _init_signature(self, input_size: int, hidden_size: int, num_layers: int = 1,
                    nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                    dropout: float = 0.0, bidirectional: bool = False, device=None,
                    dtype=None) -> None:
    """torch.nn.RNN's constructor arguments."""


RNN.__init__.__signature__ = inspect.signature(_init_signature)


def _swap_classes(model: torch.nn.Module, old: type, new: type) -> torch.nn.Module:
    for module in model.modules():
        if type(module) is old:
            module.__class__ = new
    return model


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Makes every ``torch.nn.RNN``, ``torch.nn.LSTM`` and ``torch.nn.GRU`` inside ``model``
    (``model`` itself included) an ``rnnkern.RNN``, ``LSTM`` or ``GRU``, and every
    ``torch.nn.RNNCell``, ``LSTMCell`` and ``GRUCell`` an ``rnnkern.RNNCell``, ``LSTMCell`` or
    ``GRUCell``, in place, and returns ``model``.

    Each module keeps its identity, Parameter objects, hooks and state, so an optimizer made
    before the call keeps training the same tensors; only the class changes, the way
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` swaps batch norms. ``print(model)``
    then shows ``rnnkern.LSTM(...)`` where rnnkern runs. Subclasses of the torch classes
    (their forward may differ) and parametrized modules (``torch.nn.utils.parametrize``, e.g.
    ``weight_norm``) are left alone, with a ``UserWarning`` naming each and why; the converted
    ones are logged on the ``rnnkern`` logger (INFO). Undo with :func:`revert`.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if type(module) in _DROP_INS:
            _let_dynamo_trace_rnn_modules()
            break
    converted = [f"{name or '(the model)'}: {_torch_name(type(module))}"
                 for name, module in model.named_modules() if type(module) in _DROP_INS]
    skipped = _left_on_torch(model)
    for theirs, ours in _DROP_INS.items():
        _swap_classes(model, theirs, ours)
    if converted:
        logging.getLogger("rnnkern").info("rnnkern.convert: now on rnnkern: %s",
                                          "; ".join(converted))
    if skipped:
        warnings.warn(f"rnnkern.convert left {len(skipped)} recurrent module"
                      f"{'s' if len(skipped) > 1 else ''} on torch: " + "; ".join(skipped),
                      stacklevel=2)
    return model


def _torch_name(cls: type) -> str:
    return f"{cls.__module__.replace('torch.nn.modules.rnn', 'torch.nn')}.{cls.__name__}"


def _left_on_torch(model: torch.nn.Module) -> list:
    """'name (class: why)' for each module of ``model`` that is a torch recurrent class that
    convert does not swap."""
    from torch.nn.utils import parametrize

    ours = tuple(_DROP_INS.values())
    out = []
    for name, module in model.named_modules():
        if type(module) in _DROP_INS or isinstance(module, ours):
            continue
        base = next((t for t in _DROP_INS if isinstance(module, t)), None)
        if base is None:
            continue
        why = ("its weights are parametrized (torch.nn.utils.parametrize, e.g. weight_norm)"
               if parametrize.is_parametrized(module) else
               f"a subclass of {_torch_name(base)}, whose forward may differ")
        out.append(f"{name or '(the model)'} ({type(module).__name__}: {why})")
    return out


def revert(model: torch.nn.Module) -> torch.nn.Module:
    """Makes every ``rnnkern.RNN``, ``LSTM``, ``GRU`` and one-step cell inside ``model`` its
    torch class again, in place, and returns ``model``: the inverse of :func:`convert` (e.g.
    to save a checkpoint that loads where rnnkern is not installed)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for theirs, ours in _DROP_INS.items():
        _swap_classes(model, ours, theirs)
    return model


# torch.load's default weights_only unpickler accepts only allow-listed classes; rnnkern.RNN
# holds nothing but torch.nn.RNN's tensors and attributes.
torch.serialization.add_safe_globals([RNN])



# The gated cells. Their forward follows torch.nn.LSTM.forward / torch.nn.GRU.forward line by
# line; only the _VF call is replaced.

def _compute(module, input: Tensor, hx, batch_sizes: Optional[Tensor], on_grad_norms=None):
    """(output, hidden) of the module's cell (``module._cell``) on its flat weights: hx and
    hidden a tensor, or a tuple for a cell with several states. float16 and bfloat16 (also
    under autocast) are computed in float32 and returned in the dtype torch's class returns."""
    spec = cells.get(module._cell)
    result_dtype = input.dtype
    device_type = input.device.type
    if (input.dtype == torch.float32 and _autocast(device_type)
            and (spec.autocast_on_cpu or device_type != "cpu")):
        result_dtype = torch.get_autocast_dtype(device_type)
    compute_dtype = torch.float32 if result_dtype in _UPCAST else result_dtype
    _check_weight_dtypes(module, input)
    weights = module._flat_weights
    several = len(spec.states) > 1
    states = tuple(hx) if several else (hx,)
    if input.dtype != compute_dtype or any(w.dtype != compute_dtype for w in weights):
        input = input.to(compute_dtype)
        states = tuple(h.to(compute_dtype) for h in states)
        weights = [w.to(compute_dtype) for w in weights]
    nonlinearity = None
    if spec.nonlinearity:
        nonlinearity = "tanh" if module.mode == "RNN_TANH" else "relu"
    flow = module._gradient_flow
    weight_norms = flow is not None and flow.records_weight_contributions
    if weight_norms and input.device.type != "cpu":
        raise RuntimeError("record_gradient_flow(..., weight_contributions=True) runs on the "
                           f"CPU kernels only; the input is on {input.device}")
    output, hidden = _layers(spec.name, input, states if several else states[0], weights,
                             module.num_layers, module.bidirectional, nonlinearity,
                             module.dropout, module.training, module.batch_first, batch_sizes,
                             on_grad_norms, weight_norms)
    hidden = tuple(hidden) if several else (hidden,)
    if output.dtype != result_dtype:
        output = output.to(result_dtype)
        hidden = tuple(h.to(result_dtype) for h in hidden)
    return output, hidden if several else hidden[0]


def _flow(module, batch_sizes, input, max_batch_size, unsorted_indices):
    if module._gradient_flow is None:
        return None
    steps = input.size(1 if module.batch_first else 0) if batch_sizes is None \
        else batch_sizes.numel()
    return module._gradient_flow.callback(module, batch_sizes, steps, int(max_batch_size),
                                          unsorted_indices)


class _GatedCell(_DropIn):
    """What rnnkern.LSTM and rnnkern.GRU add alike to torch's class: the CPU kernels take the
    weights where they are, and on a GPU (or the meta device) torch's own kernels run."""

    _gradient_flow = None  # set by rnnkern.diagnostics.record_gradient_flow

    def flatten_parameters(self) -> None:
        """Does nothing on the CPU, where rnnkern reads the weights where they are; on a GPU,
        torch's (the gated cells run there on torch's own kernels, which want one buffer)."""
        if self._flat_weights and all(w.is_cuda for w in self._flat_weights):
            super().flatten_parameters()

    def _on_torch_kernels(self, data: Tensor) -> bool:
        """Whether this forward runs on torch's own code: meta (shapes only), a GPU, or a
        graph being made for deployment."""
        if _exporting():
            _refuse_recording(self)
            return True
        if data.device.type not in ("meta", "cuda"):
            return False
        if data.is_cuda and self._gradient_flow is not None:
            raise RuntimeError("record_gradient_flow of an LSTM or GRU runs on the CPU "
                               "only: on a GPU these run on torch's own kernels")
        return True


class LSTM(_GatedCell, torch.nn.LSTM):
    """``torch.nn.LSTM`` with forward and backward on rnnkern's fused CPU kernels (CUDA
    tensors run on torch's own LSTM: rnnkern's CUDA kernels cover the Elman cell only).

    Use it exactly like ``torch.nn.LSTM`` (``proj_size`` included); dtypes, fallbacks, compile
    and saving as for :class:`RNN`.
    """

    _cell = "lstm"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _let_dynamo_trace_rnn_modules()

    def forward(self, input: Union[Tensor, PackedSequence],
                hx: Optional[Tuple[Tensor, Tensor]] = None):
        """Runs the forward pass, like ``torch.nn.LSTM.forward``."""
        fast = self._forward_fast(input, hx)
        if fast is not None:
            return fast
        if self._on_torch_kernels(_input_data(input)):
            return super().forward(input, hx)
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise RuntimeError("lstm expects two hidden states: hx must be a tuple (h_0, c_0), "
                               f"got {type(hx).__name__}"
                               + (f" of {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        self._update_flat_weights()
        orig_input = input
        batch_sizes = None
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D "
                                 "instead")
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            sorted_indices = unsorted_indices = None
        if hx is None:
            layers = self.num_layers * num_directions
            hx = (torch.zeros(layers, max_batch_size, real_hidden_size, dtype=input.dtype,
                              device=input.device),
                  torch.zeros(layers, max_batch_size, self.hidden_size, dtype=input.dtype,
                              device=input.device))
        else:
            if batch_sizes is None:
                dims = 3 if is_batched else 2
                if hx[0].dim() != dims or hx[1].dim() != dims:
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {dims}-D but "
                                       f"got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                if not is_batched:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        for h in hx:
            RNN._check_hidden_matches_input(self, input, h, batch_sizes)
        output, hidden = _compute(
            self, input, hx, batch_sizes,
            _flow(self, batch_sizes, input, max_batch_size, unsorted_indices))
        if isinstance(orig_input, PackedSequence):
            output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output_packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return output, self.permute_hidden(hidden, unsorted_indices)


class GRU(_GatedCell, torch.nn.GRU):
    """``torch.nn.GRU`` with forward and backward on rnnkern's fused CPU kernels (CUDA
    tensors run on torch's own GRU, as for :class:`LSTM`).

    Use it exactly like ``torch.nn.GRU``; dtypes, fallbacks, compile and saving as for
    :class:`RNN`.
    """

    _cell = "gru"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _let_dynamo_trace_rnn_modules()

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        """Runs the forward pass, like ``torch.nn.GRU.forward``."""
        fast = self._forward_fast(input, hx)
        if fast is not None:
            return fast
        if self._on_torch_kernels(_input_data(input)):
            return super().forward(input, hx)

        def compute(input, hx, batch_sizes, max_batch_size, unsorted_indices):
            return _compute(
                self, input, hx, batch_sizes,
                _flow(self, batch_sizes, input, max_batch_size, unsorted_indices))

        return _one_state_forward(self, input, hx, "GRU: Expected input to be 2D or 3D, got {}D "
                                  "instead", compute)


def _lstm_init_signature(self, input_size: int, hidden_size: int, num_layers: int = 1,
                         bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                         bidirectional: bool = False, proj_size: int = 0, device=None,
                         dtype=None) -> None:
    """torch.nn.LSTM's constructor arguments."""


def _gru_init_signature(self, input_size: int, hidden_size: int, num_layers: int = 1,
                        bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                        bidirectional: bool = False, device=None, dtype=None) -> None:
    """torch.nn.GRU's constructor arguments."""


LSTM.__init__.__signature__ = inspect.signature(_lstm_init_signature)
GRU.__init__.__signature__ = inspect.signature(_gru_init_signature)

# One step at a time: torch's cells, for code that writes its own time loop.

class _StepCell(_DropIn):
    """What rnnkern.RNNCell, LSTMCell and GRUCell add to torch's class: forward is one call
    of the cell's fused step (a layer of one step, functional.layer's path: eager kernels,
    the custom op under torch.compile, the reference loop where the kernels cannot serve),
    and its backward one fused call. Anything else (a GPU, other dtypes, autocast, a graph
    for deployment, arguments torch would refuse) runs torch's own forward, errors
    included."""

    def _fused(self, input, hx) -> Optional[Tuple[Tensor, ...]]:
        """The new states as a tuple, or None where torch's own forward is to run."""
        # straight-line code with each check made once: this path is timed in microseconds
        if (type(input) is not Tensor or (input.dtype is not torch.float32
                                          and input.dtype is not torch.float64)
                or not input.is_cpu or torch.is_autocast_enabled("cpu") or _exporting()):
            return None
        dim = input.dim()
        if dim != 2 and dim != 1:
            return None
        count = self._state_count
        if hx is not None:
            if count == 1:
                states = (hx,)
            elif type(hx) is tuple or type(hx) is list:
                states = tuple(hx)
                if len(states) != count:
                    return None
            else:
                return None
        x = input if dim == 2 else input.unsqueeze(0)
        batch, features = x.shape
        hidden, dtype = self.hidden_size, input.dtype
        if features != self.input_size:
            return None
        if hx is None:
            states = tuple(torch.zeros(batch, hidden, dtype=dtype) for _ in range(count))
        else:
            for h in states:
                if (type(h) is not Tensor or h.dim() != dim or h.dtype is not dtype
                        or not h.is_cpu):
                    return None
            if dim == 1:
                states = tuple(h.unsqueeze(0) for h in states)
            for h in states:
                if h.shape != (batch, hidden):
                    return None
        params = self._parameters
        try:
            weights = (params["weight_ih"], params["weight_hh"], params["bias_ih"],
                       params["bias_hh"])
        except KeyError:  # parametrized or replaced weights
            weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        for w in weights:
            if w is not None and w.dtype is not dtype:
                return None
        nonlinearity = None
        if self._takes_nonlinearity:
            nonlinearity = self.nonlinearity
            if nonlinearity != "tanh" and nonlinearity != "relu":
                return None
        finals = _step(self._cell, x, states, *weights, nonlinearity)
        return finals if dim == 2 else tuple(h.squeeze(0) for h in finals)


class RNNCell(_StepCell, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` whose step (forward, and backward through it) is one fused call
    of rnnkern's kernels: for code that writes its own time loop. Same constructor,
    parameters, ``state_dict``, errors and unbatched input as torch's; CPU float32/float64
    (anything else runs torch's own cell)."""

    _cell = "rnn"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """Runs one step, like ``torch.nn.RNNCell.forward``."""
        fused = self._fused(input, hx)
        return fused[0] if fused is not None else super().forward(input, hx)


class LSTMCell(_StepCell, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` with its step on rnnkern's fused kernels, as :class:`RNNCell`."""

    _cell = "lstm"

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tensor]:
        """Runs one step, like ``torch.nn.LSTMCell.forward``."""
        fused = self._fused(input, hx)
        return fused if fused is not None else super().forward(input, hx)


class GRUCell(_StepCell, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` with its step on rnnkern's fused kernels, as :class:`RNNCell`."""

    _cell = "gru"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """Runs one step, like ``torch.nn.GRUCell.forward``."""
        fused = self._fused(input, hx)
        return fused[0] if fused is not None else super().forward(input, hx)


# What convert / revert swap: torch's class -> rnnkern's (the layers, then the one-step cells).
_DROP_INS = {cell.torch_type(): cell.module_type() for cell in CELLS if cell.drop_in}
_DROP_INS.update(cell.step_types() for cell in CELLS if cell.step_module)
_OURS = frozenset(cell.module_type() for cell in CELLS if cell.drop_in)

torch.serialization.add_safe_globals([LSTM, GRU, RNNCell, LSTMCell, GRUCell])
