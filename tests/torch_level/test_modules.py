"""rnnkern's drop-in modules (rnnkern.RNN, LSTM and GRU) against torch.nn.RNN, LSTM and GRU: one
state_dict, the same outputs, final states and every gradient; the module surface (parameters,
repr, initialisation, copies, errors, half precision, autocast, compile, dropout) and
rnnkern.convert / revert.

A test that takes ``cell`` runs for each drop-in cell of the registry (the cell fixture of
conftest.py). The Elman RNN's relu and the LSTM's proj_size, which the other cells do not have,
have tests of their own. (The functional ops of every cell: test_functional.py.)"""

import copy
import io
import itertools
import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkern
from rnnkern import cells

from conftest import assert_f32_close, assert_f64_close, make_input

FORMS = ["batched", "unbatched", "packed_sorted", "packed_unsorted"]
# (T, B, I, H), by case number; the Elman cases' last size has H = 1, the others' H = 2 (a
# proj_size of H - 1 >= 1).
SIZES = [(1, 1, 1, 1), (5, 3, 4, 5), (7, 4, 3, 17), (4, 5, 6, 33), (3, 2, 5, 2)]
ELMAN_SIZES = SIZES[:-1] + [(3, 2, 5, 1)]


def classes(cell):
    """(rnnkern's module class, the torch class it replaces)."""
    spec = cells.get(cell)
    return spec.module_type(), spec.torch_type()


def build_pair(cell, I, H, dtype=torch.float64, **kwargs):
    ours_cls, theirs_cls = classes(cell)
    theirs = theirs_cls(I, H, dtype=dtype, **kwargs)
    ours = ours_cls(I, H, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def states(hidden):
    """The final states as a list: [h_n] or the LSTM's [h_n, c_n]."""
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


def as_hx(cell, tensors):
    """The initial states as the module takes them: a tensor, or a tuple for several states."""
    tensors = tuple(tensors)
    return tensors if len(cells.get(cell).states) > 1 else tensors[0]


def run(cell, module, x, hx, seed):
    """Forward, a loss that weighs every output differently, backward; returns the output, the
    final states (a list) and every gradient."""
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
    out, hidden = module(inp, None if h is None else as_hx(cell, h))
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


# The parity grids: (num_layers, bidirectional, batch_first, bias, form, with hx), for every
# drop-in cell, the Elman RNN's relu and the LSTM's proj_size (fewer combinations).
OPTIONS = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False], FORMS,
                                 [False, True]))
PROJ_OPTIONS = list(itertools.product([1, 2], [False, True], [False, True], [True], FORMS,
                                      [False, True]))
# A case's number gives its size and seeds. The numbering the cases have always had: the Elman
# cases with the nonlinearity inside the product, the others as lstm, gru, then lstm with
# proj_size; so each case keeps its data.
_ELMAN_NUMBERS = {(l, bi, bf, b, nl, f, hx): n for n, (l, bi, bf, b, nl, f, hx) in enumerate(
    itertools.product([1, 2, 3], [False, True], [False, True], [True, False], ["tanh", "relu"],
                      FORMS, [False, True]))}
_GATED_NUMBERS = {case: n for n, case in enumerate(
    [("lstm", o, "") for o in OPTIONS] + [("gru", o, "") for o in OPTIONS] +
    [("lstm", o, "proj") for o in PROJ_OPTIONS])}


def case_number(cell, options, variant=""):
    """``variant``: "" (the defaults), "relu" (the nonlinearity) or "proj" (proj_size)."""
    if cell == "rnn":
        layers, bidir, bf, bias, form, hx = options
        return _ELMAN_NUMBERS[(layers, bidir, bf, bias, variant or "tanh", form, hx)]
    if (cell, options, variant) in _GATED_NUMBERS:
        return _GATED_NUMBERS[(cell, options, variant)]
    return (PROJ_OPTIONS if variant == "proj" else OPTIONS).index(options)


def sampled(options, variants):
    """float32 runs on every option whose case is numbered a multiple of 7 for one of the
    (cell, variant) pairs, and runs it for every cell."""
    return [o for o in options if any(case_number(c, o, v) % 7 == 0 for c, v in variants)]


