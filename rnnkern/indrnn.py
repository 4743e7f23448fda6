"""The IndRNN (Li et al., CVPR 2018, "Independently Recurrent Neural Network"):
``h_t = φ(x_t W_ihᵀ + b_ih + u ⊙ h_{t-1} + b_hh)``, u = ``weight_hh_l{k}`` a vector (H,).

Each unit sees only its own previous value, so ∂h_t/∂h_{t-1} = diag(φ'(a_t) ⊙ u): the
gradient that reaches h_t from k steps later is, unit by unit, Π φ' · u^k, and |u| ≤ 1 with
relu keeps it from exploding. :class:`IndRNN` has the constructor and forward of
``torch.nn.RNN`` (it is not a drop-in: torch.nn.RNN's W_hh is (H, H)); :func:`indrnn` is one
layer-direction, :func:`reference` its autograd loop.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import functional, modules
from .reference import _packed_rows, _scan

__all__ = ["IndRNN", "indrnn", "reference"]


def reference(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None, *,
              nonlinearity: str = "tanh", batch_sizes: Optional[Tensor] = None,
              reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """One IndRNN layer-direction as an autograd loop (the convention of rnnkern.cells):
    input (T, B, I) or packed (N, I) with batch_sizes; returns (output, h_n)."""
    phi = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    hidden = w_hh.shape[0]
    sizes, rows = _packed_rows(input, batch_sizes)
    batch = sizes[0]
    if hx is None:
        hx = input.new_zeros(batch, hidden)

    def step(x_t, h_prev):
        a = x_t @ w_ih.T + w_hh * h_prev
        if b_ih is not None:
            a = a + b_ih
        if b_hh is not None:
            a = a + b_hh
        return (phi(a),)

    states, (h_n,) = _scan(rows, sizes, reverse, (hx,), step)
    output = torch.cat([s[0] for s in states])
    if batch_sizes is None:
        output = output.reshape(len(sizes), batch, hidden)
    return output, h_n


def indrnn(input: Tensor, hx: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
           b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
           nonlinearity: str = "tanh", *, batch_sizes: Optional[Tensor] = None,
           reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """One IndRNN layer-direction on rnnkern's kernels: :func:`rnnkern.functional.layer`
    with cell "indrnn"; w_ih (H, I), w_hh = u (H,), b_ih, b_hh (H,) or None."""
    return functional.layer("indrnn", input, hx, w_ih, w_hh, b_ih, b_hh, None, nonlinearity,
                            batch_sizes=batch_sizes, reverse=reverse)


class IndRNN(torch.nn.RNN):
    """A stack of IndRNN layers with the constructor and forward of ``torch.nn.RNN``
    (``nonlinearity``, ``bias``, ``batch_first``, ``dropout``, ``bidirectional``, packed
    input), forward and backward on rnnkern's CPU kernels. ``weight_hh_l{k}`` is u, of shape
    (hidden_size,), drawn from U(-1, 1); the other weights as torch.nn.RNN draws them.

    CPU tensors only (float16 and bfloat16 computed in float32); second derivatives,
    forward-mode AD, torch.func and the meta device run on :func:`reference`.
    ``rnnkern.diagnostics.record_gradient_flow`` records it like the other cells.
    """

    _cell = "indrnn"  # its spec in rnnkern.cells
    _gradient_flow = None  # set by rnnkern.diagnostics.record_gradient_flow

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in self._flat_weights_names:
            if name.startswith("weight_hh"):
                old = getattr(self, name)
                setattr(self, name, torch.nn.Parameter(old.new_empty(self.hidden_size)))
        self.reset_parameters()
        modules._let_dynamo_trace_rnn_modules()

    def reset_parameters(self) -> None:
        """torch.nn.RNN's initialisation, then u ~ U(-1, 1)."""
        super().reset_parameters()
        with torch.no_grad():
            for name in self._flat_weights_names:
                if name.startswith("weight_hh"):
                    w = getattr(self, name)
                    if w.dim() == 1:
                        w.uniform_(-1, 1)

    def flatten_parameters(self) -> None:
        """Does nothing: rnnkern reads the weights where they are."""

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        """Runs the forward pass, like ``torch.nn.RNN.forward``."""
        data = modules._input_data(input)
        if data.device.type not in ("cpu", "meta"):
            raise RuntimeError(f"rnnkern.IndRNN runs on the CPU only, got input on "
                               f"{data.device}: move the module and input with .cpu()")

        def compute(input, hx, batch_sizes, max_batch_size, unsorted_indices):
            return modules._compute(
                self, input, hx, batch_sizes,
                modules._flow(self, batch_sizes, input, max_batch_size, unsorted_indices))

        return modules._one_state_forward(self, input, hx, "IndRNN: Expected input to be 2D "
                                          "or 3D, got {}D tensor instead", compute)


torch.serialization.add_safe_globals([IndRNN])
