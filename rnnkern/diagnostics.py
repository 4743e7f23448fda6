"""Gradient-flow diagnostics: how the gradient vanishes or explodes through time.

BPTT multiplies one Jacobian diag(φ'(a_t)) W_hh per step, so ‖∂h_T/∂h_t‖ ≤ σ_max(W_hh)^(T-t)
for tanh and relu (Pascanu, Mikolov and Bengio, 2013).

- :func:`record_gradient_flow` records ‖∂L/∂h_t‖₂ inside the fused backward of an
  ``rnnkern.RNN``, ``LSTM`` or ``GRU`` (the kernel has d_t in hand; no autograd hooks), and
  ‖∂L/∂c_t‖₂ for the LSTM, whose additive cell path is why its gradient survives; with
  ``weight_contributions=True`` also the size of each step's term δ_tᵀ h_{t-1} of
  ∂L/∂W_hh = Σ_t δ_tᵀ h_{t-1}, and from it the gradient horizon (:meth:`GradientFlow.horizon`).
- :func:`jacobian_norms` gives the spectral norms of the Jacobian products themselves.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import cells
from .functional import rnn_layers
from .modules import GRU, LSTM, RNN

__all__ = ["GradientFlow", "record_gradient_flow", "JacobianNorms", "jacobian_norms"]


class GradientFlow:
    """What :func:`record_gradient_flow` collects.

    Attributes:
        norms: float64 (num_layers · num_directions, T, B): ‖∂L/∂h_t‖₂, the norm of the whole
            gradient that reaches each hidden state, per layer-direction, step and sample, in
            the caller's batch order, from the last backward pass. NaN where a packed
            sequence has no such step, and for every step of a layer-direction whose
            backward did not run. None until a backward pass has run.
        history: the norms of every backward pass in the block, oldest first.
        cell_norms, cell_history: the same for ‖∂L/∂c_t‖₂ of an ``rnnkern.LSTM`` (the
            cell state); None and empty for the other layers.
        weight_contributions: float64 (num_layers · num_directions, T), with
            ``weight_contributions=True``: ‖δ_tᵀ h_{t-1}‖_F, the Frobenius norm of step t's
            term of ∂L/∂W_hh = Σ_t δ_tᵀ h_{t-1} (summed over the batch: the gradient that step
            t's own copy of W_hh would get, were the steps untied; for the IndRNN's vector u,
            ‖Σ_b δ_b ⊙ h_b‖), in time order, from the last backward pass; NaN where
            ``norms`` is. None without the option or before a backward pass.
        weight_contribution_history: those of every backward pass, oldest first.
        not_recorded: the (layer, direction) pairs whose backward did not run in the last
            backward pass (frozen weights and an input that needs no gradient: autograd
            skips them). Their rows of ``norms`` are NaN; a warning names them once.
    """

    def __init__(self, weight_contributions: bool = False) -> None:
        self.history: List[Tensor] = []
        self.cell_history: List[Tensor] = []
        self.weight_contribution_history: List[Tensor] = []
        self.records_weight_contributions = weight_contributions
        self._reverse: List[bool] = []  # per layer-direction, of the last forward recorded
        self.not_recorded: List[Tuple[int, int]] = []
        self._warned = False

    @property
    def norms(self) -> Optional[Tensor]:
        return self.history[-1] if self.history else None

    @property
    def cell_norms(self) -> Optional[Tensor]:
        return self.cell_history[-1] if self.cell_history else None

    @property
    def weight_contributions(self) -> Optional[Tensor]:
        history = self.weight_contribution_history
        return history[-1] if history else None

    def horizon(self, fraction: float = 0.9) -> Tensor:
        """The gradient horizon of each layer-direction in the last backward pass: the
        smallest distance K from the end of the sequence such that the steps at distances
        0 … K carry at least ``fraction`` of Σ_t ‖δ_tᵀ h_{t-1}‖_F (the norms of
        ``weight_contributions``). The distance of step t is T-1-t for a forward direction
        and t for a reverse one (its steps run backwards): with the loss at the end, K is how
        far back W_hh learns from. An int64 tensor (num_layers · num_directions,), -1 for a
        layer-direction whose backward did not run or whose contributions are all zero."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        terms = self.weight_contributions
        if terms is None:
            raise RuntimeError("no weight contributions recorded: use "
                               "record_gradient_flow(rnn, weight_contributions=True) and run "
                               "a backward pass in the block")
        out = torch.full((terms.shape[0],), -1, dtype=torch.int64)
        for index, row in enumerate(terms):
            by_distance = row if self._reverse[index] else row.flip(0)
            by_distance = torch.nan_to_num(by_distance, nan=0.0)
            total = float(by_distance.sum())
            if total > 0 and math.isfinite(total):
                share = torch.cumsum(by_distance, 0) / total
                out[index] = int(torch.searchsorted(share, torch.tensor(
                    [fraction * (1 - 1e-12)], dtype=torch.float64)))
        return out

    def _expect(self, directions: int, count: int, shape: Tuple[int, ...],
                to_steps: Callable[[Tensor], Tensor], history: Optional[List[Tensor]] = None):
        """A callback for one forward pass: collects ``count`` layer-directions' norms (into
        ``history``, default self.history), each ``shape`` once mapped by to_steps; an index
        reported with None at forward time will get no backward."""
        history = self.history if history is None else history
        parts: List[Optional[Tensor]] = [None] * count
        absent: List[int] = []

        def receive(index: int, row_norms: Optional[Tensor]) -> None:
            if row_norms is None:
                absent.append(index)
                return
            parts[index] = to_steps(row_norms)
            if any(parts[i] is None for i in range(count) if i not in absent):
                return
            device = next(p for p in parts if p is not None).device
            nan = torch.full(shape, math.nan, dtype=torch.float64, device=device)
            history.append(torch.stack([nan if p is None else p for p in parts]))
            parts[:] = [None] * count
            self.not_recorded = [divmod(i, directions) for i in sorted(absent)]
            if self.not_recorded and not self._warned:
                self._warned = True
                warnings.warn("record_gradient_flow: no backward ran for (layer, direction) "
                              f"{self.not_recorded} (frozen, and its input needs no "
                              "gradient); their norms are NaN", stacklevel=2)

        return receive

    def callback(self, rnn: torch.nn.RNNBase, batch_sizes: Optional[Tensor], T: int,
                 B: int, unsorted_indices: Optional[Tensor]):
        """The on_grad_norms(index, norm_h, norm_c=None) callback of rnnkern.functional's
        layers for one forward pass of the recorded ``rnn`` (T steps, B rows)."""
        directions = 2 if rnn.bidirectional else 1
        count = rnn.num_layers * directions
        self._reverse = [index % directions == 1 for index in range(count)]
        to_steps = _steps_by_batch(T, B, batch_sizes, unsorted_indices)
        receive_h = self._expect(directions, count, (T, B), to_steps)
        receive_c = self._expect(directions, count, (T, B), to_steps, self.cell_history) \
            if len(cells.get(rnn._cell).states) > 1 else None
        receive_w = self._expect(directions, count, (T,), lambda terms: terms,
                                 self.weight_contribution_history) \
            if self.records_weight_contributions else None

        def receive(index: int, norm_h: Optional[Tensor], norm_c: Optional[Tensor] = None,
                    norm_w: Optional[Tensor] = None) -> None:
            receive_h(index, norm_h)
            if receive_c is not None:
                receive_c(index, norm_c)
            if receive_w is not None:
                receive_w(index, norm_w)

        return receive


