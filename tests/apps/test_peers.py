"""`rnnkern bench --peers`: the other runtimes' columns (rnnkern/apps/bench/peers.py). The
peers are optional extras of the benchmark: the table's logic is tested with a stand-in peer,
and each real one where it is installed."""

import numpy as np
import pytest
import torch

from rnnkern import apps as cli
from rnnkern.apps.bench import peers
from rnnkern.apps.bench import timing as bench


def test_the_names_are_checked():
    assert peers.parse("jax, onnxruntime,jax") == ["jax", "onnxruntime"]
    for bad in ("", "tensorflow", "jax,tvm"):
        with pytest.raises(ValueError, match="jax, onnxruntime, openvino"):
            peers.parse(bad)


def test_an_unknown_peer_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--peers", "tvm"])
    assert exit_info.value.code == 2
    assert "--peers" in capsys.readouterr().err


def test_a_peers_columns_and_why_another_is_missing(monkeypatch):
    calls = []

    def makers(names, cell, module, x, hx):
        assert isinstance(module, torch.nn.GRU) and x.shape == (6, 2, 3)
        assert hx.shape == (1, 2, 4) and not hx.any()
        return ({"onnxruntime": lambda: calls.append(1)}, {},
                {"openvino": "openvino is not installed (pip install openvino)"})

    monkeypatch.setattr(peers, "makers", makers)
    r = bench.measure(bench.Case(6, 2, 3, 4, cell="gru"), repeats=2, sgemm=100.0,
                      peers=["onnxruntime", "openvino"])
    assert calls and r.forward_ms["onnxruntime"] > 0 and "onnxruntime" not in r.train_ms
    assert r.forward_spread["onnxruntime"] >= 0
    head = bench.format_table([r]).splitlines()[0]
    assert "onnxruntime fwd ms" in head and "rnnkern vs onnxruntime" in head
    assert "openvino" not in head
    row = bench.as_dicts([r])[0]
    assert row["peers_missing"] == {"openvino": "openvino is not installed (pip install openvino)"}
    assert row["forward_ms"]["onnxruntime"] == r.forward_ms["onnxruntime"]


def test_packed_input_is_not_given_to_the_peers():
    r = bench.measure(bench.Case(6, 3, 2, 5, packed=True), repeats=1, sgemm=100.0,
                      peers=["onnxruntime"])
    assert set(r.forward_ms) == {"torch", "rnnkern"}
    assert "packed" in r.peers_missing["onnxruntime"]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_jax_stack_computes_what_torch_does(cell):
    pytest.importorskip("jax")
    torch.manual_seed(0)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(7, 4, 3)
    infer, train = peers.jax_calls(cell, module, x)
    np.testing.assert_allclose(np.asarray(infer()), module(x)[0].detach().numpy(), atol=1e-5)
    train()


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_an_installed_inference_peer_runs_the_exported_layer(name):
    pytest.importorskip(name)
    pytest.importorskip("onnx")
    module = torch.nn.LSTM(3, 4)
    x, h = torch.randn(5, 2, 3), torch.zeros(1, 2, 4)
    inference, _, missing = peers.makers([name], "lstm", module, x, (h, h))
    assert not missing
    out = inference[name]()
    first = out[0] if name == "onnxruntime" else next(iter(out.values()))
    np.testing.assert_allclose(np.asarray(first), module(x)[0].detach().numpy(), atol=1e-5)
