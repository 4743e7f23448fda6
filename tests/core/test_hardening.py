"""Hardening: failed allocations, NaN and Inf, float32 saturation, misaligned arrays, memory.

Tests that could crash run in a fresh interpreter, so a crash fails the test, not pytest.
"""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import rnnkern

from conftest import F32_FACTOR, assert_f32_close, make_problem, rel_err

# Set by .ci/sanitize: ASan is loaded (it reserves terabytes of address space, so no RLIMIT_AS).
SANITIZED = os.environ.get("RNNKERN_SANITIZED") == "1"
needs_rlimit = pytest.mark.skipif(SANITIZED, reason="RLIMIT_AS does not work under ASan")


def run_python(code, tmp_path, threads=None, timeout=300):
    """Runs code in a fresh interpreter; returns (exit status, stdout + stderr, the words of
    the line it printed that starts with RESULT)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    # cwd away from the source tree: `import rnnkern` must find the installed package.
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    result = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    return proc.returncode, out, result[0] if result else None


# A child that runs rnnkern.forward on a `small` problem, then on a `big` one under an
# address-space limit of what it has mapped plus the big output plus `slack_mib`, so that any
# larger allocation fails, then on the small problem again.
OUT_OF_MEMORY = """
    import resource
    import numpy as np
    import rnnkern

    dtype = np.{dtype}

    def problem(B, H):
        rng = np.random.default_rng(0)
        k = 1 / np.sqrt(H)
        return [rng.standard_normal((1, B, 2)).astype(dtype),
                rng.standard_normal((B, H)).astype(dtype),
                rng.uniform(-k, k, (H, 2)).astype(dtype),
                {w_hh}]

    def vm_bytes():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

    small = problem(*{small})
    expected = rnnkern.forward(*small)
    big = problem(*{big})
    limit = vm_bytes() + big[1].nbytes + ({slack_mib} << 20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        y = rnnkern.forward(*big)
        status = "computed"
    except MemoryError as error:
        status = "MemoryError"
        print("MESSAGE", error)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    again = rnnkern.forward(*small)
    print("RESULT", status, "same" if np.array_equal(again, expected) else "DIFFERENT")
"""
RANDOM_W_HH = "rng.uniform(-k, k, (H, H)).astype(dtype)"


@needs_rlimit
@pytest.mark.parametrize("threads", [1, 2])
def test_failed_allocation_in_the_recurrent_kernel(tmp_path, threads):
    # float64 H = 128: rows 1 KiB apart, so the kernel copies h_{t-1} to a padded buffer
    # (threads = 2: inside the row-split parallel region). That buffer does not fit.
    # The small call leaves a buffer of 43 MB (21 MB per thread); the big one needs 142 MB.
    code = OUT_OF_MEMORY.format(dtype="float64", w_hh=RANDOM_W_HH, small=(40000, 128),
                                big=(1 << 17, 128), slack_mib=40)
    status, out, result = run_python(code, tmp_path, threads=threads)
    assert status == 0, out
    assert result in (["computed", "same"], ["MemoryError", "same"]), out


@needs_rlimit
def test_failed_allocation_of_the_workspace(tmp_path):
    # A broadcast w_hh of H = 20000 needs a 1.6 GB contiguous copy and as much workspace.
    w_hh = f"{RANDOM_W_HH} if H < 1000 else np.broadcast_to(dtype(0.5), (H, H))"
    code = OUT_OF_MEMORY.format(dtype="float32", small=(5, 64), big=(1, 20000), slack_mib=2000,
                                w_hh=w_hh)
    status, out, result = run_python(code, tmp_path)
    assert status == 0, out
    assert result == ["MemoryError", "same"], out
    # which buffer, and how many bytes
    assert re.search(r"MESSAGE rnnkern: out of memory allocating (a contiguous copy of w_hh "
                     r"\(20000, 20000\)|the kernels' workspace) \((\d{9,}) bytes\)", out), out


# NaN and Inf propagate as in torch.nn.RNN: outputs and gradients are NaN (and ±Inf) exactly
# where torch's are.
def poison(where, x, h0, module):
    if where == "x NaN":
        x[1, 0, 1] = float("nan")
    elif where == "x +Inf":
        x[1, 0, 1] = float("inf")
    elif where == "x -Inf":
        x[2, 1, 0] = -float("inf")
    elif where == "h0 NaN":
        h0[0, 1, 2] = float("nan")
    elif where == "h0 Inf":
        h0[-1, 0, 3] = float("inf")
    elif where == "w_hh NaN":
        with torch.no_grad():
            module.weight_hh_l0[2, 3] = float("nan")
    elif where == "b_ih Inf":
        with torch.no_grad():
            module.bias_ih_l0[1] = -float("inf")


def outputs_and_gradients(module, x, h0):
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    y, h_n = module(x, h0)
    (y.sum() + 2 * h_n.sum()).backward()
    return {"y": y, "h_n": h_n, "grad x": x.grad, "grad h0": h0.grad,
            **{f"grad {n}": p.grad for n, p in module.named_parameters()}}


@pytest.mark.parametrize("where", ["x NaN", "x +Inf", "x -Inf", "h0 NaN", "h0 Inf",
                                   "w_hh NaN", "b_ih Inf"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layers", [1, 2])
def test_nan_and_inf_propagate_like_torch(where, nonlinearity, dtype, layers):
    T, B, I, H = 5, 3, 4, 19
    kwargs = dict(num_layers=layers, bidirectional=layers > 1, nonlinearity=nonlinearity,
                  dtype=dtype)
    ref = torch.nn.RNN(I, H, **kwargs)
    ours = rnnkern.RNN(I, H, **kwargs)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=dtype)
    h0 = torch.randn(layers * (1 + (layers > 1)), B, H, dtype=dtype)
    poison(where, x, h0, ref)
    poison(where, x, h0, ours)
    expected = outputs_and_gradients(ref, x, h0)
    actual = outputs_and_gradients(ours, x, h0)
    for name, e in expected.items():
        a = actual[name]
        assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{name}: NaN elsewhere than torch's"
        assert torch.equal(torch.isposinf(a), torch.isposinf(e)), f"{name}: +Inf elsewhere"
        assert torch.equal(torch.isneginf(a), torch.isneginf(e)), f"{name}: -Inf elsewhere"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_keeps_nan(dtype):
    p, _, _ = make_problem(3, 2, 4, 5, dtype=dtype)
    p["x"][0, 1, 2] = np.nan
    y = rnnkern.forward(*p.values(), nonlinearity="relu")
    assert np.isnan(y[:, 1]).all() and not np.isnan(y[:, 0]).any()


# float32 tanh: within an ulp of the exact value, and exactly ±1 where it rounds to ±1.
def kernel_tanh(a):
    """The kernel's float32 tanh of every value of a: y = tanh(a · 1 + h0 · 0), H = 17."""
    H = 17
    x = a.astype(np.float32).reshape(1, -1, 1)
    y = rnnkern.forward(x, np.zeros((x.shape[1], H), np.float32), np.ones((H, 1), np.float32),
                        np.zeros((H, H), np.float32))
    assert (y == y[..., :1]).all()
    return y[0, :, 0]


def test_float32_tanh_is_within_an_ulp_and_saturates_like_torch():
    a = np.concatenate([np.linspace(-12, 12, 240001, dtype=np.float32),
                        np.float32([0, -0.0, 1e-30, -1e-20, 1e-6, 88, -100, 1e30, 9.0109])])
    y = kernel_tanh(a)
    exact = np.tanh(a.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    err = np.abs(y - exact) / ulp
    assert err.max() <= 1.0, f"{err.max():.2f} ulp at {a[err.argmax()]}"
    expected = torch.tanh(torch.from_numpy(a)).numpy()
    saturated = np.abs(expected) == 1
    np.testing.assert_array_equal(np.abs(y) == 1, saturated)
    np.testing.assert_array_equal(y[saturated], expected[saturated])


def test_saturated_unit_passes_no_gradient():
    # tanh(20) is 1 in float32, so torch's gradient is exactly 0.
    ref = torch.nn.RNN(1, 1)
    with torch.no_grad():
        for p in ref.parameters():
            p.zero_()
        ref.weight_ih_l0.fill_(20)
    ours = rnnkern.RNN(1, 1)
    ours.load_state_dict(ref.state_dict())
    for module in (ref, ours):
        x = torch.ones(1, 1, 1, requires_grad=True)
        y, _ = module(x)
        y.sum().backward()
        assert y.item() == 1.0
        assert x.grad.item() == 0.0 and module.weight_ih_l0.grad.item() == 0.0


@pytest.mark.parametrize("lo,hi", [(4, 10), (7, 9), (8, 10)])
def test_float32_saturating_units_within_torch_error(lo, hi):
    # Pre-activations a with lo <= |a| <= hi: units at or near float32 saturation, where the
    # gradient hangs on the last bits of tanh.
    from test_numpy_api import kernel_run, reference_run

    T, B, I, H = 4, 8, 3, 16
    rng = np.random.default_rng(0)
    sign = np.sign(rng.standard_normal((T, B, 1)))
    p = dict(x=rng.uniform(lo, hi, (T, B, I)) * sign, h0=np.zeros((B, H)),
             w_ih=rng.dirichlet(np.ones(I), H), w_hh=np.zeros((H, H)), b_ih=None, b_hh=None)
    grads = dict(grad_y=rng.standard_normal((T, B, H)), grad_hn=rng.standard_normal((B, H)))
    f32 = lambda d: {n: None if a is None else a.astype(np.float32) for n, a in d.items()}
    f64 = lambda d: {n: None if a is None else a.astype(np.float64) for n, a in d.items()}
    p, grads = f32(p), f32(grads)
    grads["grad_cn"] = None
    y, _, _, g = kernel_run("rnn", p, None, grads, False, "tanh")
    exact_y, _, _, exact_g = reference_run("rnn", f64(p), None, f64(grads), False, "tanh",
                                           torch.float64)
    torch_y, _, _, torch_g = reference_run("rnn", p, None, grads, False, "tanh", torch.float32)
    assert_f32_close(y, torch_y, exact_y, "y")
    assert set(exact_g) == {"x", "h0", "w_ih", "w_hh"}
    for name in exact_g:
        assert_f32_close(g[name], torch_g[name], exact_g[name], f"grad {name}")


# Arrays at an odd address (a byte buffer at offset 1) give the same results as aligned ones.
def misaligned(a):
    buf = bytearray(a.nbytes + 1)
    m = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    m[...] = a
    assert m.flags.c_contiguous and m.ctypes.data % a.itemsize
    return m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("packed", [False, True])
def test_misaligned_arrays_give_the_same_results(dtype, nonlinearity, packed):
    # H = 64 float32 / 128 float64 rows are 1 KiB apart: the kernel also copies h_{t-1}.
    H = 64 if dtype == np.float32 else 128
    p, bs, grads = make_problem(6, 5, 3, H, dtype=dtype, packed=packed)
    y = rnnkern.forward(*p.values(), nonlinearity=nonlinearity, batch_sizes=bs)
    g = rnnkern.backward(p["x"], p["h0"], p["w_ih"], p["w_hh"], y, grads["grad_y"],
                         grads["grad_hn"], nonlinearity=nonlinearity, batch_sizes=bs)
    m = {n: misaligned(a) for n, a in p.items()}
    y2 = rnnkern.forward(*m.values(), nonlinearity=nonlinearity, batch_sizes=bs)
    np.testing.assert_array_equal(y2, y)
    g2 = rnnkern.backward(m["x"], m["h0"], m["w_ih"], m["w_hh"], misaligned(y),
                          misaligned(grads["grad_y"]), misaligned(grads["grad_hn"]),
                          nonlinearity=nonlinearity, batch_sizes=bs)
    for a, b in zip(g2, g):
        np.testing.assert_array_equal(a, b)


# Memory, measured as the resident set of a fresh interpreter (VmRSS in /proc/self/status).
RSS = """
    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
"""

needs_rss = pytest.mark.skipif(SANITIZED, reason="ASan keeps freed memory in quarantine")


@needs_rss
def test_empty_cache_returns_every_cached_byte(tmp_path):
    # One large backward: its 52 MB workspace and its outputs are cached when it returns.
    code = RSS + """
    import numpy as np
    import rnnkern

    T, B, I, H = 400, 64, 16, 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    h0 = np.zeros((B, H))
    w_ih = rng.standard_normal((H, I)) * 0.1
    w_hh = rng.standard_normal((H, H)) * 0.5 / np.sqrt(H)
    rnnkern.forward(x[:2, :2], h0[:2], w_ih, w_hh)
    before = rss_mib()
    y = rnnkern.forward(x, h0, w_ih, w_hh)
    g = rnnkern.backward(x, h0, w_ih, w_hh, y, np.broadcast_to(1.0, y.shape))
    used = rss_mib()
    del y, g
    freed = rnnkern.empty_cache()
    print("RESULT", before, used, rss_mib(), freed / 2**20)
    """
    status, out, result = run_python(code, tmp_path)
    assert status == 0, out
    before, used, after, freed = map(float, result)
    assert after - before < 8, f"{after - before:.0f} MiB still resident after empty_cache"
    assert used - before > 100 and freed > 100, out  # y, the gradients and the workspace


TRAINING = RSS + """
    import numpy as np
    import torch
    import rnnkern

    torch.manual_seed(0)
    model = {cls}(32, 256, num_layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    lengths = np.random.default_rng(0).integers(100, 600, size=24)
    before = rss_mib()
    after_step = []
    for T in lengths:
        y, h_n = model(torch.randn(int(T), 32, 32))
        loss = y.pow(2).mean() + h_n.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        del y, h_n, loss
        after_step.append(rss_mib() - before)
    print("RESULT", max(after_step[8:]))
"""


@needs_rss
def test_memory_of_a_training_loop_with_varying_lengths_is_like_torch(tmp_path):
    growth = {}
    for cls in ("torch.nn.RNN", "rnnkern.RNN"):
        status, out, result = run_python(TRAINING.format(cls=cls), tmp_path)
        assert status == 0, out
        growth[cls] = float(result[0])
    assert growth["rnnkern.RNN"] <= 1.2 * growth["torch.nn.RNN"] + 8, growth
