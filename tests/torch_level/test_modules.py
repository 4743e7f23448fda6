"""rnnkern.RNN against torch.nn.RNN: one state_dict, same outputs, h_n and every gradient."""

import copy
import io
import itertools
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkern

from conftest import assert_f32_close, assert_f64_close

SIZES = [(1, 1, 1, 1), (5, 3, 4, 5), (7, 4, 3, 17), (4, 5, 6, 33), (3, 2, 5, 1)]
FORMS = ["batched", "unbatched", "packed_sorted", "packed_unsorted"]


def build_pair(I, H, dtype=torch.float64, **kwargs):
    theirs = torch.nn.RNN(I, H, dtype=dtype, **kwargs)
    ours = rnnkern.RNN(I, H, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def make_input(form, T, B, I, batch_first, dtype, seed):
    """The same input for both modules, plus a function that reads back padded output."""
    g = torch.Generator().manual_seed(seed)
    if form == "unbatched":
        return torch.randn(T, I, dtype=dtype, generator=g), 1
    x = torch.randn(B, T, I, dtype=dtype, generator=g) if batch_first else \
        torch.randn(T, B, I, dtype=dtype, generator=g)
    if form == "batched":
        return x, B
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[torch.randint(0, B, (1,), generator=g)] = T
    if form == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    return pack_padded_sequence(x, lengths, batch_first=batch_first,
                                enforce_sorted=form == "packed_sorted"), B


def run(module, x, hx, weights_out):
    """Forward, a loss that weighs every output differently, backward; returns the results."""
    if isinstance(x, torch.Tensor):
        x = x.detach().clone().requires_grad_()
        inp = x
    else:
        data = x.data.detach().clone().requires_grad_()
        inp = torch.nn.utils.rnn.PackedSequence(data, x.batch_sizes, x.sorted_indices,
                                                x.unsorted_indices)
        x = data
    h = None if hx is None else hx.detach().clone().requires_grad_()
    out, h_n = module(inp, h)
    out_t = out.data if not isinstance(out, torch.Tensor) else out
    gen = torch.Generator().manual_seed(weights_out)
    loss = (out_t * torch.randn(out_t.shape, generator=gen, dtype=out_t.dtype)).sum() + \
        (h_n * torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype)).sum()
    module.zero_grad(set_to_none=True)
    loss.backward()
    grads = {"input": x.grad}
    if h is not None:
        grads["hx"] = h.grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return out, h_n, grads


GRID = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False],
                              ["tanh", "relu"], FORMS, [False, True]))


def grid_id(case):
    layers, bidir, bf, bias, nl, form, with_hx = case
    return (f"L{layers}" + ("-bi" if bidir else "") + ("-bf" if bf else "") +
            ("" if bias else "-nobias") + f"-{nl}-{form}" + ("-hx" if with_hx else ""))


