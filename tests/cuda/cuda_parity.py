"""The parity checks of the CUDA path, written once for two places: tests/cuda/test_cuda.py runs
them on a GPU (``pytest -m cuda``), tests/cuda/test_cuda_on_cpu.py on the CPU with the same
kernels built by g++ against HIP-CPU. ``device`` is where the kernels' tensors live; the oracles
run on the CPU in float64."""

import itertools

import torch
from torch.nn.utils.rnn import PackedSequence

import rnnkern
from rnnkern import functional, gpu, reference
from rnnkern.diagnostics import record_gradient_flow

from conftest import assert_f32_close, assert_f64_close, make_problem

# (T, B, I, H), tiny and odd. B = 130 and 258 give blocks of 2 and 4 rows (258: a partial last
# block); from H = 129 (float64) W_hh is read from global memory, not shared; H = 300 has
# more units than a block has threads.
LAYER_SHAPES = [(1, 1, 1, 1), (5, 3, 4, 7), (6, 9, 5, 17), (3, 13, 6, 129), (4, 130, 3, 20),
                (3, 258, 2, 9), (2, 3, 2, 300)]
LAYER_CASES = list(itertools.product(range(len(LAYER_SHAPES)), [False, True], [False, True],
                                     ["tanh", "relu"]))


def layer_case_id(case):
    index, packed, reverse, nonlinearity = case
    T, B, I, H = LAYER_SHAPES[index]
    return (f"{T}x{B}x{I}x{H}" + ("-packed" if packed else "") + ("-reverse" if reverse else "")
            + f"-{nonlinearity}")


def _layer_results(tensors, bs, nonlinearity, reverse):
    """(y, h_n, grads of x, h0, w_ih, w_hh, bias) of the reference loop, by autograd."""
    x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, grad_hn = tensors
    leaves = [t.detach().clone().requires_grad_() for t in (x, h0, w_ih, w_hh, b_ih)]
    y, h_n = reference.rnn(*leaves, b_hh, nonlinearity, batch_sizes=bs, reverse=reverse)
    grads = torch.autograd.grad((y, h_n), leaves, (grad_y, grad_hn))
    return dict(zip(["y", "h_n", "grad x", "grad h0", "grad w_ih", "grad w_hh", "grad bias"],
                    [y.detach(), h_n.detach(), *grads]))


def check_layer(device, dtype, case):
    """rnnkern.gpu's forward and backward of one layer-direction against the reference loop:
    outputs, final state, every gradient, and the gradient-flow norms against the CPU kernel."""
    index, packed, reverse, nonlinearity = case
    p, bs, g = make_problem(*LAYER_SHAPES[index], packed=packed, seed=index)
    names = ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"]
    exact = [torch.from_numpy(p[n]) for n in names] + \
        [torch.from_numpy(g["grad_y"]), torch.from_numpy(g["grad_hn"])]
    bs = None if bs is None else torch.from_numpy(bs)
    expected = _layer_results(exact, bs, nonlinearity, reverse)

    ours_in = [t.to(device, dtype) for t in exact]
    x, h0, w_ih, w_hh, b_ih, b_hh, grad_y, grad_hn = ours_in
    y = gpu.forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, bs, reverse)
    h_n = functional._final_state(y, h0.shape[0], bs, reverse)
    grads, norms = gpu.backward(x, h0, w_ih, w_hh, y, grad_y, grad_hn, nonlinearity, bs,
                                reverse, [True] * 5, True)
    ours = dict(zip(expected, [y, h_n, *grads]))
    for name, value in ours.items():
        assert value.device == x.device and value.dtype == dtype, name
        assert value.shape == expected[name].shape, name

    # the norms: against the CPU kernel's, which tests/diagnostics/test_diagnostics.py checks by
    # autograd
    _, (cpu_norms, _) = functional._backward(
        "rnn", exact[0], (exact[1],), exact[2], exact[3], None, expected["y"], (), exact[6],
        (exact[7],), nonlinearity, bs, reverse, [False] * 8, True)
    assert norms.dtype == torch.float64 and norms.shape == cpu_norms.shape
    if dtype == torch.float64:
        for name, value in ours.items():
            assert_f64_close(value.cpu(), expected[name], name)
        assert_f64_close(norms.cpu(), cpu_norms, "norms")
        return
    own32 = _layer_results([t.float() for t in exact], bs, nonlinearity, reverse)
    for name, value in ours.items():
        assert_f32_close(value.cpu(), own32[name], expected[name], name)
    assert_f32_close(norms.cpu(), cpu_norms.float(), cpu_norms, "norms")


# Module cases: (layers, bidirectional, batch_first, bias, nonlinearity, form, with_hx).
MODULE_CASES = [
    (1, False, False, True, "tanh", "batched", False),
    (1, False, True, True, "relu", "batched", True),
    (2, True, False, True, "tanh", "batched", True),
    (2, False, True, False, "tanh", "packed_sorted", False),
    (3, True, False, True, "relu", "packed_unsorted", True),
    (2, True, True, True, "tanh", "packed_unsorted", False),
    (1, True, False, True, "tanh", "unbatched", True),
    (2, True, False, False, "relu", "unbatched", False),
]


