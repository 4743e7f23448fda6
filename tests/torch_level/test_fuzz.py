"""rnnkern.RNN against torch.nn.RNN on random configurations, sizes and input forms, and
rnnkern.RNN / LSTM / GRU against torch.nn's with extreme values (NaN/Inf masks).

HYPOTHESIS_PROFILE picks how many: "ci" (the default, 150 examples each, the same ones every
run) or "long" (5000 new ones each run).
"""

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkern

from conftest import assert_f32_close, assert_f64_close
from test_extreme_values import CELLS, EXTREMES, mask_mismatches

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FORMS = ["batched", "unbatched", "packed_sorted", "packed_unsorted"]
# Odd sizes, and the hidden sizes whose rows are 1 KiB apart (the kernel's padded copy).
HIDDEN = st.one_of(st.integers(1, 40), st.sampled_from([64, 128, 129, 256]))


@st.composite
def cases(draw):
    return dict(
        layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()), bias=draw(st.booleans()),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])), batch_first=draw(st.booleans()),
        form=draw(st.sampled_from(FORMS)), with_hx=draw(st.booleans()),
        # The layout of the input and hx: contiguous, every other element, or transposed.
        layout=draw(st.sampled_from(["contiguous", "strided", "transposed"])),
        T=draw(st.integers(1, 12)), B=draw(st.integers(1, 9)), I=draw(st.integers(1, 20)),
        H=draw(HIDDEN), dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        seed=draw(st.integers(0, 2**31 - 1)))


def view(t, layout, gen):
    """t's values in a tensor of the given layout (a view of a larger leaf, for strided)."""
    if layout == "strided":
        base = torch.randn(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, generator=gen)
        base[..., ::2] = t
        return base[..., ::2]
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


def inputs(c):
    """x (a tensor or PackedSequence) and hx in float64, of the case's form and layout."""
    gen = torch.Generator().manual_seed(c["seed"])
    T, B, I, H = c["T"], c["B"], c["I"], c["H"]
    D = 2 if c["bidirectional"] else 1
    hx = None
    if c["with_hx"]:
        shape = (c["layers"] * D, H) if c["form"] == "unbatched" else (c["layers"] * D, B, H)
        hx = view(torch.randn(shape, dtype=torch.float64, generator=gen), c["layout"], gen)
    if c["form"] == "unbatched":
        return view(torch.randn(T, I, dtype=torch.float64, generator=gen), c["layout"], gen), hx
    shape = (B, T, I) if c["batch_first"] else (T, B, I)
    x = view(torch.randn(shape, dtype=torch.float64, generator=gen), c["layout"], gen)
    if c["form"] == "batched":
        return x, hx
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[torch.randint(0, B, (1,), generator=gen)] = T
    if c["form"] == "packed_sorted":
        lengths = lengths.sort(descending=True).values
    packed = pack_padded_sequence(x, lengths, batch_first=c["batch_first"],
                                  enforce_sorted=c["form"] == "packed_sorted")
    data = view(packed.data, c["layout"], gen)
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices), hx


def cast(x, dtype):
    """x in dtype, with the same strides (a view of its base, cast)."""
    if x is None:
        return None
    if isinstance(x, PackedSequence):
        return PackedSequence(cast(x.data, dtype), x.batch_sizes, x.sorted_indices,
                              x.unsorted_indices)
    if x._base is None:
        return x.to(dtype)
    return x._base.to(dtype).as_strided(x.shape, x.stride(), x.storage_offset())