F32_OPTIONS = sampled(OPTIONS, [("rnn", ""), ("lstm", ""), ("gru", "")])
F32_RELU_OPTIONS = sampled(OPTIONS, [("rnn", "relu")])
F32_PROJ_OPTIONS = sampled(PROJ_OPTIONS, [("lstm", "proj")])


def options_id(options):
    layers, bidir, bf, bias, form, with_hx = options
    return (f"L{layers}" + ("-bi" if bidir else "") + ("-bf" if bf else "") +
            ("" if bias else "-nobias") + f"-{form}" + ("-hx" if with_hx else ""))


def run_case(cell, options, variant, dtype):
    layers, bidir, batch_first, bias, form, with_hx = options
    index = case_number(cell, options, variant)
    T, B, I, H = (ELMAN_SIZES if cell == "rnn" else SIZES)[index % len(SIZES)]
    kwargs = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias)
    if cells.get(cell).nonlinearity:
        kwargs["nonlinearity"] = variant or "tanh"
    if variant == "proj":
        H = max(H, 2)
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
        for _ in cells.get(cell).states[1:]:  # the LSTM's c
            hx.append(torch.randn(*lead, H, dtype=torch.float64, generator=g))
    exact = run(cell, theirs, x, hx, index)
    if dtype == torch.float64:
        return run(cell, ours, x, hx, index), exact, None
    ours32, theirs32 = ours.float(), theirs.float()
    x32 = x.float() if isinstance(x, torch.Tensor) else PackedSequence(
        x.data.float(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    hx32 = None if hx is None else [t.float() for t in hx]
    return run(cell, ours32, x32, hx32, index), exact, run(cell, theirs32, x32, hx32, index)


def check_float64(cell, options, variant):
    (out, hidden, grads), (out_t, hidden_t, grads_t), _ = run_case(cell, options, variant,
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
    for name, a, b in zip(cells.get(cell).final_keys, hidden, hidden_t):
        assert a.shape == b.shape
        assert_f64_close(a.detach(), b.detach(), name)
    assert grads.keys() == grads_t.keys()
    for name in grads_t:
        assert grads[name] is not None, name
        assert_f64_close(grads[name], grads_t[name], f"grad {name}")


def check_float32(cell, options, variant):
    (out, hidden, grads), (out_t, hidden_t, grads_t), (out32, hidden32, grads32) = \
        run_case(cell, options, variant, torch.float32)
    data = (lambda o: o.detach() if isinstance(o, torch.Tensor) else o.data.detach())
    assert data(out).dtype == torch.float32
    assert_f32_close(data(out), data(out32), data(out_t), "output")
    for name, a, b, e in zip(cells.get(cell).final_keys, hidden, hidden32, hidden_t):
        assert_f32_close(a.detach(), b.detach(), e.detach(), name)
    for name in grads_t:
        assert_f32_close(grads[name], grads32[name], grads_t[name], f"grad {name}")


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("options", OPTIONS, ids=options_id)
def test_parity_float64(cell, options):
    check_float64(cell, options, "")


@pytest.mark.cells(drop_in=True, nonlinearity=True)
@pytest.mark.parametrize("options", OPTIONS, ids=options_id)
def test_parity_float64_relu(cell, options):
    check_float64(cell, options, "relu")


@pytest.mark.cells("lstm")
@pytest.mark.parametrize("options", PROJ_OPTIONS, ids=options_id)
def test_parity_float64_proj_size(cell, options):
    check_float64(cell, options, "proj")


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("options", F32_OPTIONS, ids=options_id)
def test_parity_float32(cell, options):
    check_float32(cell, options, "")


@pytest.mark.cells(drop_in=True, nonlinearity=True)
@pytest.mark.parametrize("options", F32_RELU_OPTIONS, ids=options_id)
def test_parity_float32_relu(cell, options):
    check_float32(cell, options, "relu")


@pytest.mark.cells("lstm")
@pytest.mark.parametrize("options", F32_PROJ_OPTIONS, ids=options_id)
def test_parity_float32_proj_size(cell, options):
    check_float32(cell, options, "proj")


@pytest.mark.cells(drop_in=True)
def test_is_a_torch_module_with_the_same_parameters_and_repr(cell):
    kwargs = dict(num_layers=2, bidirectional=True, bias=False, batch_first=True, dropout=0.25)
    ours, theirs = build_pair(cell, 3, 4, **kwargs)
    assert isinstance(ours, classes(cell)[1])
    assert repr(ours) == "rnnkern." + repr(theirs)  # print(model) shows what runs on rnnkern
    assert [(n, p.shape) for n, p in ours.named_parameters()] == \
        [(n, p.shape) for n, p in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    # loads both ways
    theirs2 = classes(cell)[1](3, 4, dtype=torch.float64, **kwargs)
    theirs2.load_state_dict(ours.state_dict())
    for a, b in zip(theirs2.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    ours.flatten_parameters()


@pytest.mark.cells(drop_in=True)
def test_initialisation_matches_torch(cell):
    ours_cls, theirs_cls = classes(cell)
    torch.manual_seed(3)
    theirs = theirs_cls(4, 6, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ours = ours_cls(4, 6, num_layers=2, bidirectional=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


@pytest.mark.cells(drop_in=True)
def test_replacing_the_torch_class(cell, monkeypatch):
    spec = cells.get(cell)
    monkeypatch.setattr(torch.nn, spec.title, spec.module_type())
    model = torch.nn.Sequential()
    model.rnn = getattr(torch.nn, spec.title)(3, 5, num_layers=2)
    assert type(model.rnn) is spec.module_type()
    out, hidden = model.rnn(torch.randn(4, 2, 3))
    assert out.shape == (4, 2, 5)
    assert [h.shape for h in states(hidden)] == [(2, 2, 5)] * len(spec.states)


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


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("weights_only", [False, True])
def test_deepcopy_save_and_load(cell, weights_only):
    ours, _ = build_pair(cell, 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = ours(x)[0]
    copied = copy.deepcopy(ours)
    assert type(copied) is type(ours)
    assert torch.equal(copied(x)[0], expected)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=weights_only)
    assert type(loaded) is type(ours)
    assert torch.equal(loaded(x)[0], expected)


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("kwargs", [
    dict(dropout=0.5), dict(nonlinearity="gelu"), dict(num_layers=0), dict(dropout=1.5),
    dict(hidden_size=0), dict(proj_size=2), dict(proj_size=4), dict(proj_size=-1),
], ids=str)
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

    ours_cls, theirs_cls = classes(cell)
    assert outcome(ours_cls) == outcome(theirs_cls)


# (name, make(number of states) -> (input, hx as a tuple of states or None))
BAD_INPUTS = [
    ("1-D input", lambda n: (torch.randn(3), None)),
    ("4-D input", lambda n: (torch.randn(2, 2, 2, 3), None)),
    ("feature size", lambda n: (torch.randn(5, 2, 4), None)),
    ("hx shape", lambda n: (torch.randn(5, 2, 3), (torch.randn(2, 3, 4),) * n)),
    ("hx 2-D for batched", lambda n: (torch.randn(5, 2, 3), (torch.randn(2, 4),) * n)),
    ("hx 3-D for unbatched", lambda n: (torch.randn(5, 3), (torch.randn(2, 1, 4),) * n)),
    ("input dtype", lambda n: (torch.randn(5, 2, 3, dtype=torch.float64), None)),
    ("int input", lambda n: (torch.randint(0, 3, (5, 2, 3)), None)),
    ("empty sequence", lambda n: (torch.randn(0, 2, 3), None)),
]


@pytest.mark.cells(drop_in=True)
@pytest.mark.parametrize("name,make", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_forward_errors_match_torch(cell, name, make):
    ours, theirs = build_pair(cell, 3, 4, dtype=torch.float32, num_layers=2)
    x, hx = make(len(cells.get(cell).states))
    if hx is not None:
        hx = as_hx(cell, hx)
    with pytest.raises(Exception) as expected:
        theirs(x, hx)
    with pytest.raises(type(expected.value)) as got:
        ours(x, hx)
    if name not in ("empty sequence",):
        assert str(got.value) == str(expected.value)


@pytest.mark.cells(drop_in=True)
def test_hx_dtype_mismatch_is_a_runtime_error_like_torch(cell):
    ours, theirs = build_pair(cell, 3, 4, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    hx = as_hx(cell, [torch.randn(1, 2, 4, dtype=torch.float64)] * len(cells.get(cell).states))
    with pytest.raises(RuntimeError):
        theirs(x, hx)
    with pytest.raises(RuntimeError, match=r"hx dtype \(torch.float64\) does not match input dtype"):
        ours(x, hx)


@pytest.mark.cells(drop_in=True)
def test_empty_batch_like_torch(cell):
    ours, theirs = build_pair(cell, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    (o, h), (o_t, h_t) = ours(x), theirs(x)
    assert o.shape == o_t.shape
    assert [s.shape for s in states(h)] == [s.shape for s in states(h_t)]


@pytest.mark.cells(drop_in=True)
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


@pytest.mark.cells(drop_in=True)
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
    for h, r in zip(states(hidden), states(ref_h)):
        torch.testing.assert_close(h.float(), r, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert x_h.grad.dtype == dtype
    assert all(p.grad.dtype == dtype for p in ours.parameters())
    # torch's own half-precision run stays as close to float32 as ours does
    theirs_h = theirs.to(dtype)
    out_t, _ = theirs_h(x.to(dtype))
    err_ours = (out.float() - ref_out).abs().max()
    err_torch = (out_t.float() - ref_out).abs().max()
    assert err_ours <= 2 * err_torch + 1e-3


@pytest.mark.cells(drop_in=True)
def test_autocast_returns_the_autocast_dtype_like_torch(cell):
    ours, theirs = build_pair(cell, 3, 4, dtype=torch.float32, num_layers=2)
    x = torch.randn(5, 2, 3)
    # torch's GRU returns float32 there (the registry's autocast_on_cpu)
    expected = torch.bfloat16 if cells.get(cell).autocast_on_cpu else torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            out_t, h_t = theirs(x)
        except RuntimeError as error:  # some CPUs' oneDNN has no bfloat16 LSTM primitive
            if "primitive descriptor" not in str(error):
                raise
            out_t = None
        out, h = ours(x)
    if out_t is None:  # torch's float32 result, in the dtype torch returns where it runs
        out_t, h_t = theirs(x)
        out_t = out_t.to(expected)
        h_t = tuple(s.to(expected) for s in states(h_t))
    assert out.dtype == out_t.dtype == expected
    assert [s.dtype for s in states(h)] == [s.dtype for s in states(h_t)] == \
        [expected] * len(states(h_t))
    torch.testing.assert_close(out.float(), out_t.float(), rtol=0.05, atol=0.05)


@pytest.mark.cells(drop_in=True)
def test_gradcheck_whole_module_two_layers_bidirectional_packed(cell):
    module = classes(cell)[0](3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 3])
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    data = packed.data.detach().requires_grad_()
    hx = [torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
          for _ in cells.get(cell).states]
    names = [n for n, _ in module.named_parameters()]

    def fn(data, *rest):
        h, weights = rest[:len(hx)], rest[len(hx):]
        inp = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                             packed.unsorted_indices)
        out, hidden = torch.func.functional_call(module, dict(zip(names, weights)),
                                                 (inp, as_hx(cell, h)))
        return (out.data, *states(hidden))

    assert torch.autograd.gradcheck(fn, [data, *hx, *module.parameters()])


@pytest.mark.cells(drop_in=True)
def test_gradcheck_whole_module_tensor_input(cell):
    kwargs = dict(nonlinearity="relu") if cells.get(cell).nonlinearity else {}
    module = classes(cell)[0](2, 3, num_layers=2, bidirectional=True, batch_first=True,
                              dtype=torch.float64, **kwargs)
    x = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in module.named_parameters()]

    def fn(x, *weights):
        out, hidden = torch.func.functional_call(module, dict(zip(names, weights)), (x,))
        return (out, *states(hidden))

    assert torch.autograd.gradcheck(fn, [x, *module.parameters()])


@pytest.mark.cells(drop_in=True)
def test_torch_compile_fullgraph_model(cell):
    torch._dynamo.reset()
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = classes(cell)[0](4, 6, num_layers=2, bidirectional=True,
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


@pytest.mark.cells(drop_in=True)
def test_seeded_training_with_dropout_gives_the_same_losses(cell):
    ours_cls, theirs_cls = classes(cell)
    ours, theirs = train_losses(ours_cls), train_losses(theirs_cls)
    assert len(set(theirs)) == len(theirs)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.cells(drop_in=True)
def test_dropout_only_in_training(cell):
    ours, theirs = build_pair(cell, 3, 4, num_layers=3, dropout=0.5)
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