def module_case_id(case):
    layers, bidir, bf, bias, nl, form, with_hx = case
    return (f"L{layers}" + ("-bi" if bidir else "") + ("-bf" if bf else "") +
            ("" if bias else "-nobias") + f"-{nl}-{form}" + ("-hx" if with_hx else ""))


def _to(x, device, dtype=None):
    if isinstance(x, PackedSequence):
        return PackedSequence(x.data.to(device, dtype), x.batch_sizes,
                              None if x.sorted_indices is None else x.sorted_indices.to(device),
                              None if x.unsorted_indices is None
                              else x.unsorted_indices.to(device))
    return None if x is None else x.to(device, dtype)


def _run_module(module, x, hx, seed):
    """Forward, a loss weighing every output differently, backward: outputs and gradients."""
    data = x.data if isinstance(x, PackedSequence) else x
    leaf = data.detach().clone().requires_grad_()
    inp = leaf if isinstance(x, torch.Tensor) else PackedSequence(
        leaf, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    h = None if hx is None else hx.detach().clone().requires_grad_()
    out, h_n = module(inp, h)
    out_data = out.data if isinstance(out, PackedSequence) else out
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)
               for t in (out_data, h_n)]
    loss = (out_data * weights[0]).sum() + (h_n * weights[1]).sum()
    module.zero_grad(set_to_none=True)
    loss.backward()
    results = {"output": out_data.detach(), "h_n": h_n.detach(), "grad input": leaf.grad}
    if h is not None:
        results["grad hx"] = h.grad
    results.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return results


def module_inputs(case, seed):
    from conftest import make_input  # the CPU suite's inputs, moved to the device later

    layers, bidir, batch_first, bias, nl, form, with_hx = case
    T, B, I, H = 5, 4, 3, 6
    x, batch = make_input(form, T, B, I, batch_first, torch.float64, seed)
    D = 2 if bidir else 1
    hx = None
    if with_hx:
        shape = (layers * D, H) if form == "unbatched" else (layers * D, batch, H)
        hx = torch.randn(shape, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(seed))
    kwargs = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, bias=bias,
                  nonlinearity=nl)
    return x, hx, I, H, kwargs


def check_module(device, case, seed=0):
    """rnnkern.RNN on the device against torch.nn.RNN on the CPU, in float64: outputs, h_n
    and every gradient; then float32 against torch's own float32 error."""
    x, hx, I, H, kwargs = module_inputs(case, seed)
    theirs = torch.nn.RNN(I, H, dtype=torch.float64, **kwargs)
    ours = rnnkern.RNN(I, H, dtype=torch.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    ours.to(device)
    expected = _run_module(theirs, x, hx, seed)
    got = _run_module(ours, _to(x, device), _to(hx, device), seed)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].device.type == torch.device(device).type, name
        assert_f64_close(got[name].cpu(), expected[name], name)

    theirs32 = theirs.float()
    own32 = _run_module(theirs32, _to(x, "cpu", torch.float32),
                        _to(hx, "cpu", torch.float32), seed)
    got32 = _run_module(ours.float(), _to(x, device, torch.float32),
                        _to(hx, device, torch.float32), seed)
    for name in expected:
        assert got32[name].dtype == torch.float32, name
        assert_f32_close(got32[name].cpu(), own32[name], expected[name], name)


def check_gradient_flow(device, case, seed=0):
    """record_gradient_flow on the device gives the CPU kernel's norms (NaN where the CPU's
    are: steps after a sequence ended)."""
    x, hx, I, H, kwargs = module_inputs(case, seed)
    cpu_module = rnnkern.RNN(I, H, dtype=torch.float64, **kwargs)
    dev_module = rnnkern.RNN(I, H, dtype=torch.float64, **kwargs)
    dev_module.load_state_dict(cpu_module.state_dict())
    dev_module.to(device)
    flows = []
    for module, inp, h in ((cpu_module, x, hx), (dev_module, _to(x, device), _to(hx, device))):
        with record_gradient_flow(module) as flow:
            _run_module(module, inp, h, seed)
        flows.append(flow.norms)
    expected, got = flows
    assert got.device.type == torch.device(device).type and got.shape == expected.shape
    got = got.cpu()
    assert torch.equal(got.isnan(), expected.isnan())
    assert_f64_close(got.nan_to_num(), expected.nan_to_num(), "gradient-flow norms")


def check_compile(device):
    """torch.compile(fullgraph=True) of the module on the device: the eager results."""
    module = rnnkern.RNN(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64).to(device)
    x = torch.randn(4, 2, 3, dtype=torch.float64).to(device)
    compiled = torch.compile(module, fullgraph=True)
    leaf = x.clone().requires_grad_()
    out, h_n = compiled(leaf)
    (out.sum() + h_n.square().sum()).backward()
    got = (out.detach(), h_n.detach(), leaf.grad)
    leaf = x.clone().requires_grad_()
    out, h_n = module(leaf)
    (out.sum() + h_n.square().sum()).backward()
    for a, b, name in zip(got, (out.detach(), h_n.detach(), leaf.grad), ("out", "h_n", "grad")):
        assert_f64_close(a.cpu(), b.cpu(), name)