def run(module, x, hx, seed):
    """Output, h_n and the gradients of a loss that weighs every output differently."""
    leaves = []

    def leaf(t):  # a view of a fresh leaf with t's values and strides
        base = t._base if t._base is not None else t
        base = base.detach().clone().requires_grad_()
        leaves.append(base)
        return base.as_strided(t.shape, t.stride(), t.storage_offset())

    if isinstance(x, torch.Tensor):
        inp = leaf(x)
    else:
        inp = PackedSequence(leaf(x.data), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    h = None if hx is None else leaf(hx)
    out, h_n = module(inp, h)
    out_t = out if isinstance(out, torch.Tensor) else out.data
    gen = torch.Generator().manual_seed(seed)
    loss = (out_t * torch.randn(out_t.shape, generator=gen, dtype=out_t.dtype)).sum() + \
        (h_n * torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype)).sum()
    module.zero_grad(set_to_none=True)
    loss.backward()
    results = {"output": out_t.detach(), "h_n": h_n.detach()}
    results.update({f"grad input {i}": t.grad for i, t in enumerate(leaves)})
    results.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return results


@given(cases())
def test_rnn_matches_torch(c):
    kwargs = dict(num_layers=c["layers"], bidirectional=c["bidirectional"], bias=c["bias"],
                  batch_first=c["batch_first"], nonlinearity=c["nonlinearity"])
    torch.manual_seed(c["seed"])
    theirs = torch.nn.RNN(c["I"], c["H"], dtype=torch.float64, **kwargs)
    ours = rnnkern.RNN(c["I"], c["H"], dtype=torch.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    x, hx = inputs(c)
    exact = run(theirs, x, hx, c["seed"])
    if c["dtype"] == torch.float64:
        actual = run(ours, x, hx, c["seed"])
        assert actual.keys() == exact.keys()
        for name, e in exact.items():
            assert actual[name].shape == e.shape, name
            assert_f64_close(actual[name], e, name)
        return
    x32, hx32 = cast(x, torch.float32), cast(hx, torch.float32)
    actual = run(ours.float(), x32, hx32, c["seed"])
    torch32 = run(theirs.float(), x32, hx32, c["seed"])
    assert actual.keys() == exact.keys()
    for name, e in exact.items():
        assert actual[name].dtype == torch.float32, name
        assert_f32_close(actual[name], torch32[name], e, name)


# Where extreme values go: the input, the initial states and every parameter of layer 0 / 1.
EXTREME_PLACES = ["x", "h0", "c0", "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                  "weight_ih_l1", "bias_hh_l1", "weight_hh_l0_reverse"]


@st.composite
def extreme_cases(draw):
    layers, bidirectional = draw(st.integers(1, 2)), draw(st.booleans())
    places = [p for p in EXTREME_PLACES if (layers > 1 or not p.endswith("l1"))
              and (bidirectional or not p.endswith("reverse"))]
    return dict(
        cell=draw(st.sampled_from(list(CELLS))), dtype=draw(st.sampled_from([torch.float64,
                                                                           torch.float32])),
        T=draw(st.integers(1, 4)), B=draw(st.integers(1, 3)), I=draw(st.integers(1, 4)),
        H=draw(st.integers(1, 5)), layers=layers, bidirectional=bidirectional,
        places=draw(st.lists(st.tuples(st.sampled_from(places), st.integers(0, 99),
                                       st.sampled_from(EXTREMES)), min_size=1, max_size=3)),
        loss_on=draw(st.sampled_from([("y", "h_n", "c_n"), ("y",), ("h_n",), ("c_n",),
                                      ("h_n", "c_n")])),
        seed=draw(st.integers(0, 2**31 - 1)))


@given(extreme_cases())
def test_extreme_values_match_torch_masks(c):
    """Which outputs and gradients are NaN, +Inf, -Inf or finite, element by element, as in
    torch (its composite cells; see test_extreme_values.py)."""
    if c["cell"] != "lstm" and c["loss_on"] == ("c_n",):
        c["loss_on"] = ("y",)
    places = [p for p in c["places"] if p[0] != "c0" or c["cell"] == "lstm"] or \
        [("x", 0, c["places"][0][2])]
    bad = mask_mismatches(c["cell"], c["dtype"], c["T"], c["B"], c["I"], c["H"], places,
                          layers=c["layers"], bidirectional=c["bidirectional"],
                          loss_on=c["loss_on"], seed=c["seed"])
    assert not bad, f"{c}: masks differ from torch in {bad}"