def _steps_by_batch(T: int, B: int, batch_sizes: Optional[Tensor],
                    unsorted_indices: Optional[Tensor]) -> Callable[[Tensor], Tensor]:
    """Maps per-row values in the kernel's layout to a (T, B) tensor in the caller's order."""
    if batch_sizes is None:
        return lambda rows: rows.reshape(T, B)
    # packed row i is step t, batch row b: element t·B + b of the (T, B) result
    steps = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes)
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    flat = steps * B + torch.arange(len(steps)) - offsets[steps]

    def to_steps(rows: Tensor) -> Tensor:  # on the device of rows (the kernel's)
        out = torch.full((T * B,), math.nan, dtype=torch.float64, device=rows.device)
        out[flat.to(rows.device)] = rows
        out = out.view(T, B)
        return out if unsorted_indices is None else out[:, unsorted_indices.to(rows.device)]

    return to_steps


def _one_of(titles) -> str:
    """"rnnkern.RNN, LSTM or GRU" for those titles."""
    *first, last = titles
    return f"rnnkern.{', '.join(first)} or {last}"


@contextlib.contextmanager
def record_gradient_flow(rnn: torch.nn.RNNBase, weight_contributions: bool = False
                         ) -> Iterator[GradientFlow]:
    """Record ‖∂L/∂h_t‖₂ (and, for an LSTM, ‖∂L/∂c_t‖₂) during the backward passes of ``rnn``
    inside the block.

    The fused kernel computes the norms in the backward pass it runs anyway. Eager mode only.
    ``weight_contributions=True`` also records ‖δ_tᵀ h_{t-1}‖_F, the size of each step's term
    of ∂L/∂W_hh (:attr:`GradientFlow.weight_contributions`, :meth:`GradientFlow.horizon`): two
    B × B Gram matrices per step in the backward, so it costs more than the norms; CPU only.

    >>> with record_gradient_flow(rnn) as flow:
    ...     loss(rnn(x)).backward()
    >>> flow.norms.shape            # (num_layers * num_directions, T, B)
    """
    if not isinstance(rnn, tuple(spec.module_type() for spec in cells.CELLS)):
        wanted = next((f"rnnkern.{spec.title}" for spec in cells.CELLS
                       if spec.drop_in and isinstance(rnn, spec.torch_type())),
                      _one_of(c.title for c in cells.CELLS))
        raise TypeError(f"rnn must be an {wanted}, got {type(rnn).__name__}")
    if rnn._gradient_flow is not None:
        raise RuntimeError(f"this rnnkern.{type(rnn).__name__} is already recording its "
                           "gradient flow")
    flow = GradientFlow(bool(weight_contributions))
    rnn._gradient_flow = flow
    try:
        yield flow
    finally:
        rnn._gradient_flow = None


