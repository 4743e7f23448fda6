"""``rnnkern.RNN``: a drop-in for ``torch.nn.RNN`` that runs on rnnkern's kernels.

It is a subclass of ``torch.nn.RNN``: same constructor, parameters, state_dict, repr and
errors. Only the computation in ``forward`` differs.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .functional import rnn_layers

__all__ = ["RNN"]

# Computed in float32 inside and returned in the input's dtype.
_UPCAST = (torch.float16, torch.bfloat16)


def _let_dynamo_trace_rnn_modules() -> None:
    # Dynamo graph-breaks on every torch.nn.RNN instance unless this is set; it only lifts
    # that check (it also lets Dynamo trace into torch's own RNN, GRU and LSTM).
    import torch._dynamo

    torch._dynamo.config.allow_rnn = True


class RNN(torch.nn.RNN):
    _gradient_flow = None  # set by rnnkern.diagnostics.record_gradient_flow

    """``torch.nn.RNN`` with forward and backward on rnnkern's fused CPU kernels.

    Use it exactly like ``torch.nn.RNN``; see its documentation for the arguments. float32 and
    float64 run on the kernels directly; float16 and bfloat16 (also under autocast) are
    computed in float32 and returned in that dtype.
    Creating one sets ``torch._dynamo.config.allow_rnn = True`` so that
    ``torch.compile(fullgraph=True)`` traces through it instead of breaking the graph.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _let_dynamo_trace_rnn_modules()

    def flatten_parameters(self) -> None:
        """Does nothing: rnnkern reads the weights where they are."""

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
                ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        # The input handling follows torch.nn.RNN.forward line by line.
        self._update_flat_weights()
        num_directions = 2 if self.bidirectional else 1
        orig_input = input
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
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
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            hx = torch.zeros(self.num_layers * num_directions, max_batch_size, self.hidden_size,
                             dtype=input.dtype, device=input.device)
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(input, hx, batch_sizes)
        self._check_hidden_matches_input(input, hx, batch_sizes)

        on_grad_norms = None
        if self._gradient_flow is not None:
            from .diagnostics import _flow_callback

            steps = input.size(1 if self.batch_first else 0) if batch_sizes is None \
                else batch_sizes.numel()
            on_grad_norms = _flow_callback(self, batch_sizes, steps, max_batch_size,
                                           unsorted_indices)
        output, hidden = self._compute(input, hx, batch_sizes, on_grad_norms)

        if isinstance(orig_input, PackedSequence):
            output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output_packed, self.permute_hidden(hidden, unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)

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

    def _compute(self, input: Tensor, hx: Tensor, batch_sizes: Optional[Tensor],
                 on_grad_norms=None) -> Tuple[Tensor, Tensor]:
        result_dtype = input.dtype
        device_type = input.device.type
        if input.dtype == torch.float32 and torch.is_autocast_enabled(device_type):
            result_dtype = torch.get_autocast_dtype(device_type)  # as torch.nn.RNN does
        compute_dtype = torch.float32 if result_dtype in _UPCAST else result_dtype
        weights = self._flat_weights
        if input.dtype != compute_dtype or any(w.dtype != compute_dtype for w in weights):
            input, hx = input.to(compute_dtype), hx.to(compute_dtype)
            weights = [w.to(compute_dtype) for w in weights]
        nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
        output, hidden = rnn_layers(input, hx, weights, self.num_layers, self.bidirectional,
                                    nonlinearity, self.dropout, self.training, self.batch_first,
                                    batch_sizes, on_grad_norms)
        if output.dtype != result_dtype:
            output, hidden = output.to(result_dtype), hidden.to(result_dtype)
        return output, hidden