def run_case(case, index, dtype):
    layers, bidir, batch_first, bias, nl, form, with_hx = case
    T, B, I, H = SIZES[index % len(SIZES)]
    kwargs = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias,
                  nonlinearity=nl)
    ours, theirs = build_pair(I, H, dtype=torch.float64, **kwargs)
    x, batch = make_input(form, T, B, I, batch_first, torch.float64, seed=index)
    D = 2 if bidir else 1
    hx = None
    if with_hx:
        shape = (layers * D, H) if form == "unbatched" else (layers * D, batch, H)
        hx = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(index))
    exact = run(theirs, x, hx, index)
    if dtype == torch.float64:
        return run(ours, x, hx, index), exact, None
    ours32, theirs32 = ours.float(), theirs.float()
    x32 = x.float() if isinstance(x, torch.Tensor) else torch.nn.utils.rnn.PackedSequence(
        x.data.float(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    hx32 = None if hx is None else hx.float()
    return run(ours32, x32, hx32, index), exact, run(theirs32, x32, hx32, index)


@pytest.mark.parametrize("index", range(len(GRID)), ids=[grid_id(c) for c in GRID])
def test_parity_float64(index):
    (out, h_n, grads), (out_t, h_n_t, grads_t), _ = run_case(GRID[index], index, torch.float64)
    if isinstance(out_t, torch.Tensor):
        assert isinstance(out, torch.Tensor) and out.shape == out_t.shape
        assert_f64_close(out.detach(), out_t.detach(), "output")
    else:
        assert torch.equal(out.batch_sizes, out_t.batch_sizes)
        for a, b in ((out.sorted_indices, out_t.sorted_indices),
                     (out.unsorted_indices, out_t.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        assert_f64_close(out.data.detach(), out_t.data.detach(), "output")
    assert h_n.shape == h_n_t.shape
    assert_f64_close(h_n.detach(), h_n_t.detach(), "h_n")
    assert grads.keys() == grads_t.keys()
    for name in grads_t:
        assert grads[name] is not None, name
        assert_f64_close(grads[name], grads_t[name], f"grad {name}")


@pytest.mark.parametrize("index", range(0, len(GRID), 7), ids=[grid_id(c) for c in GRID[::7]])
def test_parity_float32(index):
    (out, h_n, grads), (out_t, h_n_t, grads_t), (out32, h_n32, grads32) = \
        run_case(GRID[index], index, torch.float32)
    data = (lambda o: o.detach() if isinstance(o, torch.Tensor) else o.data.detach())
    assert data(out).dtype == torch.float32
    assert_f32_close(data(out), data(out32), data(out_t), "output")
    assert_f32_close(h_n.detach(), h_n32.detach(), h_n_t.detach(), "h_n")
    for name in grads_t:
        assert_f32_close(grads[name], grads32[name], grads_t[name], f"grad {name}")


def test_is_a_torch_rnn_with_the_same_parameters_and_repr():
    kwargs = dict(num_layers=2, bidirectional=True, bias=False, batch_first=True, dropout=0.25)
    ours, theirs = build_pair(3, 4, **kwargs)
    assert isinstance(ours, torch.nn.RNN)
    assert repr(ours) == repr(theirs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    # loads both ways
    theirs2 = torch.nn.RNN(3, 4, dtype=torch.float64, **kwargs)
    theirs2.load_state_dict(ours.state_dict())
    for a, b in zip(theirs2.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    ours.flatten_parameters()


def test_initialisation_matches_torch():
    torch.manual_seed(3)
    theirs = torch.nn.RNN(4, 6, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ours = rnnkern.RNN(4, 6, num_layers=2, bidirectional=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_replacing_torch_nn_rnn(monkeypatch):
    monkeypatch.setattr(torch.nn, "RNN", rnnkern.RNN)
    model = torch.nn.Sequential()
    model.rnn = torch.nn.RNN(3, 5, num_layers=2)
    assert type(model.rnn) is rnnkern.RNN
    out, h_n = model.rnn(torch.randn(4, 2, 3))
    assert out.shape == (4, 2, 5) and h_n.shape == (2, 2, 5)


def test_deepcopy_save_and_load():
    ours, _ = build_pair(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = ours(x)[0]
    copied = copy.deepcopy(ours)
    assert type(copied) is rnnkern.RNN
    assert torch.equal(copied(x)[0], expected)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is rnnkern.RNN
    assert torch.equal(loaded(x)[0], expected)


@pytest.mark.parametrize("kwargs", [
    dict(dropout=0.5), dict(nonlinearity="gelu"), dict(num_layers=0), dict(dropout=1.5),
    dict(proj_size=2), dict(hidden_size=0),
])
def test_constructor_errors_and_warnings_match_torch(kwargs):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)

    def outcome(cls):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cls(**args)
                error = None
            except Exception as e:  # noqa: BLE001 - compared below
                error = (type(e), str(e))
        return error, [str(w.message) for w in caught]

    assert outcome(rnnkern.RNN) == outcome(torch.nn.RNN)


BAD_INPUTS = [
    ("1-D input", lambda: (torch.randn(3), None)),
    ("4-D input", lambda: (torch.randn(2, 2, 2, 3), None)),
    ("feature size", lambda: (torch.randn(5, 2, 4), None)),
    ("hx shape", lambda: (torch.randn(5, 2, 3), torch.randn(2, 3, 4))),
    ("hx 2-D for batched", lambda: (torch.randn(5, 2, 3), torch.randn(2, 4))),
    ("hx 3-D for unbatched", lambda: (torch.randn(5, 3), torch.randn(2, 1, 4))),
    ("input dtype", lambda: (torch.randn(5, 2, 3, dtype=torch.float64), None)),
    ("int input", lambda: (torch.randint(0, 3, (5, 2, 3)), None)),
    ("empty sequence", lambda: (torch.randn(0, 2, 3), None)),
]


@pytest.mark.parametrize("name,make", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_forward_errors_match_torch(name, make):
    ours, theirs = build_pair(3, 4, dtype=torch.float32, num_layers=2)
    x, hx = make()
    with pytest.raises(Exception) as expected:
        theirs(x, hx)
    with pytest.raises(type(expected.value)) as got:
        ours(x, hx)
    if name not in ("empty sequence",):
        assert str(got.value) == str(expected.value)


def test_hx_dtype_mismatch_is_a_runtime_error_like_torch():
    ours, theirs = build_pair(3, 4, dtype=torch.float32)
    x, hx = torch.randn(5, 2, 3), torch.randn(1, 2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        theirs(x, hx)
    with pytest.raises(RuntimeError, match=r"hx dtype \(torch.float64\) does not match input dtype"):
        ours(x, hx)


def test_empty_batch_like_torch():
    ours, theirs = build_pair(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    (o, h), (o_t, h_t) = ours(x), theirs(x)
    assert o.shape == o_t.shape and h.shape == h_t.shape


def test_only_what_requires_grad_is_computed():
    ours, theirs = build_pair(3, 5, num_layers=2)
    for m in (ours, theirs):
        m.weight_ih_l0.requires_grad_(False)
        m.bias_hh_l1.requires_grad_(False)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    for m in (ours, theirs):
        m(x)[0].square().sum().backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        if not q.requires_grad:
            assert p.grad is None, n
        else:
            assert_f64_close(p.grad, q.grad, n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(dtype):
    ours, theirs = build_pair(6, 8, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, 6)
    ref_out, ref_h = theirs(x)
    ours = ours.to(dtype)
    x_h = x.to(dtype).requires_grad_()
    out, h_n = ours(x_h)
    assert out.dtype == dtype and h_n.dtype == dtype
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(out.float(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(h_n.float(), ref_h, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert x_h.grad.dtype == dtype
    assert all(p.grad.dtype == dtype for p in ours.parameters())
    # torch's own half-precision run stays as close to float32 as ours does
    theirs_h = theirs.to(dtype)
    out_t, _ = theirs_h(x.to(dtype))
    err_ours = (out.float() - ref_out).abs().max()
    err_torch = (out_t.float() - ref_out).abs().max()
    assert err_ours <= 2 * err_torch + 1e-3


def test_autocast_returns_the_autocast_dtype_like_torch():
    ours, theirs = build_pair(3, 4, dtype=torch.float32, num_layers=2)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_t, h_t = theirs(x)
        out, h_n = ours(x)
    assert out.dtype == out_t.dtype == torch.bfloat16
    assert h_n.dtype == h_t.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), out_t.float(), rtol=0.05, atol=0.05)


def test_gradcheck_whole_module_two_layers_bidirectional_packed():
    module = rnnkern.RNN(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 3])
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    hx = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    data = packed.data.detach().requires_grad_()
    params = list(module.parameters())
    names = [n for n, _ in module.named_parameters()]

    def fn(data, hx, *weights):
        inp = torch.nn.utils.rnn.PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                                packed.unsorted_indices)
        out, h_n = torch.func.functional_call(module, dict(zip(names, weights)), (inp, hx))
        return out.data, h_n

    assert torch.autograd.gradcheck(fn, [data, hx, *params])


def test_gradcheck_whole_module_tensor_input():
    module = rnnkern.RNN(2, 3, num_layers=2, bidirectional=True, batch_first=True,
                         nonlinearity="relu", dtype=torch.float64)
    x = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in module.named_parameters()]

    def fn(x, *weights):
        return torch.func.functional_call(module, dict(zip(names, weights)), (x,))

    assert torch.autograd.gradcheck(fn, [x, *module.parameters()])


def test_torch_compile_fullgraph_model():
    torch._dynamo.reset()
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnnkern.RNN(4, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.head = torch.nn.Linear(12, 1)

        def forward(self, x):
            out, h_n = self.rnn(x)
            return self.head(out).sum() + h_n.square().sum()

    model = Model()
    twin = copy.deepcopy(model)
    x = torch.randn(3, 7, 4)
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(x)
    loss.backward()
    loss_e = twin(x)
    loss_e.backward()
    torch.testing.assert_close(loss, loss_e)
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def train_losses(cls, steps=5):
    torch.manual_seed(1234)
    rnn = cls(4, 8, num_layers=3, dropout=0.3, bidirectional=True)
    head = torch.nn.Linear(16, 1)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    losses = []
    data = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x = torch.randn(9, 5, 4, generator=data)
        target = torch.randn(5, 1, generator=data)
        out, _ = rnn(x)
        loss = torch.nn.functional.mse_loss(head(out[-1]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_seeded_training_with_dropout_gives_the_same_losses():
    ours, theirs = train_losses(rnnkern.RNN), train_losses(torch.nn.RNN)
    assert len(set(theirs)) == len(theirs)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
    ours, theirs = build_pair(3, 4, num_layers=3, dropout=0.5)
    ours.eval(), theirs.eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert_f64_close(ours(x)[0].detach(), theirs(x)[0].detach(), "eval output")
    ours.train(), theirs.train()
    torch.manual_seed(7)
    a = ours(x)[0]
    torch.manual_seed(7)
    b = theirs(x)[0]
    assert_f64_close(a.detach(), b.detach(), "training output with dropout")
    assert not torch.allclose(a, ours.eval()(x)[0])
