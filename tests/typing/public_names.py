"""Checked by mypy in CI (.ci/run), never run: rnnkern's public names have their types for a
type checker, although they load on first use (rnnkern.__getattr__)."""

import torch
from typing_extensions import assert_type

import rnnkern

lstm = rnnkern.LSTM(3, 4, num_layers=2)
assert_type(lstm, rnnkern.LSTM)
gru: torch.nn.GRU = rnnkern.GRU(3, 4)
rnn: torch.nn.RNN = rnnkern.RNN(3, 4)
cell: torch.nn.LSTMCell = rnnkern.LSTMCell(3, 4)
assert_type(rnnkern.RNNCell(3, 4), rnnkern.RNNCell)
assert_type(rnnkern.GRUCell(3, 4), rnnkern.GRUCell)
assert_type(rnnkern.IndRNN(3, 4), rnnkern.IndRNN)
model = torch.nn.Sequential(torch.nn.LSTM(3, 4))
assert_type(rnnkern.convert(model), torch.nn.Module)
assert_type(rnnkern.revert(model), torch.nn.Module)
assert_type(rnnkern.isa(), str)
assert_type(rnnkern.empty_cache(), int)
flow = rnnkern.diagnostics.record_gradient_flow(lstm)
