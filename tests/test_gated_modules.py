"""rnnkern.LSTM / rnnkern.GRU against torch.nn.LSTM / GRU (one state_dict: same outputs, states
and gradients), the functional ops (opcheck, gradcheck, compile) and the module surface."""

import copy
import io
import itertools
import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkern
from rnnkern import functional

from conftest import assert_f32_close, assert_f64_close

SIZES = [(1, 1, 1, 1), (5, 3, 4, 5), (7, 4, 3, 17), (4, 5, 6, 33), (3, 2, 5, 2)]
FORMS = ["batched", "unbatched", "packed_sorted", "packed_unsorted"]
CLASSES = {"lstm": (rnnkern.LSTM, torch.nn.LSTM), "gru": (rnnkern.GRU, torch.nn.GRU)}


def build_pair(cell, I, H, dtype=torch.float64, **kwargs):
    ours_cls, theirs_cls = CLASSES[cell]
    theirs = theirs_cls(I, H, dtype=dtype, **kwargs)
    ours = ours_cls(I, H, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def make_input(form, T, B, I, batch_first, dtype, seed):
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


def states(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def run(module, x, hx, seed):
    """Forward, a loss that weighs every output differently, backward."""
    if isinstance(x, torch.Tensor):
        x = x.detach().clone().requires_grad_()
        inp = x
    else:
        data = x.data.detach().clone().requires_grad_()
        inp = PackedSequence(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
        x = data
    h = None
    if hx is not None:
        h = [t.detach().clone().requires_grad_() for t in hx]
    out, hidden = module(inp, None if h is None else (tuple(h) if len(h) == 2 else h[0]))
    out_t = out.data if not isinstance(out, torch.Tensor) else out
    gen = torch.Generator().manual_seed(seed)
    loss = (out_t * torch.randn(out_t.shape, generator=gen, dtype=out_t.dtype)).sum()
    for s in states(hidden):
        loss = loss + (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
    module.zero_grad(set_to_none=True)
    loss.backward()
    grads = {"input": x.grad}
    for k, t in enumerate(h or []):
        grads[f"hx{k}"] = t.grad
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return out, states(hidden), grads


GRID = [("lstm", *c) for c in itertools.product([1, 2, 3], [False, True], [False, True],
                                                 [True, False], FORMS, [False, True], [0])]
GRID += [("gru", *c) for c in itertools.product([1, 2, 3], [False, True], [False, True],
                                                [True, False], FORMS, [False, True], [0])]
# proj_size: fewer combinations
GRID += [("lstm", *c) for c in itertools.product([1, 2], [False, True], [False, True],
                                                 [True], FORMS, [False, True], [1])]


def grid_id(case):
    cell, layers, bidir, bf, bias, form, with_hx, proj = case
    return (f"{cell}-L{layers}" + ("-bi" if bidir else "") + ("-bf" if bf else "") +
            ("" if bias else "-nobias") + f"-{form}" + ("-hx" if with_hx else "") +
            ("-proj" if proj else ""))


def run_case(case, index, dtype):
    cell, layers, bidir, batch_first, bias, form, with_hx, proj = case
    T, B, I, H = SIZES[index % len(SIZES)]
    if proj:
        H = max(H, 2)
    kwargs = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
    if proj:
        kwargs["proj_size"] = H - 1
    ours, theirs = build_pair(cell, I, H, **kwargs)
    x, batch = make_input(form, T, B, I, batch_first, torch.float64, seed=index)
    D = 2 if bidir else 1
    hx = None
    if with_hx:
        g = torch.Generator().manual_seed(index)
        lead = (layers * D,) if form == "unbatched" else (layers * D, batch)
        P = kwargs.get("proj_size", H)
        hx = [torch.randn(*lead, P, dtype=torch.float64, generator=g)]
        if cell == "lstm":
            hx.append(torch.randn(*lead, H, dtype=torch.float64, generator=g))
    exact = run(theirs, x, hx, index)
    if dtype == torch.float64:
        return run(ours, x, hx, index), exact, None
    ours32, theirs32 = ours.float(), theirs.float()
    x32 = x.float() if isinstance(x, torch.Tensor) else PackedSequence(
        x.data.float(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    hx32 = None if hx is None else [t.float() for t in hx]
    return run(ours32, x32, hx32, index), exact, run(theirs32, x32, hx32, index)


@pytest.mark.parametrize("index", range(len(GRID)), ids=[grid_id(c) for c in GRID])
def test_parity_float64(index):
    (out, hidden, grads), (out_t, hidden_t, grads_t), _ = run_case(GRID[index], index,
                                                                 torch.float64)
    if isinstance(out_t, torch.Tensor):
        assert isinstance(out, torch.Tensor) and out.shape == out_t.shape
        assert_f64_close(out.detach(), out_t.detach(), "output")
    else:
        assert torch.equal(out.batch_sizes, out_t.batch_sizes)
        for a, b in ((out.sorted_indices, out_t.sorted_indices),
                     (out.unsorted_indices, out_t.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        assert_f64_close(out.data.detach(), out_t.data.detach(), "output")
    assert len(hidden) == len(hidden_t)
    for a, b in zip(hidden, hidden_t):
        assert a.shape == b.shape
        assert_f64_close(a.detach(), b.detach(), "hidden")
    assert grads.keys() == grads_t.keys()
    for name in grads_t:
        assert grads[name] is not None, name
        assert_f64_close(grads[name], grads_t[name], f"grad {name}")


@pytest.mark.parametrize("index", range(0, len(GRID), 7), ids=[grid_id(c) for c in GRID[::7]])
def test_parity_float32(index):
    (out, hidden, grads), (out_t, hidden_t, grads_t), (out32, hidden32, grads32) = \
        run_case(GRID[index], index, torch.float32)
    data = (lambda o: o.detach() if isinstance(o, torch.Tensor) else o.data.detach())
    assert data(out).dtype == torch.float32
    assert_f32_close(data(out), data(out32), data(out_t), "output")
    for a, b, e in zip(hidden, hidden32, hidden_t):
        assert_f32_close(a.detach(), b.detach(), e.detach(), "hidden")
    for name in grads_t:
        assert_f32_close(grads[name], grads32[name], grads_t[name], f"grad {name}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_is_a_torch_module_with_the_same_parameters_and_repr(cell):
    kwargs = dict(num_layers=2, bidirectional=True, bias=False, batch_first=True, dropout=0.25)
    ours, theirs = build_pair(cell, 3, 4, **kwargs)
    assert isinstance(ours, CLASSES[cell][1])
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs2 = CLASSES[cell][1](3, 4, dtype=torch.float64, **kwargs)
    theirs2.load_state_dict(ours.state_dict())
    for a, b in zip(theirs2.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    ours.flatten_parameters()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_initialisation_matches_torch(cell):
    ours_cls, theirs_cls = CLASSES[cell]
    torch.manual_seed(3)
    theirs = theirs_cls(4, 6, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ours = ours_cls(4, 6, num_layers=2, bidirectional=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_convert_and_revert_swap_every_recurrent_class():
    model = torch.nn.ModuleDict(dict(rnn=torch.nn.RNN(3, 4), lstm=torch.nn.LSTM(3, 4),
                                     gru=torch.nn.GRU(3, 4), sub=rnnkern.LSTM(3, 4)))
    weights = [p for p in model.parameters()]
    rnnkern.convert(model)
    assert [type(model[k]) for k in ("rnn", "lstm", "gru")] == \
        [rnnkern.RNN, rnnkern.LSTM, rnnkern.GRU]
    assert all(a is b for a, b in zip(model.parameters(), weights))
    rnnkern.revert(model)
    assert [type(model[k]) for k in ("rnn", "lstm", "gru", "sub")] == \
        [torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTM]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_deepcopy_save_and_load(cell):
    ours, _ = build_pair(cell, 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = ours(x)[0]
    copied = copy.deepcopy(ours)
    assert type(copied) is type(ours)
    assert torch.equal(copied(x)[0], expected)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert type(loaded) is type(ours)
    assert torch.equal(loaded(x)[0], expected)


@pytest.mark.parametrize("cell,kwargs", [
    (c, k) for c in ("lstm", "gru") for k in (
        dict(dropout=0.5), dict(num_layers=0), dict(dropout=1.5), dict(hidden_size=0),
        dict(proj_size=2), dict(proj_size=4), dict(proj_size=-1))])
def test_constructor_errors_and_warnings_match_torch(cell, kwargs):
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

    assert outcome(CLASSES[cell][0]) == outcome(CLASSES[cell][1])


BAD_INPUTS = [
    ("1-D input", lambda c: (torch.randn(3), None)),
    ("4-D input", lambda c: (torch.randn(2, 2, 2, 3), None)),
    ("feature size", lambda c: (torch.randn(5, 2, 4), None)),
    ("hx shape", lambda c: (torch.randn(5, 2, 3), (torch.randn(2, 3, 4),) * (2 if c == "lstm"
                                                                           else 1))),
    ("hx 2-D for batched", lambda c: (torch.randn(5, 2, 3), (torch.randn(2, 4),) * (
        2 if c == "lstm" else 1))),
    ("hx 3-D for unbatched", lambda c: (torch.randn(5, 3), (torch.randn(2, 1, 4),) * (
        2 if c == "lstm" else 1))),
    ("input dtype", lambda c: (torch.randn(5, 2, 3, dtype=torch.float64), None)),
    ("int input", lambda c: (torch.randint(0, 3, (5, 2, 3)), None)),
    ("empty sequence", lambda c: (torch.randn(0, 2, 3), None)),
]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("name,make", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_forward_errors_match_torch(cell, name, make):
    ours, theirs = build_pair(cell, 3, 4, dtype=torch.float32, num_layers=2)
    x, hx = make(cell)
    if hx is not None and cell == "gru":
        hx = hx[0]
    with pytest.raises(Exception) as expected:
        theirs(x, hx)
    with pytest.raises(type(expected.value)) as got:
        ours(x, hx)
    if name not in ("empty sequence",):
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_only_what_requires_grad_is_computed(cell):
    ours, theirs = build_pair(cell, 3, 5, num_layers=2)
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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(cell, dtype):
    ours, theirs = build_pair(cell, 6, 8, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(7, 3, 6)
    ref_out, ref_h = theirs(x)
    ours = ours.to(dtype)
    x_h = x.to(dtype).requires_grad_()
    out, hidden = ours(x_h)
    assert out.dtype == dtype and all(h.dtype == dtype for h in states(hidden))
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(out.float(), ref_out, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert x_h.grad.dtype == dtype
    assert all(p.grad.dtype == dtype for p in ours.parameters())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_autocast_returns_the_autocast_dtype_like_torch(cell):
    ours, theirs = build_pair(cell, 3, 4, dtype=torch.float32, num_layers=2)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_t, h_t = theirs(x)
        out, h = ours(x)
    assert out.dtype == out_t.dtype
    assert [s.dtype for s in states(h)] == [s.dtype for s in states(h_t)]
    torch.testing.assert_close(out.float(), out_t.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradcheck_whole_module_packed(cell):
    module = CLASSES[cell][0](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 3])
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    data = packed.data.detach().requires_grad_()
    hx = [torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
          for _ in range(2 if cell == "lstm" else 1)]
    names = [n for n, _ in module.named_parameters()]

    def fn(data, *rest):
        h, weights = rest[:len(hx)], rest[len(hx):]
        inp = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)
        out, hidden = torch.func.functional_call(
            module, dict(zip(names, weights)), (inp, tuple(h) if cell == "lstm" else h[0]))
        return (out.data, *states(hidden))

    assert torch.autograd.gradcheck(fn, [data, *hx, *module.parameters()])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_compile_fullgraph_model(cell):
    torch._dynamo.reset()
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = CLASSES[cell][0](4, 6, num_layers=2, bidirectional=True,
                                        batch_first=True)
            self.head = torch.nn.Linear(12, 1)

        def forward(self, x):
            out, hidden = self.rnn(x)
            return self.head(out).sum() + sum(h.square().sum() for h in states(hidden))

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
    opt = torch.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=0.1)
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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_seeded_training_with_dropout_gives_the_same_losses(cell):
    ours, theirs = train_losses(CLASSES[cell][0]), train_losses(CLASSES[cell][1])
    assert len(set(theirs)) == len(theirs)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)


# The functional level: the ops themselves.

def gated_args(cell, packed, reverse, bias, seed=0, sizes=(4, 3, 5, 6), proj=0):
    """The arguments of rnnkern::layer_forward (w_hr (proj, H) with proj > 0)."""
    g = torch.Generator().manual_seed(seed)
    T, B, I, H = sizes
    G = 4 if cell == "lstm" else 3
    P = proj or H
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)  # noqa: E731
    bs = torch.tensor([B] + [max(B - t, 1) for t in range(1, T)]) if packed else None
    x = r(int(bs.sum()), I) if packed else r(T, B, I)
    c0 = r(B, H) if cell == "lstm" else None
    b = (r(G * H) * 0.3, r(G * H) * 0.3) if bias else (None, None)
    w_hr = r(P, H) * 0.3 if proj else None
    return (cell, x, r(B, P), c0, r(G * H, I) * 0.3, r(G * H, P) * 0.3, *b, w_hr, None, bs,
            reverse)


OPCHECK = [(c, p, r, b, 0) for c in ("lstm", "gru") for p, r, b in
           ((False, False, True), (True, True, False), (True, False, True))]
OPCHECK += [("lstm", False, True, True, 4), ("lstm", True, False, False, 2)]


@pytest.mark.parametrize("cell,packed,reverse,bias,proj", OPCHECK)
def test_opcheck(cell, packed, reverse, bias, proj):
    fwd = gated_args(cell, packed, reverse, bias, proj=proj)
    torch.library.opcheck(torch.ops.rnnkern.layer_forward.default, fwd)
    y, h_n, c_n, saved = torch.ops.rnnkern.layer_forward(*fwd)
    _, x, h0, c0, w_ih, w_hh, _, _, w_hr, _, bs, _ = fwd
    gen = torch.Generator().manual_seed(9)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=gen)
    ghn = torch.randn(h_n.shape, dtype=y.dtype, generator=gen)
    gcn = torch.randn(c_n.shape, dtype=y.dtype, generator=gen) if cell == "lstm" else None
    # (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    mask = ([True, True, cell == "lstm", True, True, True, True, bool(proj)] if bias
            else [False, True, cell == "lstm", True, False, True, False, False])
    bwd = (cell, x, h0, c0, w_ih, w_hh, w_hr, y, saved, gy, ghn, gcn, None, bs, reverse, mask)
    torch.library.opcheck(torch.ops.rnnkern.layer_backward.default, bwd)


@pytest.mark.parametrize("cell,packed,reverse,bias,proj", OPCHECK)
def test_gradcheck_through_the_custom_op(cell, packed, reverse, bias, proj):
    args = list(gated_args(cell, packed, reverse, bias, seed=1, proj=proj))
    index = [i for i in range(1, 9) if args[i] is not None]
    for i in index:
        args[i] = args[i].requires_grad_()

    def fn(*tensors):
        a = list(args)
        for i, t in zip(index, tensors):
            a[i] = t
        y, h_n, c_n, _ = torch.ops.rnnkern.layer_forward(*a)
        return (y, h_n, c_n) if cell == "lstm" else (y, h_n)

    assert torch.autograd.gradcheck(fn, [args[i] for i in index])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_functional_gradcheck_and_second_derivatives(cell):
    def check(sizes, second):
        _, x, h0, c0, w_ih, w_hh, b_ih, b_hh, _, _, bs, _ = gated_args(cell, True, True, True,
                                                                    seed=2, sizes=sizes)
        inputs = [t.requires_grad_() for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
                  if t is not None]

        def fn(x, h0, *rest):
            if cell == "lstm":
                c0, *w = rest
                y, (h, c) = functional.lstm(x, (h0, c0), *w, batch_sizes=bs, reverse=True)
                return y, h, c
            return functional.gru(x, h0, *rest, batch_sizes=bs, reverse=True)

        assert torch.autograd.gradcheck(fn, inputs)
        if second:  # create_graph=True: the backward runs on the reference loop
            assert torch.autograd.gradgradcheck(fn, inputs)

    check((4, 3, 5, 6), False)
    check((2, 2, 2, 2), True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_functional_compile_fullgraph(cell):
    torch._dynamo.reset()
    _, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *_ = gated_args(cell, False, False, True, seed=3)

    def loss_fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        if cell == "lstm":
            y, (h, c) = functional.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
            return y.sin().sum() + h.square().sum() + c.square().sum()
        y, h = functional.gru(x, h0, w_ih, w_hh, b_ih, b_hh)
        return y.sin().sum() + h.square().sum()

    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    eager = [None if t is None else t.clone().requires_grad_() for t in args]
    comp = [None if t is None else t.clone().requires_grad_() for t in args]
    loss_e = loss_fn(*eager)
    loss_e.backward()
    loss_c = torch.compile(loss_fn, fullgraph=True)(*comp)
    loss_c.backward()
    assert_f64_close(loss_c.detach(), loss_e.detach(), "loss")
    for a, b in zip(comp, eager):
        if a is not None:
            assert_f64_close(a.grad, b.grad, "grad")


def test_functional_errors_name_the_argument():
    _, x, h0, c0, w_ih, w_hh, b_ih, b_hh, *_ = gated_args("lstm", False, False, True)
    with pytest.raises(TypeError, match="cx must have dtype float64"):
        functional.lstm(x, (h0, c0.float()), w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match=r"w_hh must have shape \(24, 6\), got \(24, 5\)"):
        functional.lstm(x, (h0, c0), w_ih, w_hh[:, :5], b_ih, b_hh)
    with pytest.raises(TypeError, match="hx must be a torch.Tensor, got list"):
        functional.gru(x, [1.0], w_ih[:18], w_hh[:18])
