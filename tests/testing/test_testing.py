"""rnnkern.testing: candidates (NumPy bptt functions, module classes) against every reference,
the classic hand-written BPTT bugs caught and localised at the right step, finite differences
against the reference, tolerances, and errors that name the argument."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkern
from rnnkern import testing

# tests/impls: the candidates (also used by tests/apps/test_check.py)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "impls"))
import bptt as impls  # noqa: E402
import gated as gated_impls  # noqa: E402
import modules as module_impls  # noqa: E402

# the smallest with H > 1: with H = 1, W_hh is its own transpose
SIZES = [(6, 3, 4, 5), (9, 2, 3, 7), (2, 1, 1, 2), (4, 5, 7, 3)]


# ----------------------------------------------------------------------------- correct code

@pytest.mark.parametrize("reference", testing.REFERENCES)
@pytest.mark.parametrize("size", SIZES[:2])
def test_correct_numpy_bptt_passes_every_reference(reference, size):
    report = testing.assert_gradients_close(impls.bptt, reference, size=size,
                                            forward=impls.forward)
    names = [t.name for t in report.tensors]
    assert names == ["y", "h_n", "grad x", "grad h0", "grad w_ih", "grad w_hh", "grad b_ih",
                     "grad b_hh"]
    bound = testing.FD_RTOL if reference == "finite-differences" else 1e-10
    assert all(t.rel <= bound and t.allowed_rel == bound for t in report.tensors)
    assert report.passed and report.localisation is None and "agree" in report.table()


def test_correct_numpy_bptt_passes_in_float32():
    report = testing.assert_gradients_close(impls.bptt, size=(7, 3, 5, 17), dtype="float32")
    # held to torch.nn.RNN's own float32 error, not to float64's 1e-10
    assert all(1e-7 < t.allowed_rel < 1e-3 for t in report.tensors)
    assert all(1e-9 < t.rel for t in report.tensors)  # it did run in float32
    assert "torch.nn.RNN's float32 error" in report.tolerance


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("options", [dict(), dict(num_layers=2, bidirectional=True),
                                     dict(packed=True, nonlinearity="relu"),
                                     dict(num_layers=3, bidirectional=True, packed=True),
                                     dict(bias=False, bidirectional=True)],
                         ids=["plain", "L2-bi", "packed-relu", "L3-bi-packed", "no-bias"])
def test_rnnkern_and_torch_modules_agree_with_the_reference(options, dtype):
    for candidate in (rnnkern.RNN, torch.nn.RNN):
        report = testing.assert_gradients_close(candidate, size=(5, 4, 3, 7), dtype=dtype,
                                                **options)
        keys = [t.key for t in report.tensors]
        assert keys[:4] == ["output", "h_n", "input", "hx"]
        layers = options.get("num_layers", 1)
        per = 4 if options.get("bias", True) else 2
        assert len(keys) == 4 + per * layers * (2 if options.get("bidirectional") else 1)
    assert testing.compare(rnnkern.RNN, "torch", size=(5, 4, 3, 7), **options).passed


@pytest.mark.parametrize("options", [dict(), dict(nonlinearity="relu"),
                                     dict(num_layers=2, bidirectional=True, packed=True)],
                         ids=["tanh", "relu", "L2-bi-packed"])
def test_finite_differences_agree_with_the_reference(options):
    """The autograd-free oracle and the autograd one agree far inside FD_RTOL, on outputs
    (the same forward) and on every gradient."""
    report = testing.assert_gradients_close("reference", "finite-differences", size=(4, 3, 3, 5),
                                            **options)
    outputs = [t for t in report.tensors if t.key in ("output", "h_n")]
    grads = [t for t in report.tensors if t not in outputs]
    assert all(t.rel < 1e-14 for t in outputs)
    assert all(t.rel < testing.FD_RTOL / 10 for t in grads)


def test_finite_differences_are_not_autograd():
    """A module whose autograd backward is wrong but whose forward is right fails against
    finite differences (so they come from the forward alone) and against the reference."""
    for reference in ("finite-differences", "reference"):
        report = testing.compare(module_impls.HandRNNNoDphi, reference, size=(3, 2, 2, 3))
        assert not report.passed
        assert all(t.passed for t in report.tensors if t.key in ("output", "h_n"))


def test_hand_written_module_passes_with_layers():
    testing.assert_gradients_close(module_impls.HandRNN, size=(6, 3, 4, 5), num_layers=3)


def test_gradcheck_of_module_classes():
    assert testing.gradcheck(rnnkern.RNN)
    assert testing.gradcheck(rnnkern.RNN, num_layers=2, bidirectional=True, packed=True,
                             nonlinearity="relu")
    from torch.autograd.gradcheck import GradcheckError

    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        testing.gradcheck(module_impls.HandRNNNoDphi)


# ----------------------------------------------------------------------------- the classic bugs

# bug: (function, the step where the error enters as a function of T, the quantity)
BUGS = {
    # δ_{T-1} = ∂L/∂h_{T-1} without φ': wrong at the last step already, inside the step
    "phi' left out": (impls.bptt_no_dphi, lambda T: T - 1, "delta"),
    # δ_{T-1} is right; what it sends to h_{T-2} (δ W_hhᵀ) is not
    "W_hh untransposed": (impls.bptt_w_hh_untransposed, lambda T: T - 2, "grad_h"),
    # the gradient from step T-1 does not reach step T-2: δ_{T-2} is wrong
    "one step late": (impls.bptt_one_step_late, lambda T: T - 2, "delta"),
}


@pytest.mark.parametrize("reference", ["reference", "torch", "finite-differences"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("bug", BUGS)
def test_classic_bug_is_caught_at_the_right_step(bug, size, reference):
    function, step, quantity = BUGS[bug]
    report = testing.compare(function, reference, size=size, forward=impls.forward)
    assert not report.passed
    T = size[0]
    failed = {t.name for t in report.failed()}
    assert {"grad x", "grad w_hh"} <= failed and not {"y", "h_n"} & failed
    loc = report.localisation
    assert (loc.step, loc.quantity) == (step(T), quantity), loc
    assert loc.message.startswith(f"step {step(T)}") or (step(T) == -1 and "∂L/∂h0" in
                                                         loc.message)
    with pytest.raises(AssertionError) as error:
        testing.assert_gradients_close(function, reference, size=size, forward=impls.forward)
    assert "gradients differ" in str(error.value)
    assert f"error enters: {loc.message}" in str(error.value)


def test_w_hh_untransposed_with_one_step_shows_in_the_gradient_of_h0():
    report = testing.compare(impls.bptt_w_hh_untransposed, size=(1, 3, 4, 5))
    assert [t.name for t in report.failed()] == ["grad h0"]
    assert (report.localisation.step, report.localisation.quantity) == (-1, "grad_h")
    assert report.localisation.short() == "∂L/∂h0"


@pytest.mark.parametrize("reference", ["reference", "finite-differences"])
def test_bias_summed_over_the_wrong_axis_is_found_after_the_loop(reference):
    """Summed over time and units instead of time and batch: the right shape when B == H;
    every δ_t is right, only the two bias gradients differ."""
    report = testing.compare(impls.bptt_bias_axis, reference, size=(6, 4, 3, 4))
    assert [t.name for t in report.failed()] == ["grad b_ih", "grad b_hh"]
    assert report.worst.name in ("grad b_ih", "grad b_hh")
    loc = report.localisation
    assert (loc.step, loc.quantity) == (None, "after the loop")
    assert "grad b_ih, grad b_hh" in loc.message and loc.short() == "after the loop"


def test_bias_summed_over_the_wrong_axis_with_another_shape_names_key_and_shapes():
    with pytest.raises(ValueError, match=r"result\['b_ih'\] has shape \(3,\), expected \(5,\)"):
        testing.compare(impls.bptt_bias_axis, size=(6, 3, 4, 5))


def test_module_candidates_are_localised_per_layer():
    report = testing.compare(module_impls.HandRNNNoDphi, size=(6, 3, 4, 5), num_layers=2)
    assert (report.localisation.step, report.localisation.quantity) == (5, "delta")
    report = testing.compare(module_impls.HandRNNWhhUntransposedInLayer1, size=(6, 3, 4, 5),
                             num_layers=2)
    loc = report.localisation
    assert (loc.step, loc.quantity, loc.layer) == (4, "grad_h", 1)
    assert "of layer 1" in loc.message
    # layer 0 is right: its weight gradients agree only if nothing reached it wrong; here the
    # error flows down, so they differ too, but the layer named is where it entered
    assert not report.passed


def test_bidirectional_or_packed_errors_are_localised_on_one_direction():
    report = testing.compare(module_impls.DoubledGradientOfHx, size=(6, 3, 4, 5), packed=True,
                             bidirectional=True, num_layers=2)
    assert [t.name for t in report.failed()] == ["grad hx"]
    loc = report.localisation
    assert (loc.step, loc.quantity) == (-1, "grad_h")
    assert loc.message.endswith("(found on 6x3x4x5 L2 tanh, one direction, no packing)")
    report = testing.compare(module_impls.ReverseDirectionDetached, size=(6, 3, 4, 5),
                             bidirectional=True, packed=True)
    failed = {t.key for t in report.failed()}
    assert "weight_hh_l0_reverse" in failed and "weight_hh_l0" not in failed
    assert report.localisation.quantity == "configuration"
    assert report.localisation.message.endswith("the error comes with bidirectional")


def test_wrong_forward_is_reported_at_its_first_step():
    report = testing.compare(impls.bptt, size=(6, 3, 4, 5), forward=impls.forward_off_by_one)
    assert [t.name for t in report.failed()] == ["y", "h_n"]
    assert (report.localisation.step, report.localisation.quantity) == (3, "output")


# Bugs tied to a step's place in the sequence, not to what every step does: (candidate, cell,
# size, t) where δ_t is the first to differ walking back and the error enters between steps
# t + 1 and t (the hand-off from t + 1, not step t, is wrong).
ABSOLUTE_BUGS = {
    "LSTM carry from step 2 to c_1 drops f_2": (gated_impls.lstm_bptt_f_dropped_at_step_2,
                                                "lstm", (6, 3, 4, 5), 1),
    "the same, T = 3": (gated_impls.lstm_bptt_f_dropped_at_step_2, "lstm", (3, 3, 4, 5), 1),
    "the same in a module": (gated_impls.HandLSTMFDroppedAtStep2, "lstm", (6, 3, 4, 5), 1),
    "LSTM chunks of 3 from the end drop f": (gated_impls.lstm_bptt_chunked, "lstm",
                                             (7, 3, 4, 5), 3),
    "RNN chunks of 3 from the start lose the carry": (impls.bptt_chunked, "rnn", (6, 3, 4, 5),
                                                      2),
    "the same, T = 7": (impls.bptt_chunked, "rnn", (7, 3, 4, 5), 5),
}


@pytest.mark.parametrize("bug", ABSOLUTE_BUGS)
def test_bug_at_an_absolute_step_is_not_blamed_on_the_step_after_it(bug):
    """Restarted at step t + 1 such a candidate hands off right, so the restart cannot clear
    the hand-off at step t + 1 of the full problem: the report says between, not inside."""
    candidate, cell, size, t = ABSOLUTE_BUGS[bug]
    forward = None if isinstance(candidate, type) else GATED_BPTT[cell][1] if cell != "rnn" \
        else impls.forward
    report = testing.compare(candidate, cell=cell, size=size, forward=forward)
    loc = report.localisation
    assert (loc.step, loc.quantity) == (t, "between"), loc
    assert loc.short() == f"steps {t + 1}→{t}"
    assert loc.message.startswith(f"step {t}: δ_{t}")
    assert f"the error enters between steps {t + 1} and {t}" in loc.message
    assert "cannot be told" in loc.message
    assert "the error is inside" not in loc.message and " agree:" not in loc.message


@pytest.mark.parametrize("size", [(6, 3, 4, 5), (2, 1, 1, 2)])
def test_bug_in_every_step_is_still_found_inside_the_step(size):
    """The checks behind "between" leave a bug that every step has where it was: the
    gradient from step t + 1 added one step late is inside step T - 2."""
    T = size[0]
    report = testing.compare(impls.bptt_one_step_late, size=size, forward=impls.forward)
    loc = report.localisation
    assert (loc.step, loc.quantity) == (T - 2, "delta")
    assert f"the error is inside step {T - 2}" in loc.message
    report = testing.compare(gated_impls.lstm_bptt_dc_without_f, cell="lstm", size=size,
                             forward=gated_impls.lstm_forward)
    assert (report.localisation.step, report.localisation.quantity) == (T - 2, "grad_c")


def test_numpy_bptt_without_its_forward_does_not_blame_the_backward():
    """A wrong forward inside a NumPy bptt shows in every gradient; without forward= it was
    not compared, so the report says so instead of naming a derivative as the cause."""
    report = testing.compare(impls.bptt_forward_off_by_one, size=(6, 3, 4, 5))
    loc = report.localisation
    assert (loc.step, loc.quantity) == (5, "delta")
    assert "the forward was not checked" in loc.message
    assert "in the candidate's own forward" in loc.message
    assert "the error is inside step" not in loc.message
    # with its forward, the forward is the step named
    report = testing.compare(impls.bptt_forward_off_by_one, size=(6, 3, 4, 5),
                             forward=impls.forward_off_by_one)
    assert (report.localisation.step, report.localisation.quantity) == (3, "output")
    # and a backward bug with the forward given is inside the step, nothing said of a forward
    report = testing.compare(impls.bptt_no_dphi, size=(6, 3, 4, 5), forward=impls.forward)
    assert "the error is inside step 5" in report.localisation.message
    assert "forward" not in report.localisation.message


# ----------------------------------------------------------------------------- the report

def _perturbed(key, index, amount):
    def bptt(*args):
        grads = impls.bptt(*args)
        grads[key] = grads[key].copy()
        if all(i < n for i, n in zip(index, grads[key].shape)):  # localisation runs shorter
            grads[key][index] += amount
        return grads
    return bptt


@pytest.mark.parametrize("key, index, name, where, loc", [
    # at step 1 only, which restarted problems show elsewhere: between steps 2 and 1
    ("x", (1, 2, 0), "grad x", "step 1, row 2, feature 0", (1, "between")),
    ("w_hh", (2, 3), "grad w_hh", "unit 2, column 3", (None, "after the loop")),
    ("b_hh", (4,), "grad b_hh", "unit 4", (None, "after the loop")),
    ("h0", (0, 1), "grad h0", "row 0, unit 1", (-1, "grad_h")),
])
def test_worst_element_and_errors_are_exact(key, index, name, where, loc):
    report = testing.compare(_perturbed(key, index, 1e-3), size=(6, 3, 4, 5))
    bad = report.failed()
    assert [t.name for t in bad] == [name] and report.worst.name == name
    assert bad[0].where == where
    assert bad[0].index == ((0, *index) if key == "h0" else index)  # hx: (layer, row, unit)
    assert bad[0].max_abs == pytest.approx(1e-3, rel=1e-6)
    reference = testing.compare(impls.bptt, size=(6, 3, 4, 5))  # same problem, no error
    assert reference.passed
    assert (report.localisation.step, report.localisation.quantity) == loc
    line = next(l for l in report.table().splitlines() if l.strip().startswith(name + " "))
    assert where in line and line.endswith("FAIL") and "1.0e-03" in line


def test_nan_in_a_gradient_fails():
    report = testing.compare(_perturbed("w_ih", (0, 0), np.nan), size=(3, 2, 2, 3))
    assert [t.name for t in report.failed()] == ["grad w_ih"]
    assert report.failed()[0].where == "unit 0, column 0"


def test_caller_sets_the_tolerance():
    small = _perturbed("w_hh", (0, 0), 1e-7)
    assert not testing.compare(small, size=(6, 3, 4, 5)).passed
    report = testing.compare(small, size=(6, 3, 4, 5), rtol=1e-5)
    assert report.passed and "1e-05" in report.tolerance
    assert testing.compare(small, size=(6, 3, 4, 5), atol=1e-6).passed
    assert not testing.compare(small, size=(6, 3, 4, 5), atol=1e-8).passed


def test_float32_tolerance_is_torchs_own_error():
    """A float32 candidate that loses more precision than torch's float32 (gradients rounded
    to float16) fails; the bound is 8 times torch.nn.RNN's float32 error."""
    def rounded(*args):
        return {k: v.astype(np.float16).astype(np.float32) for k, v in impls.bptt(*args).items()}
    report = testing.compare(rounded, size=(7, 3, 5, 17), dtype="float32")
    assert not report.passed and {t.name for t in report.failed()} >= {"grad w_hh"}
    assert all(t.allowed_rel >= testing.F32_FACTOR * testing.F32_FLOOR for t in report.tensors)


