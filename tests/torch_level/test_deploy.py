"""Deploying a model that uses rnnkern: tracers, scripting, exporters and quantization get
torch's own computation (a graph of torch's operators that runs without rnnkern) or the
custom op (make_fx, FakeTensorMode), never the kernels' trace-time outputs. A test that takes
``cell`` runs for each drop-in cell of the registry (the cell fixture of conftest.py)."""

import copy
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import cells, diagnostics, functional

pytestmark = pytest.mark.cells(drop_in=True)

# The operator a traced torch class records.
ATEN_OPS = {"rnn": "aten::rnn_tanh", "lstm": "aten::lstm", "gru": "aten::gru"}


class Model(torch.nn.Module):
    """The issue's model: a 2-layer batch_first recurrent layer and a Linear head."""

    def __init__(self, torch_class):
        super().__init__()
        self.rnn = torch_class(8, 16, 2, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


@pytest.fixture
def models(cell):
    """(cell, rnnkern model, torch.nn twin with the same weights), in eval mode."""
    torch.manual_seed(0)
    theirs = Model(cells.get(cell).torch_type()).eval()
    ours = rnnkern.convert(copy.deepcopy(theirs))
    assert type(ours.rnn).__module__ == "rnnkern.modules"
    return cell, ours, theirs


def _inputs():
    gen = torch.Generator().manual_seed(1)
    # the example, and another batch size and length
    return torch.randn(3, 5, 8, generator=gen), torch.randn(4, 7, 8, generator=gen)


def _run_without_rnnkern(code: str, tmp_path) -> str:
    """Runs code in a fresh Python where `import rnnkern` fails; returns its stdout."""
    script = "import sys\nsys.modules['rnnkern'] = None\nimport torch\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("grad", [False, True])
def test_jit_trace_is_torch_graph_for_any_shape(models, grad, tmp_path):
    cell, ours, theirs = models
    xa, xb = _inputs()
    with torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(ours, xa)
    kinds = {n.kind() for n in traced.rnn.graph.nodes()}
    assert ATEN_OPS[cell] in kinds and not any(k.startswith("rnnkern::") for k in kinds)
    with torch.no_grad():
        expected = theirs(xb)
        torch.testing.assert_close(traced(xb), expected)
        torch.testing.assert_close(traced(xa), theirs(xa))
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    np.save(tmp_path / "x.npy", xb.numpy())
    out = _run_without_rnnkern("""
        import numpy as np
        m = torch.jit.load("traced.pt")
        np.save("y.npy", m(torch.from_numpy(np.load("x.npy"))).detach().numpy())
    """, tmp_path)
    assert out == ""
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), expected)


def test_jit_trace_of_functional_records_the_op():
    """Traced directly, the functional API records the custom op (not a stale output)."""
    gen = torch.Generator().manual_seed(2)
    h0 = torch.zeros(3, 6)
    w = [torch.randn(6, 4, generator=gen), torch.randn(6, 6, generator=gen),
         torch.randn(6, generator=gen), torch.randn(6, generator=gen)]

    def f(x):
        return functional.rnn(x, h0, *w)[0]

    xa, xb = torch.randn(5, 3, 4, generator=gen), torch.randn(5, 3, 4, generator=gen)
    with torch.no_grad():
        traced = torch.jit.trace(f, xa)
        assert "rnnkern::layer_forward" in {n.kind() for n in traced.graph.nodes()}
        torch.testing.assert_close(traced(xb), f(xb), rtol=0, atol=0)


def test_jit_script_compiles_torch_class(models, tmp_path):
    cell, ours, theirs = models
    xa, xb = _inputs()
    scripted = torch.jit.script(ours)
    with torch.no_grad():
        torch.testing.assert_close(scripted(xb), theirs(xb))
        torch.testing.assert_close(scripted(xa), theirs(xa))
        # the eager model still gives its answers (torch puts the prepared twin into it)
        torch.testing.assert_close(ours(xb), theirs(xb))
    assert ours.rnn.weight_hh_l0 is theirs.rnn.weight_hh_l0 or torch.equal(
        ours.rnn.weight_hh_l0, theirs.rnn.weight_hh_l0)
    scripted.save(str(tmp_path / "scripted.pt"))
    np.save(tmp_path / "x.npy", xb.numpy())
    _run_without_rnnkern("""
        import numpy as np
        m = torch.jit.load("scripted.pt")
        np.save("y.npy", m(torch.from_numpy(np.load("x.npy"))).detach().numpy())
    """, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), theirs(xb))


