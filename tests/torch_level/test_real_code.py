"""rnnkern.RNN in real code: save and load, converting a model, autograd features beyond
backward, gradient flow on partly frozen models. Answers are torch.nn.RNN's, in float64."""

import logging
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import rnnkern
from rnnkern.diagnostics import jacobian_norms, record_gradient_flow

import conftest

F64 = torch.float64


def assert_f64_close(actual, expected, name):
    conftest.assert_f64_close(actual.detach(), expected.detach(), name)


def pair(I=3, H=5, **kwargs):
    torch.manual_seed(0)
    theirs = torch.nn.RNN(I, H, dtype=F64, **kwargs)
    ours = rnnkern.RNN(I, H, dtype=F64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


# Save and load -----------------------------------------------------------------------------

MODEL_SOURCE = """
import torch

class LanguageModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Embedding(11, 4)
        self.rnn = torch.nn.RNN(4, 6, 2, dropout=0.2)
        self.decoder = torch.nn.Linear(6, 11)

    def forward(self, tokens, hidden=None):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output), hidden
"""


def run_python(tmp_path, code):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("how", ["class swap", "convert"])
@pytest.mark.parametrize("import_order", ["rnnkern first", "torch first"])
def test_saved_model_loads_with_weights_only(tmp_path, how, import_order):
    (tmp_path / "lm.py").write_text(MODEL_SOURCE)
    swap = "torch.nn.RNN = rnnkern.RNN" if how == "class swap" else ""
    run_python(tmp_path, f"""
        import torch, rnnkern
        {swap}
        import lm
        torch.manual_seed(0)
        model = lm.LanguageModel()
        {"rnnkern.convert(model)" if how == "convert" else ""}
        assert type(model.rnn) is rnnkern.RNN
        tokens = torch.randint(0, 11, (7, 3))
        logits, _ = model(tokens)
        logits.sum().backward()            # trains
        model.eval()
        torch.save(model, "model.pt")
        torch.save(tokens, "tokens.pt")
        torch.save(model(tokens)[0].detach(), "expected.pt")
        """)
    imports = "import rnnkern, torch" if import_order == "rnnkern first" else \
        "import torch, rnnkern"
    out = run_python(tmp_path, f"""
        {imports}
        import lm
        # the pattern of a widely copied training script, and the default torch.load
        with torch.serialization.safe_globals([lm.LanguageModel, torch.nn.Embedding,
                                               torch.nn.Linear, torch.nn.Dropout]):
            model = torch.load("model.pt")
        tokens = torch.load("tokens.pt")
        expected = torch.load("expected.pt")
        assert type(model.rnn) is rnnkern.RNN, type(model.rnn)
        torch.testing.assert_close(model(tokens)[0], expected, rtol=0, atol=0)
        print("ok")
        """)
    assert out.strip().endswith("ok")


def test_rnn_alone_round_trips_in_process(tmp_path):
    ours, _ = pair(num_layers=2, bidirectional=True)
    torch.save(ours, tmp_path / "rnn.pt")
    loaded = torch.load(tmp_path / "rnn.pt")  # weights_only=True by default
    assert type(loaded) is rnnkern.RNN
    x = torch.randn(4, 2, 3, dtype=F64)
    assert_f64_close(loaded(x)[0], ours(x)[0], "output after load")


# Converting an existing model ---------------------------------------------------------------

class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.RNN(3, 5, num_layers=2, dtype=F64)
        self.heads = torch.nn.ModuleList([torch.nn.RNN(5, 4, dtype=F64, bidirectional=True),
                                          torch.nn.Linear(8, 2, dtype=F64)])

    def forward(self, x):
        h, _ = self.rnn(x)
        h, _ = self.heads[0](h)
        return self.heads[1](h)


def test_convert_shares_parameters_and_matches_torch():
    torch.manual_seed(1)
    model = Tagger()
    reference = Tagger()
    reference.load_state_dict(model.state_dict())
    params_before = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # made before the call
    assert rnnkern.convert(model) is model
    assert type(model.rnn) is rnnkern.RNN and type(model.heads[0]) is rnnkern.RNN
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    x = torch.randn(6, 2, 3, dtype=F64)
    for _ in range(3):
        for m, opt in ((model, optimizer), (reference, reference_optimizer)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert_f64_close(a, b, f"{name} after three optimizer steps")
    assert rnnkern.revert(model) is model
    assert type(model.rnn) is torch.nn.RNN and type(model.heads[0]) is torch.nn.RNN


def test_convert_a_bare_rnn_and_leave_subclasses_alone():
    class Custom(torch.nn.RNN):
        pass

    rnn = torch.nn.RNN(2, 3)
    custom = Custom(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left on torch: no warning
        rnnkern.convert(rnn)
    with pytest.warns(UserWarning, match=r"left 1 recurrent module on torch: \(the model\) "
                      r"\(Custom: a subclass of torch.nn.RNN, whose forward may differ\)"):
        rnnkern.convert(custom)
    assert type(rnn) is rnnkern.RNN and type(custom) is Custom
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        rnnkern.convert(3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        rnnkern.revert("model")


def test_convert_says_what_it_converted_and_what_it_left(caplog):
    """What runs on rnnkern shows in print(model); what convert leaves on torch (a subclass,
    a parametrized layer) is named in a warning with the reason; what it swaps is logged."""
    from torch.nn.utils.parametrizations import weight_norm

    class Custom(torch.nn.LSTM):
        pass

    model = torch.nn.ModuleDict(dict(enc=torch.nn.LSTM(2, 3), cell=torch.nn.GRUCell(3, 3),
                                     custom=Custom(2, 3),
                                     normed=weight_norm(torch.nn.GRU(2, 3), "weight_hh_l0")))
    with caplog.at_level(logging.INFO, logger="rnnkern"):
        with pytest.warns(UserWarning) as record:
            rnnkern.convert(model)
    (message,) = [str(w.message) for w in record if "rnnkern.convert" in str(w.message)]
    assert "left 2 recurrent modules on torch" in message
    assert "custom (Custom: a subclass of torch.nn.LSTM, whose forward may differ)" in message
    assert "normed (ParametrizedGRU: its weights are parametrized" in message
    assert "enc: torch.nn.LSTM; cell: torch.nn.GRUCell" in caplog.text
    shown = str(model)
    assert "(enc): rnnkern.LSTM(2, 3)" in shown and "(cell): rnnkern.GRUCell(3, 3)" in shown
    assert "(custom): Custom(2, 3)" in shown
    rnnkern.revert(model)
    assert "(enc): LSTM(2, 3)" in str(model) and "rnnkern" not in str(model)


# Autograd features --------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_second_derivatives_match_torch(nonlinearity):
    ours, theirs = pair(num_layers=2, nonlinearity=nonlinearity)
    x = torch.randn(4, 2, 3, dtype=F64)

    def penalty(module):
        xi = x.clone().requires_grad_()
        out, h_n = module(xi)
        (gx,) = torch.autograd.grad((out.square().sum() + h_n.sum()), xi, create_graph=True)
        loss = gx.square().sum()  # a gradient penalty
        return torch.autograd.grad(loss, list(module.parameters()))

    for name, a, b in zip(dict(ours.named_parameters()), penalty(ours), penalty(theirs)):
        assert_f64_close(a, b, f"gradient-penalty gradient of {name}")


def test_gradgradcheck_and_hessian():
    ours, theirs = pair(I=2, H=3)
    x = torch.randn(3, 2, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(1, 2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: ours(a, b)[0], (x, h0))

    def loss(module):
        return lambda inp: module(inp)[0].sin().sum()

    x0 = x.detach()
    assert_f64_close(torch.autograd.functional.hessian(loss(ours), x0),
                     torch.autograd.functional.hessian(loss(theirs), x0), "hessian")


def test_forward_mode_ad_matches_torch():
    import torch.autograd.forward_ad as fwad

    ours, theirs = pair(num_layers=2, bidirectional=True)
    x, tangent = torch.randn(5, 2, 3, dtype=F64), torch.randn(5, 2, 3, dtype=F64)
    results = []
    for module in (ours, theirs):
        with fwad.dual_level():
            out, h_n = module(fwad.make_dual(x, tangent))
            results.append((fwad.unpack_dual(out).tangent, fwad.unpack_dual(h_n).tangent))
    assert_f64_close(results[0][0], results[1][0], "output tangent")
    assert_f64_close(results[0][1], results[1][1], "h_n tangent")

    jvps = [torch.func.jvp(lambda inp: m(inp)[0], (x,), (tangent,))[1] for m in (ours, theirs)]
    assert_f64_close(jvps[0], jvps[1], "torch.func.jvp")


def test_torch_func_over_functional_call_matches_torch():
    ours, theirs = pair(num_layers=2)
    x = torch.randn(4, 3, 3, dtype=F64)
    params = {k: v.detach() for k, v in theirs.named_parameters()}

    def loss(module):
        return lambda p: torch.func.functional_call(module, p, (x,))[0].square().sum()

    grads = [torch.func.grad(loss(m))(params) for m in (ours, theirs)]
    for name in params:
        assert_f64_close(grads[0][name], grads[1][name], f"torch.func.grad {name}")
    _, vjp_ours = torch.func.vjp(loss(ours), params)
    _, vjp_theirs = torch.func.vjp(loss(theirs), params)
    one = torch.tensor(1.0, dtype=F64)
    for name in params:
        assert_f64_close(vjp_ours(one)[0][name], vjp_theirs(one)[0][name], f"vjp {name}")
    # outside any transform, functional_call runs the kernels with the given weights
    with torch.no_grad():
        doubled = {k: 2 * v for k, v in params.items()}
        assert_f64_close(torch.func.functional_call(ours, doubled, (x,))[0],
                         torch.func.functional_call(theirs, doubled, (x,))[0], "output")


def test_meta_device_and_to_empty():
    module = rnnkern.RNN(3, 5, num_layers=2, device="meta", dtype=F64)
    out, h_n = module(torch.empty(4, 2, 3, device="meta", dtype=F64))
    assert out.shape == (4, 2, 5) and h_n.shape == (2, 2, 5) and out.device.type == "meta"
    module.to_empty(device="cpu")
    _, theirs = pair(num_layers=2)
    module.load_state_dict(theirs.state_dict())
    x = torch.randn(4, 2, 3, dtype=F64)
    assert_f64_close(module(x)[0], theirs(x)[0], "output after to_empty")


def test_in_place_change_of_output_is_refused_with_the_workaround_working():
    ours, theirs = pair()
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    mask = torch.rand(4, 2, 5) > 0.5
    out, _ = ours(x)
    out.masked_fill_(mask, 0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    grads = []
    for module in (ours, theirs):
        xi = x.detach().requires_grad_()
        out = module(xi)[0].clone()  # the documented workaround
        out.masked_fill_(mask, 0)
        out.sum().backward()
        grads.append(xi.grad)
    assert_f64_close(grads[0], grads[1], "input gradient through masked_fill_")


def test_negative_bit_tensors_are_accepted():
    ours, theirs = pair()
    z = torch.complex(torch.randn(4, 2, 3, dtype=F64), torch.randn(4, 2, 3, dtype=F64))
    x = z.conj().imag
    assert x.is_neg()
    h0 = torch.complex(torch.randn(1, 2, 5, dtype=F64), torch.randn(1, 2, 5, dtype=F64))
    hx = h0.conj().imag
    for got, want in zip(ours(x, hx), theirs(x, hx)):
        assert_f64_close(got, want, "output with negative-bit input")


# Gradient flow on partly frozen models ------------------------------------------------------

def test_gradient_flow_with_a_frozen_first_layer():
    ours, _ = pair(num_layers=2)
    x = torch.randn(6, 2, 3, dtype=F64)
    with record_gradient_flow(ours) as full:
        ours(x)[0].sum().backward()
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        getattr(ours, name).requires_grad_(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with record_gradient_flow(ours) as flow:
            ours(x)[0].sum().backward()
            ours(x)[0].sum().backward()
    assert flow.norms is not None and len(flow.history) == 2
    assert flow.not_recorded == [(0, 0)]
    assert torch.isnan(flow.norms[0]).all()
    assert_f64_close(flow.norms[1], full.norms[1], "layer 1 norms")
    messages = [str(w.message) for w in caught if "record_gradient_flow" in str(w.message)]
    assert len(messages) == 1 and "(0, 0)" in messages[0]


def test_gradient_flow_with_everything_trained_reports_nothing_missing():
    ours, _ = pair(num_layers=2, bidirectional=True)
    with record_gradient_flow(ours) as flow:
        ours(torch.randn(3, 2, 3, dtype=F64))[0].sum().backward()
    assert flow.not_recorded == [] and not torch.isnan(flow.norms).any()


def test_jacobian_norms_take_unbatched_input_and_hx():
    ours, _ = pair(num_layers=2)
    x, hx = torch.randn(5, 3, dtype=F64), torch.randn(2, 5, dtype=F64)
    unbatched = jacobian_norms(ours, x, layer=1, hx=hx)
    batched = jacobian_norms(ours, x.unsqueeze(1), layer=1, hx=hx.unsqueeze(1))
    assert_f64_close(unbatched.norms, batched.norms, "jacobian norms")
