"""The other runtimes `rnnkern bench --peers` times beside torch.nn and rnnkern, each used when
installed (optional extras of the benchmark, never requirements of the library):

- ``onnxruntime`` and ``openvino``: inference of ``torch.onnx.export`` of the torch.nn layer
  (float32, the layer's own threads);
- ``jax``: the cell written in ``jax.numpy`` over ``lax.scan`` under ``jax.jit``, inference and
  a train step (``jax.grad`` of the same loss as the others').

Each maker returns a callable that runs one call, or raises :class:`Unavailable` saying why.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch

PEERS = ("jax", "onnxruntime", "openvino")
# What each peer times: inference only, or inference and a train step.
TRAINS = {"jax": True, "onnxruntime": False, "openvino": False}


class Unavailable(Exception):
    """A peer that cannot time this case (not installed, or a layout it does not take)."""


def parse(text: str) -> List[str]:
    """``--peers``' value: names from PEERS, comma-separated; a ValueError naming the others."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if not names or unknown:
        raise ValueError(f"expected a comma-separated list of {', '.join(PEERS)}, got {text!r}")
    return list(dict.fromkeys(names))


def _states(hx) -> Tuple[torch.Tensor, ...]:
    return hx if isinstance(hx, tuple) else (hx,)


def onnx_model(module: torch.nn.Module, x: torch.Tensor, hx) -> bytes:
    """``torch.onnx.export`` of ``module`` (a torch.nn layer) called on (x, hx)."""
    try:
        import onnx  # noqa: F401  (the legacy exporter needs it)
    except ImportError:
        raise Unavailable("onnx is not installed (pip install onnx)") from None
    names = [f"h{i}" for i in range(len(_states(hx)))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # its notes on batch sizes: the sizes are fixed here
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x, hx), buffer, input_names=["x", *names], dynamo=False)
    return buffer.getvalue()


def _feeds(x: torch.Tensor, hx) -> Dict[str, object]:
    return {"x": x.detach().numpy(),
            **{f"h{i}": s.detach().numpy() for i, s in enumerate(_states(hx))}}


def onnxruntime_inference(module: torch.nn.Module, x: torch.Tensor, hx) -> Callable[[], None]:
    try:
        import onnxruntime
    except ImportError:
        raise Unavailable("onnxruntime is not installed (pip install onnxruntime)") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(onnx_model(module, x, hx), options,
                                           providers=["CPUExecutionProvider"])
    feeds = _feeds(x, hx)
    return lambda: session.run(None, feeds)


def openvino_inference(module: torch.nn.Module, x: torch.Tensor, hx) -> Callable[[], None]:
    try:
        import openvino
    except ImportError:
        raise Unavailable("openvino is not installed (pip install openvino)") from None
    core = openvino.Core()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layer.onnx")
        with open(path, "wb") as f:
            f.write(onnx_model(module, x, hx))
        model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": str(torch.get_num_threads())})
    request = compiled.create_infer_request()
    feeds = _feeds(x, hx)
    return lambda: request.infer(feeds)


# ------------------------------------------------------------------------------------- JAX

def _jax_cell(cell: str, nonlinearity: str):
    """One step (h, c) -> (h, c) of ``cell`` in jax.numpy, torch.nn's gate order and math."""
    import jax
    import jax.numpy as jnp

    def rnn(w, x, state):
        w_ih, w_hh, b = w
        act = jnp.tanh if nonlinearity == "tanh" else jax.nn.relu
        return (act(x @ w_ih.T + state[0] @ w_hh.T + b),)

    def lstm(w, x, state):
        w_ih, w_hh, b = w
        h, c = state
        i, f, g, o = jnp.split(x @ w_ih.T + h @ w_hh.T + b, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def gru(w, x, state):
        w_ih, w_hh, b_ih, b_hh = w
        h = state[0]
        xr, xz, xn = jnp.split(x @ w_ih.T + b_ih, 3, axis=-1)
        hr, hz, hn = jnp.split(h @ w_hh.T + b_hh, 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)

    return {"rnn": rnn, "lstm": lstm, "gru": gru}[cell]


def _jax_weights(module: torch.nn.Module, cell: str):
    """Per layer-direction, the weights as the JAX cell takes them."""
    import jax.numpy as jnp

    out = []
    for layer in range(module.num_layers):
        for suffix in ("", "_reverse")[:2 if module.bidirectional else 1]:
            get = lambda name: jnp.asarray(  # noqa: E731
                getattr(module, f"{name}_l{layer}{suffix}").detach().numpy())
            w_ih, w_hh = get("weight_ih"), get("weight_hh")
            b_ih, b_hh = get("bias_ih"), get("bias_hh")
            out.append((w_ih, w_hh, b_ih, b_hh) if cell == "gru" else (w_ih, w_hh, b_ih + b_hh))
    return out


def jax_calls(cell: str, module: torch.nn.Module, x: torch.Tensor
              ) -> Tuple[Callable[[], None], Callable[[], None]]:
    """(inference, train step) of ``module``'s stack written in JAX: a lax.scan per layer and
    direction under jax.jit; the train step is jax.grad of out.sum() + the final states' sum
    with respect to the input and every weight, as the others' backward computes."""
    if cell not in ("rnn", "lstm", "gru") or getattr(module, "proj_size", 0):
        raise Unavailable(f"no JAX version of the {cell} layer here")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise Unavailable("jax is not installed (pip install jax)") from None
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    step = _jax_cell(cell, nonlinearity)
    count = 2 if cell == "lstm" else 1
    directions = 2 if module.bidirectional else 1
    H = module.hidden_size

    def forward(weights, xs):
        finals = []
        for layer in range(module.num_layers):
            outs = []
            for d in range(directions):
                w = weights[layer * directions + d]
                state = tuple(jnp.zeros((xs.shape[1], H), xs.dtype) for _ in range(count))

                def body(state, x_t, w=w):
                    state = step(w, x_t, state)
                    return state, state[0]

                last, ys = jax.lax.scan(body, state, xs, reverse=d == 1)
                outs.append(ys)
                finals += list(last)
            xs = outs[0] if directions == 1 else jnp.concatenate(outs, axis=-1)
        return xs, finals

    def loss(weights, xs):
        ys, finals = forward(weights, xs)
        return ys.sum() + sum(f.sum() for f in finals)

    weights = _jax_weights(module, cell)
    xs = jnp.asarray(x.detach().numpy())
    infer = jax.jit(lambda w, xs: forward(w, xs)[0])
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return (lambda: infer(weights, xs).block_until_ready(),
            lambda: jax.block_until_ready(grad(weights, xs)))


def makers(peers, cell: str, module: torch.nn.Module, x: torch.Tensor, hx
           ) -> Tuple[Dict[str, Callable], Dict[str, Callable], Dict[str, str]]:
    """(inference calls, train calls, why each missing peer is missing) of ``peers`` for this
    case; x (T, B, I) time-major, hx the zero states the others start from."""
    inference: Dict[str, Callable] = {}
    train: Dict[str, Callable] = {}
    missing: Dict[str, str] = {}
    # JAX last: OpenVINO forks while it compiles, which JAX, once loaded, warns against
    for name in sorted(peers, key=lambda n: n == "jax"):
        try:
            if name == "jax":
                inference[name], train[name] = jax_calls(cell, module, x)
            elif name == "onnxruntime":
                inference[name] = onnxruntime_inference(module, x, hx)
            elif name == "openvino":
                inference[name] = openvino_inference(module, x, hx)
        except Unavailable as e:
            missing[name] = str(e)
    return inference, train, missing