def test_report_table_is_readable():
    report = testing.compare(impls.bptt_no_dphi, size=(6, 3, 4, 5), forward=impls.forward)
    lines = report.table().splitlines()
    assert lines[0] == ("bptt.bptt_no_dphi against rnnkern.reference: 6x3x4x5 tanh, float64 "
                        "(relative error ≤ 1e-10): DIFFER")
    assert lines[1].split() == ["tensor", "max", "abs", "err", "rel", "err", "allowed",
                                "worst", "element"]
    assert len(lines) == 2 + 8 + 1 and lines[-1].startswith("error enters: step 5 (the last)")
    assert str(report) == report.table()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error, message", [
    (lambda: testing.compare(impls.bptt_without_w_hh), ValueError,
     r"bptt.bptt_without_w_hh's result has no key 'w_hh'.*got keys 'x', 'h0', 'w_ih', "
     r"'b_ih', 'b_hh'"),
    (lambda: testing.compare(impls.bptt_transposed_w_ih), ValueError,
     r"result\['w_ih'\] has shape \(4, 6\), expected \(6, 4\) \(the shape of w_ih\)"),
    (lambda: testing.compare(impls.bptt_returns_a_tuple), TypeError,
     "must return a dict with keys x, h0, w_ih, w_hh, b_ih, b_hh, got tuple"),
    (lambda: testing.compare(impls.bptt, forward=lambda *a: a[0]), ValueError,
     r"its result y has shape \(5, 3, 4\), expected \(5, 3, 6\) \(\(T, B, H\)\)"),
    (lambda: testing.compare(torch.nn.RNN(3, 4)), TypeError, "not an instance: pass RNN"),
    (lambda: testing.compare(3), TypeError, "got int"),
    (lambda: testing.compare(dict), TypeError, "got the class builtins.dict"),
    (lambda: testing.compare(impls.bptt, "numpy"), ValueError,
     "reference must be one of reference, torch, rnnkern, finite-differences.*got 'numpy'"),
    (lambda: testing.compare(rnnkern.RNN, cell="cnn"), ValueError,
     "cell must be one of 'rnn', 'lstm', 'gru', 'indrnn', got 'cnn'"),
    (lambda: testing.compare(rnnkern.RNN, cell="lstm"), ValueError,
     r"rnnkern.RNN's parameter 'weight_ih_l0' has shape \(6, 4\), expected \(24, 4\) "
     r"\(as torch.nn.LSTM's\)"),
    (lambda: testing.compare(rnnkern.GRU, cell="gru", nonlinearity="relu"), ValueError,
     "nonlinearity applies to cell 'rnn' or 'indrnn' only, got nonlinearity='relu' with cell='gru'"),
    (lambda: testing.compare(rnnkern.GRU, cell="gru", proj_size=2), ValueError,
     "proj_size applies to cell 'lstm' only, got proj_size=2 with cell='gru'"),
    (lambda: testing.compare(rnnkern.LSTM, cell="lstm", proj_size=6), ValueError,
     r"proj_size must be smaller than H = 6 \(as torch.nn.LSTM requires\), got 6"),
    (lambda: testing.compare(rnnkern.LSTM, cell="lstm", proj_size=-1), ValueError,
     "proj_size must be an integer ≥ 0, got -1"),
    (lambda: testing.compare(impls.bptt, cell="lstm", proj_size=2), ValueError,
     "proj_size=2 needs a module candidate"),
    (lambda: testing.compare(rnnkern.RNN, size=(3, 4)), ValueError,
     r"size must be \(T, B, I, H\), four positive integers, got \(3, 4\)"),
    (lambda: testing.compare(rnnkern.RNN, size=(3, 0, 2, 2)), ValueError,
     r"four positive integers, got \(3, 0, 2, 2\)"),
    (lambda: testing.compare(rnnkern.RNN, dtype="float16"), ValueError,
     "dtype must be 'float64' or 'float32', got 'float16'"),
    (lambda: testing.compare(rnnkern.RNN, nonlinearity="sigmoid"), ValueError,
     "nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"),
    (lambda: testing.compare(rnnkern.RNN, num_layers=0), ValueError,
     "num_layers must be a positive integer, got 0"),
    (lambda: testing.compare(impls.bptt, num_layers=2), ValueError,
     r"num_layers=2 needs a module candidate: a NumPy bptt \(bptt.bptt\) is one layer"),
    (lambda: testing.compare(impls.bptt, packed=True), ValueError,
     "packed=True needs a module candidate"),
    (lambda: testing.compare(rnnkern.RNN, impls.bptt, num_layers=2), ValueError,
     r"num_layers=2 needs a module candidate: a NumPy bptt \(bptt.bptt\) is one layer"),
    (lambda: testing.compare(rnnkern.RNN, seed=-1), ValueError,
     "seed must be an integer ≥ 0, got -1"),
    (lambda: testing.compare(rnnkern.RNN, atol=-1), ValueError,
     "atol must be a finite number ≥ 0, got -1"),
    (lambda: testing.compare(module_impls.WrongNames), ValueError,
     "has no parameter 'weight_ih_l0': a candidate module must have torch.nn.RNN's parameter "
     "names .*; it has w"),
    (lambda: testing.compare(module_impls.ReturnsOutputOnly), TypeError,
     r"must return \(output, h_n\) as torch.nn.RNN does, got Tensor"),
    (lambda: testing.compare(rnnkern.RNN, "finite-differences", size=(100, 20, 10, 40)),
     ValueError, "finite differences are for small sizes: 100x20x10x40 tanh has 22880 inputs"),
    (lambda: testing.gradcheck(impls.bptt), TypeError, "gradcheck needs a module class"),
])
def test_bad_input_names_what_is_wrong(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_numpy_bptt_as_the_reference_and_numpy_dtypes():
    """Any candidate can be the oracle of another; dtypes may be given as NumPy or torch's."""
    report = testing.assert_gradients_close(rnnkern.RNN, impls.bptt, size=(5, 3, 4, 6),
                                            dtype=np.dtype("float64"))
    assert report.reference == "bptt.bptt"
    assert testing.compare(impls.bptt, dtype=torch.float32).dtype == "float32"


def test_candidate_may_write_into_its_arguments():
    def scribbler(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
        grads = impls.bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)
        for a in (x, h0, w_ih, w_hh, b_ih, b_hh, grad_y):
            a[...] = 0
        return grads
    assert testing.compare(scribbler, forward=impls.forward).passed


# ----------------------------------------------------------------------------- the gated cells

DROP_INS = {"lstm": (rnnkern.LSTM, torch.nn.LSTM), "gru": (rnnkern.GRU, torch.nn.GRU)}
GATED_OPTIONS = {
    "T1-B1-H1": dict(size=(1, 1, 1, 1)),
    "L2-bi-packed": dict(size=(6, 4, 3, 5), num_layers=2, bidirectional=True, packed=True),
    "L3-packed-no-bias": dict(size=(5, 3, 2, 7), num_layers=3, packed=True, bias=False),
    "bi-odd": dict(size=(9, 5, 4, 17), bidirectional=True),
    "proj": dict(size=(6, 3, 4, 5), num_layers=2, bidirectional=True, packed=True, proj_size=3),
}


def _gated_cases():
    for cell in ("lstm", "gru"):
        for name, options in GATED_OPTIONS.items():
            if "proj_size" in options and cell != "lstm":
                continue
            yield pytest.param(cell, options, id=f"{cell}-{name}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell, options", list(_gated_cases()))
def test_gated_drop_ins_agree_with_every_autograd_oracle(cell, options, dtype):
    ours, theirs = DROP_INS[cell]
    for candidate, reference in ((ours, "reference"), (ours, "torch"), (theirs, "reference"),
                                 (theirs, "rnnkern"), ("reference", "torch")):
        report = testing.assert_gradients_close(candidate, reference, cell=cell, dtype=dtype,
                                                **options)
        keys = [t.key for t in report.tensors]
        states = ["hx", "cx"] if cell == "lstm" else ["hx"]
        finals = ["h_n", "c_n"] if cell == "lstm" else ["h_n"]
        assert keys[:2 + 2 * len(states)] == ["output", *finals, "input", *states]
        per = (4 if options.get("bias", True) else 2) + (1 if options.get("proj_size") else 0)
        layers, directions = options.get("num_layers", 1), 1 + options.get("bidirectional", 0)
        assert len(keys) == 2 + 2 * len(states) + per * layers * directions
        assert report.passed and report.localisation is None
        if dtype == "float32":
            assert f"torch.nn.{cell.upper()}'s float32 error" in report.tolerance
            assert all(1e-7 < t.allowed_rel < 1e-3 for t in report.tensors)


@pytest.mark.parametrize("cell, options", [
    ("lstm", dict(size=(3, 2, 2, 3), num_layers=2, bidirectional=True, packed=True,
                  proj_size=2)),
    ("gru", dict(size=(4, 3, 3, 5), num_layers=2, bidirectional=True, packed=True))],
    ids=["lstm-L2-bi-packed-proj", "gru-L2-bi-packed"])
def test_gated_drop_ins_agree_with_finite_differences(cell, options):
    report = testing.assert_gradients_close(DROP_INS[cell][0], "finite-differences", cell=cell,
                                            **options)
    assert report.reference == "finite differences"
    assert all(t.rel < testing.FD_RTOL / 10 for t in report.tensors)
    assert {"cx", "c_n", "weight_hr_l1_reverse"} <= {t.key for t in report.tensors} or \
        cell == "gru"


def test_gated_gradcheck():
    assert testing.gradcheck(rnnkern.LSTM, cell="lstm", num_layers=2, bidirectional=True,
                             packed=True, proj_size=2)
    assert testing.gradcheck(rnnkern.GRU, cell="gru", num_layers=2, bidirectional=True,
                             packed=True)
    from torch.autograd.gradcheck import GradcheckError

    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        testing.gradcheck(gated_impls.HandGRUNoZCarry, cell="gru")
    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        testing.gradcheck(gated_impls.HandLSTMDcWithoutF, cell="lstm")


GATED_BPTT = {"lstm": (gated_impls.lstm_bptt, gated_impls.lstm_forward),
              "gru": (gated_impls.gru_bptt, gated_impls.gru_forward)}


@pytest.mark.parametrize("reference", testing.REFERENCES)
@pytest.mark.cells("lstm", "gru")
def test_correct_gated_numpy_bptt_passes_every_reference(cell, reference):
    bptt, forward = GATED_BPTT[cell]
    size = (4, 2, 3, 4) if reference == "finite-differences" else (6, 3, 4, 5)
    report = testing.assert_gradients_close(bptt, reference, cell=cell, forward=forward,
                                            size=size)
    c0 = ["grad c0"] if cell == "lstm" else []
    assert [t.name for t in report.tensors] == ["y", "h_n", "grad x", "grad h0", *c0,
                                                "grad w_ih", "grad w_hh", "grad b_ih",
                                                "grad b_hh"]
    # and as the reference of the drop-in, in float32 too
    testing.assert_gradients_close(DROP_INS[cell][0], bptt, cell=cell, size=(6, 3, 4, 5))
    testing.assert_gradients_close(bptt, cell=cell, size=(7, 3, 5, 17), dtype="float32")


# bug: (function, cell, the step where the error enters as a function of T, the quantity)
GATED_BUGS = {
    "LSTM tanh'(c) left out": (gated_impls.lstm_bptt_no_dtanh, "lstm", lambda T: T - 1,
                               "delta"),
    "LSTM dc to c_{t-1} without f": (gated_impls.lstm_bptt_dc_without_f, "lstm",
                                     lambda T: T - 2, "grad_c"),
    "LSTM only the i block to h_{t-1}": (gated_impls.lstm_bptt_only_i_to_h, "lstm",
                                         lambda T: T - 2, "grad_h"),
    "GRU h_n left out of da_r": (gated_impls.gru_bptt_no_h_n_in_da_r, "gru", lambda T: T - 1,
                                 "delta"),
    "GRU no d ⊙ z to h_{t-1}": (gated_impls.gru_bptt_no_z_carry, "gru", lambda T: T - 2,
                                "grad_h"),
}


@pytest.mark.parametrize("reference", ["reference", "torch"])
@pytest.mark.parametrize("size", [(6, 3, 4, 5), (9, 2, 3, 7), (2, 1, 1, 2)])
@pytest.mark.parametrize("bug", GATED_BUGS)
def test_gated_bug_is_caught_at_the_right_step(bug, size, reference):
    function, cell, step, quantity = GATED_BUGS[bug]
    report = testing.compare(function, reference, size=size, cell=cell,
                             forward=GATED_BPTT[cell][1])
    assert not report.passed
    failed = {t.name for t in report.failed()}
    assert {"grad x", "grad w_hh"} <= failed and not {"y", "h_n"} & failed
    loc = report.localisation
    T = size[0]
    assert (loc.step, loc.quantity) == (step(T), quantity), loc
    state = {"grad_c": "c", "grad_h": "h"}.get(quantity)
    if quantity == "delta":
        assert loc.message.startswith(f"step {T - 1} (the last): δ_{T - 1} = [da_")
        assert loc.short() == f"step {T - 1} (δ)"
    else:
        assert loc.message.startswith(f"step {T - 2}: ∂L/∂{state}_{T - 2} differs while "
                                      f"δ_{T - 1} agrees")
        assert loc.short() == f"step {T - 2} (∂L/∂{state})"
    with pytest.raises(AssertionError, match="gradients differ") as error:
        testing.assert_gradients_close(function, reference, size=size, cell=cell,
                                       forward=GATED_BPTT[cell][1])
    assert f"error enters: {loc.message}" in str(error.value)


def test_gated_hand_off_bugs_with_one_step_show_in_the_initial_state():
    report = testing.compare(gated_impls.lstm_bptt_dc_without_f, cell="lstm", size=(1, 3, 4, 5))
    assert [t.name for t in report.failed()] == ["grad c0"]
    assert (report.localisation.step, report.localisation.quantity) == (-1, "grad_c")
    assert report.localisation.short() == "∂L/∂c0"
    assert "to the initial state c0 is wrong (it is dc_0 ⊙ f_0)" in report.localisation.message
    report = testing.compare(gated_impls.gru_bptt_no_z_carry, cell="gru", size=(1, 3, 4, 5))
    assert [t.name for t in report.failed()] == ["grad h0"]
    assert report.localisation.short() == "∂L/∂h0"


def test_gated_module_candidates_are_localised_per_layer():
    report = testing.assert_gradients_close(gated_impls.HandLSTM, cell="lstm",
                                            size=(6, 3, 4, 5), num_layers=3)
    assert [t.key for t in report.tensors][:6] == ["output", "h_n", "c_n", "input", "hx",
                                                    "cx"]
    testing.assert_gradients_close(gated_impls.HandGRU, cell="gru", size=(6, 3, 4, 5),
                                   num_layers=3)
    for cls, cell, quantity in ((gated_impls.HandLSTMDcWithoutF, "lstm", "grad_c"),
                                (gated_impls.HandLSTMOnlyIToH, "lstm", "grad_h"),
                                (gated_impls.HandGRUNoZCarry, "gru", "grad_h")):
        report = testing.compare(cls, cell=cell, size=(6, 3, 4, 5), num_layers=2)
        loc = report.localisation
        assert (loc.step, loc.quantity) == (4, quantity) and loc.layer in (0, 1), loc
        assert f"of layer {loc.layer} differs" in loc.message
        assert {"grad hx", "grad weight_hh_l1"} <= {t.name for t in report.failed()}
    report = testing.compare(gated_impls.HandGRUNoHnInDaR, cell="gru", size=(6, 3, 4, 5),
                             num_layers=2)
    assert (report.localisation.step, report.localisation.quantity) == (5, "delta")


def test_lstm_c_n_gradient_dropped_is_caught_on_one_direction():
    report = testing.compare(gated_impls.CnDetached, cell="lstm", size=(6, 3, 4, 5),
                             num_layers=2, bidirectional=True, packed=True)
    assert {"output", "h_n", "c_n"}.isdisjoint(t.key for t in report.failed())
    assert {"grad cx", "grad weight_hh_l1_reverse"} <= {t.name for t in report.failed()}
    loc = report.localisation
    assert (loc.step, loc.quantity) == (5, "delta")
    assert "∂L/∂h_5 and ∂L/∂c_5 are formed" in loc.message
    assert loc.message.endswith("(found on 6x3x4x5 L2 lstm, one direction, no packing)")


def test_gated_report_and_errors():
    report = testing.compare(rnnkern.LSTM, "torch", cell="lstm", size=(4, 3, 2, 5),
                             proj_size=2, bidirectional=True)
    assert report.reference == "torch.nn.LSTM" and report.candidate == "rnnkern.LSTM"
    assert report.config.describe() == "4x3x2x5 bi proj2 lstm"
    by_key = {t.key: t for t in report.tensors}
    assert by_key["weight_hr_l0_reverse"].name == "grad weight_hr_l0_reverse"
    assert by_key["c_n"].where.startswith("layer 0") and by_key["hx"].index[2] < 2
    assert testing.compare("reference", cell="gru").candidate == "rnnkern.reference"

    def no_c0(*args):
        grads = gated_impls.lstm_bptt(*args)
        del grads["c0"]
        return grads
    with pytest.raises(ValueError, match="result has no key 'c0': it must return a dict with "
                                         "keys x, h0, c0, w_ih, w_hh, b_ih, b_hh"):
        testing.compare(no_c0, cell="lstm")
    with pytest.raises(TypeError, match=r"must return \(output, \(h_n, c_n\)\) as "
                                        r"torch.nn.LSTM does, got \(output, Tensor\)"):
        testing.compare(gated_impls.ReturnsHnOnly, cell="lstm")
    with pytest.raises(ValueError, match=r"'weight_ih_l0' has shape \(12, 4\), expected "
                                         r"\(9, 4\) \(as torch.nn.GRU's\)"):
        testing.compare(torch.nn.LSTM, cell="gru", size=(5, 3, 4, 3))
    with pytest.raises(TypeError, match="gradcheck needs a module class built like "
                                        "torch.nn.LSTM"):
        testing.gradcheck(gated_impls.lstm_bptt, cell="lstm")


@pytest.mark.parametrize("cell, key, row, where", [
    ("gru", "w_hh", (5 + 2, 1), "gate z, unit 2, column 1"),
    ("lstm", "b_ih", (2 * 5 + 1,), "gate g, unit 1"),
    ("lstm", "w_ih", (3 * 5 + 4, 0), "gate o, unit 4, column 0")])
def test_gated_weight_rows_are_named_by_gate(cell, key, row, where):
    bptt = GATED_BPTT[cell][0]

    def perturbed(*args):
        grads = bptt(*args)
        grads[key] = grads[key].copy()
        grads[key][row] += 1.0
        return grads
    report = testing.compare(perturbed, cell=cell, size=(4, 3, 2, 5))
    assert [(t.name, t.where) for t in report.failed()] == [(f"grad {key}", where)]
    assert report.localisation.quantity == "after the loop"


# ----------------------------------------------------------------------------- the library

def test_testing_imports_no_application_module():
    source = (Path(testing.__file__)).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported |= {(node.module or "") + ":" + a.name for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    applications = ("bench", "vanish", "adding", "cli", "check", "__main__")
    assert not [m for m in imported if any(m.split(":")[-1] == a or m.endswith("." + a)
                                          for a in applications)], imported
    code = ("import sys, rnnkern.testing\n"
            "print(sorted(m for m in sys.modules if m.startswith('rnnkern.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(testing.__file__) + "/..")
    loaded = eval(proc.stdout.strip().splitlines()[-1])
    assert "rnnkern.testing" in loaded
    assert not [m for m in loaded if m.rsplit(".", 1)[-1] in applications], loaded


def test_testing_is_a_lazy_public_module():
    assert "testing" in rnnkern.__all__ and rnnkern.testing is testing
    for name in testing.__all__:
        assert getattr(testing, name) is not None


# ----------------------------------------------------------------------------- the registry
# testing and check read every fact of a cell from rnnkern.cells: a cell registered under a
# new name (a copy of a registered one, or a cell that is no drop-in for its torch class)
# works without an edit to either. A branch on a cell's name would fail these.

import dataclasses  # noqa: E402
import io  # noqa: E402

from rnnkern import cells  # noqa: E402
from rnnkern.apps.check import runner as check_runner  # noqa: E402

import fake_indrnn  # noqa: E402


@pytest.fixture
def register(monkeypatch):
    """register(spec) adds a spec to the registry for the test (in place of the registry's
    own cell of that name, if it has one)."""
    def add(spec):
        kept = tuple(c for c in cells.CELLS if c.name != spec.name)
        monkeypatch.setattr(cells, "CELLS", kept + (spec,))
        monkeypatch.setattr(cells, "NAMES", tuple(c.name for c in kept) + (spec.name,))
        monkeypatch.setattr(cells, "_BY_NAME", {**cells._BY_NAME, spec.name: spec})
        return spec
    return add


# per cell: a module with a bug, a NumPy bptt with a bug and the right forward
COPY_CASES = {
    "rnn": (module_impls.HandRNNWhhUntransposedInLayer1, impls.bptt_w_hh_untransposed,
            impls.forward, dict(num_layers=2, nonlinearity="relu")),
    "lstm": (gated_impls.HandLSTMDcWithoutF, gated_impls.lstm_bptt_dc_without_f,
             gated_impls.lstm_forward, dict(num_layers=2, proj_size=2)),
    "gru": (gated_impls.HandGRUNoZCarry, gated_impls.gru_bptt_no_z_carry,
            gated_impls.gru_forward, dict(num_layers=2)),
}


def _facts(report):
    loc = report.localisation
    return ([(t.name, t.key, t.max_abs, t.rel, t.allowed_rel, t.where, t.passed)
             for t in report.tensors], report.tolerance, report.candidate, report.reference,
            None if loc is None else (loc.step, loc.quantity, loc.message, loc.layer))


@pytest.mark.cells(drop_in=True)
def test_a_renamed_copy_of_a_cell_gets_the_same_reports(cell, register):
    copy = register(dataclasses.replace(cells.get(cell), name=f"{cell}copy"))
    module_bug, bptt_bug, forward, options = COPY_CASES[cell]
    drop_in = copy.module_type()
    runs = [
        (drop_in, "reference", dict(size=(5, 3, 4, 6), bidirectional=True, packed=True,
                                    **options)),
        (drop_in, "torch", dict(size=(5, 3, 4, 6), dtype="float32", **options)),
        (copy.torch_type(), "rnnkern", dict(size=(4, 2, 3, 5))),
        (drop_in, "finite-differences", dict(size=(3, 2, 2, 3))),
        (module_bug, "reference", dict(size=(6, 3, 4, 5), num_layers=2)),
        (bptt_bug, "torch", dict(size=(6, 3, 4, 5), forward=forward)),
        (bptt_bug, "reference", dict(size=(6, 3, 4, 5))),
    ]
    for candidate, reference, kwargs in runs:
        original = testing.compare(candidate, reference, cell=cell, **kwargs)
        renamed = testing.compare(candidate, reference, cell=copy.name, **kwargs)
        assert _facts(renamed) == _facts(original), (candidate, reference)
        assert renamed.config == dataclasses.replace(original.config, cell=copy.name)
        assert copy.name in renamed.config.describe()
        # the bugs are caught and localised the same way
        assert original.passed is (candidate not in (module_bug, bptt_bug))
    assert testing.gradcheck(drop_in, cell=copy.name)
    # check's plan: the same rows as the original's, of the copy
    for bptt, builtin in ((False, True), (False, False), (True, False)):
        plan = check_runner.plan(bptt=bptt, cell=copy.name, builtin=builtin)
        assert plan == [dataclasses.replace(c, config=dataclasses.replace(c.config,
                                                                          cell=copy.name))
                        for c in check_runner.plan(bptt=bptt, cell=cell, builtin=builtin)]
    out = io.StringIO()
    checks = check_runner.plan(bptt=False, cell=copy.name, sizes=[(4, 2, 3, 5)],
                               dtype="float32")
    rows = check_runner.run(drop_in, copy.title, checks, out=out, timeout=None)
    assert all(row.passed for row in rows), out.getvalue()
    assert f"torch.nn.{copy.title}'s own float32 error" in out.getvalue()


def test_a_cell_without_a_drop_in_has_no_torch_oracle(register):
    spec = register(dataclasses.replace(cells.get("gru"), name="gru-own", drop_in=False))
    assert testing.references("gru-own") == ("reference", "rnnkern", "finite-differences")
    assert "torch" in testing.references("gru")
    for call in (lambda: testing.compare(rnnkern.GRU, "torch", cell="gru-own"),
                 lambda: testing.compare("torch", cell="gru-own")):
        with pytest.raises(ValueError, match=r"'torch' does not exist for cell 'gru-own': "
                                             r"rnnkern.GRU is not a drop-in for torch.nn.GRU"):
            call()
    with pytest.raises(ValueError, match="reference 'torch' does not exist for cell "
                                         "'gru-own'"):
        check_runner.plan(bptt=False, cell="gru-own", references=["torch"])
    plan = check_runner.plan(bptt=False, cell="gru-own", builtin=True)
    assert plan and "torch" not in {c.reference for c in plan}
    assert {c.reference for c in plan} == {"reference", "finite-differences", "gradcheck"}
    # its reference module is rnnkern's module with the reference loop as its forward
    report = testing.assert_gradients_close(rnnkern.GRU, cell="gru-own", size=(5, 3, 4, 6),
                                            num_layers=2, bidirectional=True, packed=True)
    assert report.reference == "rnnkern.reference"
    assert issubclass(testing._reference_class("gru-own"), spec.module_type())
    float32 = testing.assert_gradients_close(rnnkern.GRU, cell="gru-own", dtype="float32",
                                             size=(7, 3, 5, 17))
    assert "rnnkern.reference's float32 error" in float32.tolerance


def test_a_fourth_cell_with_a_diagonal_w_hh_works_end_to_end(register):
    """An IndRNN (W_hh of shape (H,), no drop-in) from its spec, module and reference loop
    alone: every oracle but torch's, localisation with its own words, gradcheck, check."""
    spec = register(fake_indrnn.SPEC)
    config = testing.Config(5, 3, 4, 6, num_layers=2, cell="indrnn")
    assert config.param_shape("weight_hh_l1") == (6,)
    assert config.param_shape("weight_ih_l1") == (6, 6)
    assert config.describe() == "5x3x4x6 L2 indrnn tanh"
    options = dict(size=(5, 3, 4, 6), num_layers=2, bidirectional=True, packed=True,
                   nonlinearity="relu")
    testing.assert_gradients_close(fake_indrnn.IndRNN, cell="indrnn", **options)
    testing.assert_gradients_close(fake_indrnn.IndRNN, "finite-differences", cell="indrnn",
                                   size=(3, 2, 2, 3), bidirectional=True)
    with pytest.raises(ValueError, match="'torch' does not exist for cell 'indrnn'"):
        testing.compare(fake_indrnn.IndRNN, "torch", cell="indrnn")
    with pytest.raises(ValueError, match=r"parameter 'weight_hh_l0' has shape \(5, 5\), "
                                         r"expected \(5,\) \(as rnnkern.IndRNN's\)"):
        testing.compare(torch.nn.RNN, cell="indrnn", size=(4, 2, 3, 5))
    report = testing.assert_gradients_close(fake_indrnn.bptt, cell="indrnn",
                                            forward=fake_indrnn.forward, size=(6, 3, 4, 5))
    assert [t.name for t in report.tensors] == ["y", "h_n", "grad x", "grad h0", "grad w_ih",
                                                "grad w_hh", "grad b_ih", "grad b_hh"]
    bug = testing.compare(fake_indrnn.bptt_hand_off_without_u, cell="indrnn",
                          forward=fake_indrnn.forward, size=(6, 3, 4, 5))
    loc = bug.localisation
    assert (loc.step, loc.quantity) == (4, "grad_h"), loc
    assert "(it is δ_5 ⊙ u, u = W_hh the vector)" in loc.message
    assert loc.short() == "step 4 (∂L/∂h)"
    assert testing.gradcheck(fake_indrnn.IndRNN, cell="indrnn", nonlinearity="relu",
                             num_layers=2, bidirectional=True, packed=True)
    # rnnkern check: its built-in grid is the Elman cell's (it takes nonlinearity), without
    # torch
    plan = check_runner.plan(bptt=False, cell="indrnn")
    assert [c.config for c in plan if c.reference == "reference"] == \
        [dataclasses.replace(c, cell="indrnn") for c, _ in check_runner.DEFAULT_GRID]
    assert {c.reference for c in plan} == {"reference", "gradcheck"}
    out = io.StringIO()
    rows = check_runner.run(fake_indrnn.IndRNN, "IndRNN", plan[:6], out=out, timeout=None)
    assert all(row.passed for row in rows), out.getvalue()
    assert spec.name in testing.Config(1, 1, 1, 1, cell="indrnn").describe()


def test_testing_and_check_do_not_branch_on_cell_names():
    """No comparison with a cell's name and no table keyed by cell names in rnnkern.testing
    or rnnkern check: what differs between cells is read from their specs. (A default
    argument ``cell="rnn"`` is not a branch.)"""
    from rnnkern.apps import check as check_app

    for module in (testing, check_runner, check_app):
        tree = ast.parse(Path(module.__file__).read_text())
        found = []
        for node in ast.walk(tree):
            constants = []
            if isinstance(node, ast.Compare):
                constants = [node.left, *node.comparators]
            elif isinstance(node, ast.Dict):
                constants = [k for k in node.keys if k is not None]
            names = [c.value for c in constants
                     if isinstance(c, ast.Constant) and c.value in cells.NAMES]
            if names:
                found.append(f"line {node.lineno}: {names}")
            if isinstance(node, ast.Compare):  # `cell in ("rnn", "gru")`
                for side in node.comparators:
                    if isinstance(side, (ast.Tuple, ast.List, ast.Set)) and any(
                            isinstance(e, ast.Constant) and e.value in cells.NAMES
                            for e in side.elts):
                        found.append(f"line {node.lineno}: a cell name in a collection")
        assert not found, f"{module.__name__}: {found}"