def test_jit_script_of_drop_in_alone(cell):
    """Scripted alone, a drop-in gives what torch's class gives (torch's own scripted RNN
    modules have no callable forward) and stays rnnkern's."""
    torch.manual_seed(0)
    torch_class = cells.get(cell).torch_type()
    ours = rnnkern.convert(torch_class(4, 5))
    scripted = torch.jit.script(ours)
    assert type(ours).__module__ == "rnnkern.modules"
    assert scripted.original_name == torch_class.__name__
    with pytest.raises(AttributeError, match="no attribute 'forward'"):
        torch.jit.script(torch_class(4, 5)).forward
    with pytest.raises(AttributeError, match="no attribute 'forward'"):
        scripted.forward


def _onnx_check(path, x, expected, op):
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    assert op in {n.op_type for n in model.graph.node}
    out = ReferenceEvaluator(model).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


ONNX_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def test_onnx_export_torchscript_exporter(models, tmp_path):
    cell, ours, theirs = models
    xa, xb = _inputs()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ours, (xa,), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 1: "steps"}})
    with torch.no_grad():
        _onnx_check(path, xb, theirs(xb), ONNX_OPS[cell])


def test_onnx_export_dynamo_exporter(models, tmp_path):
    cell, ours, theirs = models
    xa, xb = _inputs()
    if cell == "rnn":  # torch unrolls aten::rnn_tanh here (torch.nn.RNN too): fixed length
        xb = xb[:, :xa.shape[1]]
        dims = {0: torch.export.Dim("batch")}
    else:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("steps")}
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ours, (xa,), str(path), dynamo=True, input_names=["x"],
                          dynamic_shapes=(dims,), verbose=False)
    with torch.no_grad():
        _onnx_check(path, xb, theirs(xb), "Tanh" if cell == "rnn" else ONNX_OPS[cell])


def test_torch_export_decomposes_to_aten(models, tmp_path):
    cell, ours, theirs = models
    xa, xb = _inputs()
    xb = xb[:, :xa.shape[1]]  # a dynamic batch dimension, as torch.nn exports it
    program = torch.export.export(ours, (xa,), dynamic_shapes=({0: torch.export.Dim("b")},))
    decomposed = program.run_decompositions()
    targets = {str(n.target) for n in decomposed.graph.nodes if n.op == "call_function"}
    assert not any("rnnkern" in t for t in targets), targets
    with torch.no_grad():
        torch.testing.assert_close(decomposed.module()(xb), theirs(xb))
    torch.export.save(decomposed, str(tmp_path / "program.pt2"))
    np.save(tmp_path / "x.npy", xb.numpy())
    _run_without_rnnkern("""
        import numpy as np
        m = torch.export.load("program.pt2").module()
        np.save("y.npy", m(torch.from_numpy(np.load("x.npy"))).detach().numpy())
    """, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), theirs(xb))


def test_make_fx_and_fake_tensors(models):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    cell, ours, theirs = models
    xa, xb = _inputs()
    graph = make_fx(lambda x: ours(x), tracing_mode="real")(xa)
    other = torch.randn_like(xa)  # real mode fixes the shapes (as for torch.nn)
    with torch.no_grad():
        torch.testing.assert_close(graph(other), theirs(other))
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = ours(torch.randn(4, 7, 8))
    assert tuple(y.shape) == (4, 7, 3)


@pytest.mark.cells("lstm", "gru")  # the classes torch's dynamic quantization takes
def test_quantize_dynamic_warns_and_revert_quantizes(cell):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)
    theirs = Model(cells.get(cell).torch_type()).eval()
    ours = rnnkern.convert(copy.deepcopy(theirs))
    spec = {torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear}
    with pytest.warns(UserWarning, match=r"rnnkern\.revert\(model\)"):
        torch.ao.quantization.quantize_dynamic(ours, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not asked for: no warning
        torch.ao.quantization.quantize_dynamic(ours, {torch.nn.Linear})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        q_ours = torch.ao.quantization.quantize_dynamic(rnnkern.revert(ours), spec)
        q_theirs = torch.ao.quantization.quantize_dynamic(theirs, spec)
    assert type(q_ours.rnn) is type(q_theirs.rnn)
    assert type(q_ours.rnn).__module__.startswith("torch.ao.nn.quantized")
    with torch.no_grad():
        torch.testing.assert_close(q_ours(x), q_theirs(x), rtol=0, atol=0)


def test_recording_refuses_tracing():
    m = rnnkern.LSTM(4, 5)
    with diagnostics.record_gradient_flow(m):
        with pytest.raises(RuntimeError, match="eager mode only"):
            torch.jit.trace(m, torch.randn(3, 2, 4), check_trace=False)
