"""The CUDA path on a GPU: the parity suite of tests/cuda/cuda_parity.py on device "cuda" (float64
to 1e-10 of the reference, float32 within a few times torch's own float32 error; packed,
reverse, layers, directions, gradient flow, compile), plus what only a GPU can show (devices,
streams, CUDA graphs). Marked `cuda`, skipped without a GPU: run with ``pytest -m cuda``."""

import pytest
import torch

import rnnkern
from rnnkern import cells, gpu

import cuda_parity

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not rnnkern.cuda_available(),
                                 reason="needs rnnkern built with CUDA and a GPU")]


@pytest.mark.parametrize("case", cuda_parity.LAYER_CASES,
                         ids=[cuda_parity.layer_case_id(c) for c in cuda_parity.LAYER_CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_layer(dtype, case):
    cuda_parity.check_layer("cuda", dtype, case)


@pytest.mark.parametrize("case", cuda_parity.MODULE_CASES,
                         ids=[cuda_parity.module_case_id(c) for c in cuda_parity.MODULE_CASES])
def test_module(case):
    cuda_parity.check_module("cuda", case)


@pytest.mark.parametrize("case", cuda_parity.MODULE_CASES,
                         ids=[cuda_parity.module_case_id(c) for c in cuda_parity.MODULE_CASES])
def test_gradient_flow(case):
    cuda_parity.check_gradient_flow("cuda", case)


def test_compile():
    cuda_parity.check_compile("cuda")


def test_mixed_devices_name_the_argument():
    x = torch.randn(3, 2, 4, device="cuda")
    h0 = torch.zeros(2, 5, device="cuda")
    w_ih, w_hh = torch.randn(5, 4, device="cuda"), torch.randn(5, 5)
    with pytest.raises(RuntimeError, match=r"w_hh must be on cuda:0 like input, got device cpu"):
        rnnkern.functional.rnn(x, h0, w_ih, w_hh)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        rnnkern.RNN(4, 5).cuda()(x, torch.zeros(1, 2, 5))


def test_half_precision_and_autocast_compute_in_float32():
    module = rnnkern.RNN(4, 6, num_layers=2).cuda()
    x = torch.randn(5, 3, 4, device="cuda")
    exact, _ = module(x)
    with torch.autocast("cuda", dtype=torch.float16):
        out, h_n = module(x)
    assert out.dtype == torch.float16 and h_n.dtype == torch.float16
    assert (out.float() - exact).abs().max() < 1e-2
    out16, _ = module.half()(x.half())
    assert out16.dtype == torch.float16
    assert (out16.float() - exact).abs().max() < 1e-2


def test_side_stream_and_second_device_order():
    """The kernels run on the current stream: work queued after them on that stream sees
    their results without a synchronisation."""
    module = rnnkern.RNN(8, 16, dtype=torch.float64).cuda()
    x = torch.randn(50, 4, 8, dtype=torch.float64, device="cuda")
    expected, _ = module(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, _ = module(x)
        total = out.sum()
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.allclose(total, expected.sum(), rtol=1e-12)


def test_cuda_graph_capture():
    """No allocation or synchronisation inside: the forward can be captured and replayed."""
    module = rnnkern.RNN(8, 16).cuda()
    x = torch.randn(20, 4, 8, device="cuda")
    with torch.no_grad():
        for _ in range(2):  # warm-up before capture
            module(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, _ = module(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        expected, _ = module(x)
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_kernels_run(monkeypatch):
    calls = []
    real = gpu.forward
    monkeypatch.setattr(gpu, "forward", lambda *a: calls.append(a[0].device) or real(*a))
    rnnkern.RNN(3, 4).cuda()(torch.randn(2, 1, 3, device="cuda"))
    assert calls and calls[0].type == "cuda"


@pytest.mark.cells(drop_in=True, backends=("cpu",))
def test_gated_cells_on_a_gpu_run_on_torch_kernels(cell):
    """A drop-in module without CUDA kernels (rnnkern.LSTM / GRU) on CUDA tensors gives
    torch's results (its own kernels run them); gradient-flow recording says it is CPU only."""
    spec = cells.get(cell)
    theirs = spec.torch_type()(4, 6, num_layers=2, bidirectional=True).cuda()
    ours = spec.module_type()(4, 6, num_layers=2, bidirectional=True).cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, 4, device="cuda")
    out, _ = ours(x)
    expected, _ = theirs(x)
    assert torch.allclose(out, expected, atol=1e-6)
    from rnnkern.diagnostics import record_gradient_flow
    with record_gradient_flow(ours), pytest.raises(RuntimeError, match="CPU only"):
        ours(x)
