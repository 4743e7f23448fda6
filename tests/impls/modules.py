"""Module candidates for rnnkern.testing's tests: torch.nn.RNN subclasses whose backward is a
hand-written NumPy BPTT (tests/impls/bptt.py), correct or with a bug in one layer."""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bptt as numpy_bptt  # noqa: E402


class _Layer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, bug):
        arrays = [t.detach().numpy() for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]
        ctx.arrays, ctx.bug = arrays, bug
        return torch.from_numpy(numpy_bptt.forward(*arrays))

    @staticmethod
    def backward(ctx, grad_y):
        g = numpy_bptt._bptt(*ctx.arrays, grad_y.numpy(), bug=ctx.bug)
        return tuple(torch.from_numpy(np.ascontiguousarray(g[k])) for k in
                     ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")) + (None,)


class HandRNN(torch.nn.RNN):
    """tanh, one direction, unpacked, with biases; `bug` in layer `bug_layer`."""

    bug = None
    bug_layer = 0

    def forward(self, input, hx=None):
        layer_input, h_n = input, []
        for layer in range(self.num_layers):
            w = [getattr(self, f"{kind}_l{layer}") for kind in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            out = _Layer.apply(layer_input, hx[layer], *w,
                               self.bug if layer == self.bug_layer else None)
            h_n.append(out[-1])
            layer_input = out
        return layer_input, torch.stack(h_n)


class HandRNNNoDphi(HandRNN):
    bug = "no dphi"


class HandRNNWhhUntransposedInLayer1(HandRNN):
    bug = "w_hh untransposed"
    bug_layer = 1


class ReverseDirectionDetached(torch.nn.RNN):
    """torch.nn.RNN, except that no gradient flows through the reverse direction's output."""

    def forward(self, input, hx=None):
        out, h_n = super().forward(input, hx)
        if self.bidirectional:
            H = self.hidden_size
            packed = isinstance(out, torch.nn.utils.rnn.PackedSequence)
            data = out.data if packed else out
            data = torch.cat([data[..., :H], data[..., H:].detach()], -1)
            out = out._replace(data=data) if packed else data
        return out, h_n


class _Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class DoubledGradientOfHx(torch.nn.RNN):
    """torch.nn.RNN with twice the right gradient for hx, in every configuration."""

    def forward(self, input, hx=None):
        return super().forward(input, _Double.apply(hx))


class WrongNames(torch.nn.Module):
    def __init__(self, input_size, hidden_size, **options):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(hidden_size, input_size))

    def forward(self, input, hx=None):
        return input, hx


class ReturnsOutputOnly(torch.nn.RNN):
    def forward(self, input, hx=None):
        return super().forward(input, hx)[0]