class JacobianNorms(NamedTuple):
    norms: Tensor      # (T, B) float64: ‖∂h_last/∂h_{last-k}‖₂ for k = 0 … T-1
    sigma_max: float   # σ_max(W_hh)
    bound: Tensor      # (T,) float64: sigma_max ** k


def jacobian_norms(rnn: RNN, input: Union[Tensor, PackedSequence], layer: int = 0,
                   direction: int = 0, hx: Optional[Tensor] = None) -> JacobianNorms:
    """Spectral norms of the products of step Jacobians along each sample's trajectory.

    ``norms[k, b]`` is ‖∂h_last/∂h_{last-k}‖₂ = ‖Π diag(φ'(a)) W_hh‖₂ over the last k steps
    that the layer-direction processes for sample b (k = 0 is the identity; "last" is the
    final step in processing order, step 0 for the reverse direction). NaN where k is not
    shorter than the sample's length. Computed in float64, in the caller's batch order.
    ``bound[k] = sigma_max ** k`` bounds the norms for tanh and relu.
    """
    if not isinstance(rnn, torch.nn.RNN):
        raise TypeError(f"rnn must be a torch.nn.RNN or rnnkern.RNN, got {type(rnn).__name__}")
    directions = 2 if rnn.bidirectional else 1
    if not 0 <= layer < rnn.num_layers:
        raise ValueError(f"layer must be in [0, {rnn.num_layers}), got {layer}")
    if not 0 <= direction < directions:
        raise ValueError(f"direction must be in [0, {directions}), got {direction}")
    nonlinearity = "tanh" if rnn.mode == "RNN_TANH" else "relu"
    weights = [w.detach().double() for w in rnn._flat_weights]
    per_direction = len(weights) // (rnn.num_layers * directions)
    index = layer * directions + direction
    w_hh = weights[index * per_direction + 1]

    with torch.no_grad():
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes = input.data.double(), input.batch_sizes
            B = int(batch_sizes[0])
        else:
            data, batch_sizes = input.double(), None
            if data.dim() == 2:
                data = data.unsqueeze(0 if rnn.batch_first else 1)
                if hx is not None and hx.dim() == 2:  # unbatched hx, as the module accepts
                    hx = hx.unsqueeze(1)
            B = data.shape[0 if rnn.batch_first else 1]
        if hx is None:
            hx = torch.zeros(rnn.num_layers * directions, B, rnn.hidden_size, dtype=torch.float64)
        elif packed:
            hx = rnn.permute_hidden(hx.double(), input.sorted_indices)
        hx = hx.double()
        # Outputs of layers 0 … layer; keep the chosen direction's half.
        out, _ = rnn_layers(data, hx, weights[:(layer + 1) * directions * per_direction],
                            layer + 1, rnn.bidirectional, nonlinearity,
                            batch_first=rnn.batch_first, batch_sizes=batch_sizes)
        h = out[..., direction * rnn.hidden_size:(direction + 1) * rnn.hidden_size]
        if packed:
            h, lengths = pad_packed_sequence(
                PackedSequence(h, batch_sizes, input.sorted_indices, input.unsorted_indices))
        else:
            if rnn.batch_first:
                h = h.transpose(0, 1)
            lengths = torch.full((B,), h.shape[0], dtype=torch.int64)
        T = h.shape[0]
        # φ'(a) at the k-th step from the last one each sample processes.
        dphi = torch.zeros(T, B, rnn.hidden_size, dtype=torch.float64)
        for b in range(B):
            n = int(lengths[b])
            steps = h[:n, b]
            if direction == 1:
                steps = steps.flip(0)  # processing order of the reverse direction
            from_last = steps.flip(0)
            dphi[:n, b] = 1 - from_last * from_last if nonlinearity == "tanh" else \
                (from_last > 0).double()
        norms = torch.full((T, B), math.nan, dtype=torch.float64)
        product = torch.eye(rnn.hidden_size, dtype=torch.float64).expand(B, -1, -1)
        for k in range(T):
            if k > 0:
                product = product @ (dphi[k - 1].unsqueeze(-1) * w_hh)
            live = lengths > k
            norms[k, live] = torch.linalg.matrix_norm(product[live], ord=2)
        sigma_max = float(torch.linalg.matrix_norm(w_hh, ord=2))
        bound = torch.tensor([sigma_max ** k for k in range(T)], dtype=torch.float64)
    return JacobianNorms(norms, sigma_max, bound)
