"""Bad arguments to the NumPy API, the functional API and the drop-ins: an exception that names
the argument, never a silent wrong answer or an unrelated error (issue 18, items 5, 6, 8, 9).
A test that takes ``cell`` runs for the registry's cells (the cell fixture of conftest.py), or
for the drop-in ones."""

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import cells, functional

H, I, B, T = 5, 3, 2, 4


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    lstm = [rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))]
    gru = [rng.standard_normal((3 * H, I)), rng.standard_normal((3 * H, H))]
    rnn = [rng.standard_normal((H, I)), rng.standard_normal((H, H))]
    return x, h0, lstm, gru, rnn


@pytest.mark.parametrize("flag", ["False", "True", 0, 1, None, np.array([True])])
def test_reverse_must_be_a_bool(arrays, flag):
    x, h0, lstm, gru, rnn = arrays
    calls = [lambda: rnnkern.forward(x, h0, *rnn, reverse=flag),
             lambda: rnnkern.lstm_forward(x, h0, h0, *lstm, reverse=flag),
             lambda: rnnkern.gru_forward(x, h0, *gru, reverse=flag)]
    for call in calls:
        with pytest.raises(TypeError, match=r"reverse must be a bool, got "):
            call()


def test_numpy_bool_flags_are_accepted(arrays):
    x, h0, lstm, gru, rnn = arrays
    np.testing.assert_array_equal(rnnkern.forward(x, h0, *rnn, reverse=np.bool_(True)),
                                  rnnkern.forward(x, h0, *rnn, reverse=True))
    np.testing.assert_array_equal(rnnkern.gru_forward(x, h0, *gru, reverse=np.False_).y,
                                  rnnkern.gru_forward(x, h0, *gru).y)


def test_backward_output_must_be_what_forward_returned(arrays):
    x, h0, lstm, gru, rnn = arrays
    out_l = rnnkern.lstm_forward(x, h0, h0, *lstm)
    out_g = rnnkern.gru_forward(x, h0, *gru)
    gy = np.ones((T, B, H))
    for bad, got in ((out_g, "GRUOutput"), (None, "NoneType"), (out_l._asdict(), "dict")):
        with pytest.raises(TypeError, match=rf"output must be the LSTMOutput that lstm_forward "
                                            rf"returned \(y, c, gates, m\), got {got}"):
            rnnkern.lstm_backward(x, h0, h0, *lstm, output=bad, grad_y=gy)
    for bad, got in ((out_l, "LSTMOutput"), (None, "NoneType")):
        with pytest.raises(TypeError, match=rf"output must be the GRUOutput .* got {got}"):
            rnnkern.gru_backward(x, h0, *gru, output=bad, grad_y=gy)
    with pytest.raises(TypeError, match=r"output\.c must be a numpy\.ndarray, got str"):
        rnnkern.lstm_backward(x, h0, h0, *lstm, output=(out_l.y, "c", out_l.gates), grad_y=gy)
    # a plain tuple of the right arrays still works
    a = rnnkern.lstm_backward(x, h0, h0, *lstm, output=tuple(out_l), grad_y=gy)
    b = rnnkern.lstm_backward(x, h0, h0, *lstm, output=out_l, grad_y=gy)
    np.testing.assert_array_equal(a.w_hh, b.w_hh)


def test_empty_batch_sizes(arrays):
    x, h0, lstm, gru, rnn = arrays
    with pytest.raises(ValueError, match=r"batch_sizes must have at least one entry, got 0"):
        rnnkern.forward(x.reshape(-1, I), h0, *rnn, batch_sizes=[])
    with pytest.raises(ValueError, match=r"batch_sizes must have at least one entry, got 0"):
        rnnkern.lstm_forward(x.reshape(-1, I), h0, h0, *lstm, batch_sizes=np.array([]))


def _tensors(gates):
    torch.manual_seed(0)
    return (torch.randn(T, B, I), torch.randn(B, H), torch.randn(gates * H, I),
            torch.randn(gates * H, H))


def test_functional_lstm_hx_must_be_two_tensors():
    x, h0, w_ih, w_hh = _tensors(4)
    for hx, got in (((h0, None), r"\(Tensor, NoneType\)"), ((h0,), r"\(Tensor\)"),
                    ((h0, h0, h0), r"\(Tensor, Tensor, Tensor\)"), (h0, "Tensor")):
        with pytest.raises(TypeError, match=r"hx must be None or a tuple \(h0, c0\) of two "
                                            rf"torch.Tensors, got {got}"):
            functional.lstm(x, hx, w_ih, w_hh)


@pytest.mark.cells(drop_in=True)
def test_functional_input_dimensions(cell):
    x, h0, w_ih, w_hh = _tensors(cells.get(cell).gate_count)
    f = getattr(functional, cell)
    with pytest.raises(ValueError, match=r"input must have 3 dimensions, \(T, B, I\); got "
                                         r"shape \(4, 3\)"):
        f(x[:, 0], None, w_ih, w_hh)
    with pytest.raises(ValueError, match=r"input must have 2 dimensions, packed"):
        f(x, None, w_ih, w_hh, batch_sizes=torch.tensor([2, 2, 2, 2]))


def test_lstm_hx_of_three_tensors_raises_like_torch():
    x = torch.randn(T, B, I)
    hx = tuple(torch.zeros(1, B, H) for _ in range(3))
    with pytest.raises(RuntimeError, match="lstm expects two hidden states"):
        torch.nn.LSTM(I, H)(x, hx)
    with pytest.raises(RuntimeError, match="lstm expects two hidden states"):
        rnnkern.LSTM(I, H)(x, hx)


@pytest.mark.cells(drop_in=True)
def test_weight_of_another_dtype_raises(cell):
    m = cells.get(cell).module_type()(I, H)
    m.weight_hh_l0.data = m.weight_hh_l0.data.double()
    with pytest.raises(RuntimeError):
        cells.get(cell).torch_type().forward(m, torch.randn(T, B, I))  # torch raises too
    with pytest.raises(RuntimeError, match=r"weight_hh_l0 has dtype torch.float64 but the "
                                           r"input has dtype torch.float32"):
        m(torch.randn(T, B, I))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the weights itself
        m(torch.randn(T, B, I))


def test_module_input_of_another_type(cell):
    with pytest.raises(TypeError, match=r"input must be a torch.Tensor or a PackedSequence, "
                                        r"got numpy.ndarray"):
        cells.get(cell).module_type()(I, H)(np.zeros((T, B, I), dtype=np.float32))


def test_output_changed_in_place_before_backward_raises(cell):
    """The documented decision, for every cell: the kernels keep the output for backward, so
    changing it in place raises autograd's error (never a wrong gradient)."""
    x = torch.randn(T, B, I, requires_grad=True)
    y, _ = cells.get(cell).module_type()(I, H)(x)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.cells(drop_in=True)
def test_functional_reverse_must_be_a_bool(cell):
    x, h0, w_ih, w_hh = _tensors(cells.get(cell).gate_count)
    with pytest.raises(TypeError, match=r"reverse must be a bool, got str 'False'"):
        getattr(functional, cell)(x, None, w_ih, w_hh, reverse="False")
