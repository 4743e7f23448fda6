"""`rnnkern check`: the default grid, --impl loading (NumPy bptt functions and module classes),
the exit status (0 agree, 1 differ, 2 usage error), check.json, and the README's worked example
run as pasted."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkern import apps as cli
from rnnkern import cells
from rnnkern.apps.check import runner as check

ROOT = Path(__file__).resolve().parent.parent.parent
IMPLS = ROOT / "tests" / "impls"
BPTT = str(IMPLS / "bptt.py")
MODULES = str(IMPLS / "modules.py")
GATED = str(IMPLS / "gated.py")


def run_check(argv, tmp_path, capsys):
    """cli.main in this process; (exit status, stdout lines)."""
    status = cli.main(["check", *argv, "--out", str(tmp_path / "out")])
    return status, capsys.readouterr().out.splitlines()


def table_rows(lines):
    """The table's rows: the lines between the column header and the summary line."""
    start = next(i for i, l in enumerate(lines) if l.startswith("configuration"))
    end = next(i for i, l in enumerate(lines) if re.match(r"(all \d+|\d+ of \d+) checks", l))
    return lines[start + 1:end]


def table_cells(lines):
    """Each row as a dict column name -> cell, cut where the header's columns start."""
    header = next(l for l in lines if l.startswith("configuration"))
    names = re.findall(r"\S+(?: \S+)*", header)
    starts = [header.index(n) for n in names] + [None]
    return [{n: row[a:b].strip() for n, a, b in zip(names, starts, starts[1:])}
            for row in table_rows(lines)]


def test_default_run_checks_the_kernels_on_the_grid(tmp_path, capsys):
    status, lines = run_check([], tmp_path, capsys)
    assert status == 0
    assert lines[0].startswith("rnnkern check: rnnkern.RNN against rnnkern.reference, "
                               "torch.nn.RNN, finite differences, and torch.autograd.gradcheck")
    rows = table_rows(lines)
    expected = (len(check.DEFAULT_GRID) * 2 + len(check.FINITE_DIFFERENCES_GRID)
                + len(check.GRADCHECK_GRID))
    assert len(rows) == expected and all(r.split()[-1] == "ok" for r in rows)
    text = "\n".join(rows)
    for piece in ("1x1x1x1 tanh", "L2 bi packed relu", "no-bias", "12x11x4x129", "float32",
                  "finite differences", "autograd.gradcheck", "torch.nn.RNN"):
        assert piece in text, piece
    for cells in table_cells(lines):
        assert cells["result"] == "ok" and cells["error enters"] == "-"
        if cells["reference"] != "autograd.gradcheck":  # a few ulps, well under the bound
            margin = 10 if cells["dtype"] == "float32" else 100
            assert float(cells["rel err"]) < float(cells["allowed"]) / margin
    assert lines[-2] == f"all {expected} checks agree"
    data = json.loads((tmp_path / "out" / "check.json").read_text())
    assert data["passed"] and data["candidate"] == "rnnkern.RNN" and len(data["checks"]) == expected
    assert lines[-1] == f"wrote {os.path.realpath(tmp_path / 'out' / 'check.json')}"


def test_correct_bptt_passes_and_buggy_one_fails_with_the_step(tmp_path, capsys):
    status, lines = run_check(["--impl", f"{BPTT}:bptt", "--forward", f"{BPTT}:forward"],
                              tmp_path, capsys)
    assert status == 0 and lines[-2] == f"all {len(check.BPTT_GRID) * 2} checks agree"
    assert all(r.split()[-1] == "ok" for r in table_rows(lines))
    status, lines = run_check(["--impl", f"{BPTT}:bptt_no_dphi", "--size", "7x2x3x4",
                               "--size", "3x1x2x2"], tmp_path, capsys)
    assert status == 1
    rows = [r.split() for r in table_rows(lines)]
    assert [r[0] for r in rows] == ["7x2x3x4", "7x2x3x4", "3x1x2x2", "3x1x2x2"]
    assert all(r[-1] == "FAIL" for r in rows)
    assert [" ".join(r[-3:-1]) for r in rows] == ["6 (δ)", "6 (δ)", "2 (δ)", "2 (δ)"]
    assert "4 of 4 checks differ" in lines
    # one detailed report per configuration, with the step where the error enters
    details = [l for l in lines if l.startswith("error enters: ")]
    assert [d.split(":")[1].strip() for d in details] == ["step 6 (the last)", "step 2 (the last)"]
    data = json.loads((tmp_path / "out" / "check.json").read_text())
    assert not data["passed"] and data["checks"][0]["error_enters"] == "step 6 (δ)"


@pytest.mark.parametrize("name, enters", [("bptt_w_hh_untransposed", "step 4 (∂L/∂h)"),
                                          ("bptt_one_step_late", "step 4 (δ)")])
def test_each_bug_is_named_in_the_table(name, enters, tmp_path, capsys):
    status, lines = run_check(["--impl", f"{BPTT}:{name}", "--size", "6x3x4x5",
                               "--reference", "finite-differences"], tmp_path, capsys)
    assert status == 1
    row, = table_rows(lines)
    assert "finite differences" in row and enters in row and row.endswith("FAIL")


def test_bias_axis_bug_is_after_the_loop(tmp_path, capsys):
    status, lines = run_check(["--impl", f"{BPTT}:bptt_bias_axis", "--size", "5x4x3x4"],
                              tmp_path, capsys)
    assert status == 1
    for row in table_rows(lines):
        assert "after the loop" in row and ("grad b_ih" in row or "grad b_hh" in row)


def test_wrong_forward_is_compared(tmp_path, capsys):
    status, lines = run_check(["--impl", f"{BPTT}:bptt", "--forward",
                               f"{BPTT}:forward_off_by_one", "--size", "6x2x3x4"],
                              tmp_path, capsys)
    assert status == 1
    cells = table_cells(lines)[0]
    assert cells["worst tensor"] in ("y", "h_n") and cells["error enters"] == "step 3 (forward)"


def test_bug_at_an_absolute_step_is_reported_between_two_steps(tmp_path, capsys):
    """The LSTM carry from step 2 to c_1 drops f_2: the table and the report say the error
    enters between steps 2 and 1, not inside step 1."""
    status, lines = run_check(["--cell", "lstm", "--impl",
                               f"{GATED}:lstm_bptt_f_dropped_at_step_2", "--forward",
                               f"{GATED}:lstm_forward", "--size", "6x3x4x5"], tmp_path, capsys)
    assert status == 1
    assert [c["error enters"] for c in table_cells(lines)] == ["steps 2→1"] * 2
    detail, = [l for l in lines if l.startswith("error enters: ")]
    assert "the error enters between steps 2 and 1" in detail and "cannot be told" in detail
    assert "the error is inside step 1" not in detail
    data = json.loads((tmp_path / "out" / "check.json").read_text())
    assert [c["error_enters"] for c in data["checks"]] == ["steps 2→1"] * 2


def test_bptt_without_forward_says_the_forward_was_not_checked(tmp_path, capsys):
    status, lines = run_check(["--impl", f"{BPTT}:bptt_forward_off_by_one", "--size",
                               "6x2x3x4"], tmp_path, capsys)
    assert status == 1
    detail, = [l for l in lines if l.startswith("error enters: ")]
    assert "the forward was not checked" in detail and "--forward" in detail
    assert "the error is inside step" not in detail
    status, lines = run_check(["--impl", f"{BPTT}:bptt_forward_off_by_one", "--forward",
                               f"{BPTT}:forward_off_by_one", "--size", "6x2x3x4"], tmp_path,
                              capsys)
    assert status == 1 and table_cells(lines)[0]["error enters"] == "step 3 (forward)"


def test_module_class_from_a_file(tmp_path, capsys):
    status, lines = run_check(["--impl", f"{MODULES}:HandRNN", "--size", "5x2x3x4",
                               "--layers", "2"], tmp_path, capsys)
    assert status == 0
    assert "5x2x3x4 L2 tanh" in table_rows(lines)[0]
    status, lines = run_check(["--impl", f"{MODULES}:HandRNNWhhUntransposedInLayer1", "--size",
                               "5x2x3x4", "--layers", "2"], tmp_path, capsys)
    assert status == 1
    assert "step 3 (∂L/∂h)" in table_rows(lines)[0]
    assert any("∂L/∂h_3 of layer 1 differs" in l for l in lines)


def test_module_class_default_grid_includes_gradcheck(tmp_path, capsys):
    status, lines = run_check(["--impl", f"{MODULES}:HandRNNNoDphi", "--size", "3x2x2x3"],
                              tmp_path, capsys)
    assert status == 1
    checks = check.plan(bptt=False)
    assert sum(c.reference == "gradcheck" for c in checks) == len(check.GRADCHECK_GRID)
    assert not any(c.reference == "finite-differences" for c in checks)  # built-in run only


def test_candidate_that_raises_is_an_error_row(tmp_path, capsys):
    status, lines = run_check(["--impl", f"{BPTT}:bptt_without_w_hh", "--size", "3x2x2x3"],
                              tmp_path, capsys)
    assert status == 1
    assert all(r.endswith("ERROR") for r in table_rows(lines))
    assert any("result has no key 'w_hh'" in l for l in lines)
    status, lines = run_check(["--impl", f"{BPTT}:bptt_transposed_w_ih", "--size", "3x2x2x3"],
                              tmp_path, capsys)
    assert status == 1
    assert any("result['w_ih'] has shape (2, 3), expected (3, 2)" in l for l in lines)


def test_exit_status_of_the_command(tmp_path):
    """As a user's CI sees it: a separate process, 1 when gradients differ."""
    for name, status in (("bptt", 0), ("bptt_no_dphi", 1)):
        proc = subprocess.run([sys.executable, "-m", "rnnkern", "check", "--impl",
                               f"{BPTT}:{name}", "--size", "3x2x2x3"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == status, proc.stderr[-2000:]
    assert (tmp_path / "rnnkern-results" / "check.json").exists()


ESCAPES = str(IMPLS / "escapes.py")


def check_process(argv, cwd, timeout=300):
    """`rnnkern check` as a separate process; (exit status, stdout lines, stderr, check.json
    or None)."""
    proc = subprocess.run([sys.executable, "-m", "rnnkern", "check", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    path = Path(cwd) / "rnnkern-results" / "check.json"
    data = json.loads(path.read_text()) if path.exists() else None
    return proc.returncode, proc.stdout.splitlines(), proc.stderr, data


@pytest.mark.parametrize("name, says", [
    ("calls_sys_exit", "SystemExit: 0 (the candidate called sys.exit() or raised SystemExit)"),
    ("raises_keyboard_interrupt", "KeyboardInterrupt: from the candidate (raised by the "
                                  "candidate, not a Ctrl-C)"),
    ("raises_a_base_exception", "_Base: not an Exception"),
])
def test_candidate_that_escapes_is_a_failed_row_not_a_pass(name, says, tmp_path):
    """A candidate that ends the process or raises a BaseException: every row fails, the
    command ends with 1 and check.json is written."""
    status, lines, err, data = check_process(["--impl", f"{ESCAPES}:{name}", "--size",
                                              "3x2x2x3"], tmp_path)
    assert status == 1, err[-2000:]
    cells = table_cells(lines)
    assert [c["result"] for c in cells] == ["ERROR", "ERROR"]
    assert "2 of 2 checks differ" in lines
    assert any(says in line for line in lines), lines
    assert data is not None and not data["passed"] and data["finished"]
    assert [c["passed"] for c in data["checks"]] == [False, False]
    assert says in data["checks"][0]["details"] and data["checks"][0]["error"]


def test_system_exit_in_one_check_does_not_end_the_others(tmp_path):
    status, lines, err, data = check_process(
        ["--impl", f"{ESCAPES}:raises_system_exit_at_step_count_3", "--size", "3x2x2x3",
         "--size", "4x2x2x3", "--reference", "reference"], tmp_path)
    assert status == 1, err[-2000:]
    assert [(c["configuration"], c["result"]) for c in table_cells(lines)] == [
        ("3x2x2x3 tanh", "ERROR"), ("4x2x2x3 tanh", "ok")]
    assert [c["passed"] for c in data["checks"]] == [False, True]


def test_candidate_that_never_returns_times_out(tmp_path):
    status, lines, err, data = check_process(
        ["--impl", f"{ESCAPES}:hangs", "--size", "3x2x2x3", "--timeout", "1"], tmp_path,
        timeout=120)
    assert status == 1, err[-2000:]
    assert [c["result"] for c in table_cells(lines)] == ["TIMEOUT", "TIMEOUT"]
    assert any("timed out: still running after 1 s (--timeout 1)" in l for l in lines)
    assert [(c["passed"], c["timed_out"]) for c in data["checks"]] == [(False, True)] * 2
    # one that catches the time limit and goes on is still past it when it returns
    status, lines, err, data = check_process(
        ["--impl", f"{ESCAPES}:hangs_and_swallows", "--size", "3x2x2x3", "--timeout", "1",
         "--reference", "reference"], tmp_path, timeout=120)
    assert status == 1 and [c["result"] for c in table_cells(lines)] == ["TIMEOUT"]


def test_ctrl_c_stops_the_command_with_a_non_zero_status(tmp_path):
    """SIGINT while a check runs is the user's: the command stops (status 130) and says so;
    check.json lists the checks finished before, and is not a pass."""
    status, lines, err, data = check_process(
        ["--impl", f"{ESCAPES}:sends_itself_sigint", "--size", "3x2x2x3"], tmp_path)
    assert status == 130, err[-2000:]
    assert "rnnkern check: interrupted (Ctrl-C) after 0 of 2 checks" in err
    assert "Traceback" not in err
    assert data is not None and not data["passed"] and not data["finished"]
    assert data["checks"] == []


def test_time_limit_in_process_leaves_the_signals_as_it_found_them():
    """check.run from Python: the timed-out row, then SIGALRM, SIGINT and the interval timer
    are back as before (nothing fires later in the caller's code)."""
    import signal
    import time

    sys.path.insert(0, str(IMPLS))
    import escapes

    before = signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGINT)
    checks = check.plan(bptt=True, sizes=[(3, 2, 2, 3)], references=["reference"])
    out = open(os.devnull, "w")
    rows = check.run(escapes.hangs, "hangs", checks, timeout=0.5, out=out)
    assert [(r.passed, r.timed_out) for r in rows] == [(False, True)]
    assert "timed out: still running after 0.5 s" in rows[0].details
    assert (signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGINT)) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    time.sleep(1.2)  # the repeating alarm is off
    rows = check.run(escapes.raises_keyboard_interrupt, "k", checks, out=out)
    assert rows[0].error and "not a Ctrl-C" in rows[0].details
    out.close()


BAD_ARGUMENTS = [
    (["--impl", BPTT], "argument --impl: expected FILE.py:NAME"),
    (["--impl", f"{BPTT}:Missing"], f"argument --impl: 'Missing' was not found in {BPTT} "
                                   "(it defines: bptt, bptt_bias_axis,"),
    (["--impl", "no-such-file.py:bptt"], "argument --impl: no file 'no-such-file.py'"),
    (["--impl", f"{BPTT}:NOT_A_FUNCTION"], "is not a class or a function (it is of type int)"),
    (["--impl", f"{BPTT}:bptt", "--layers", "2"], "argument --layers: "),
    (["--impl", f"{BPTT}:bptt", "--bidirectional"], "argument --bidirectional: "),
    (["--impl", f"{BPTT}:bptt", "--packed"], "a NumPy bptt function (one layer, one direction"),
    (["--impl", f"{MODULES}:HandRNN", "--forward", f"{BPTT}:forward"],
     "argument --forward: " + f"{MODULES}:HandRNN is a module class"),
    (["--impl", f"{BPTT}:bptt", "--forward", f"{BPTT}:nope"],
     "argument --forward: 'nope' was not found"),
    (["--forward", f"{BPTT}:forward"], "argument --forward: goes with --impl"),
    (["--size", "3x4"], "argument --size: expected TxBxIxH with positive integers, got '3x4'"),
    (["--size", "3x0x1x1"], "expected TxBxIxH"),
    (["--layers", "0"], "argument --layers: expected a positive integer"),
    (["--atol", "-1"], "argument --atol: expected a finite number ≥ 0, got '-1'"),
    (["--rtol", "nan"], "argument --rtol: expected a finite number ≥ 0"),
    (["--seed", "-1"], "argument --seed: expected an integer ≥ 0, got '-1'"),
    (["--reference", "numpy"], "argument --reference: invalid choice: 'numpy'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--nonlinearity", "sigmoid"], "argument --nonlinearity: invalid choice"),
    (["--cell", "cnn"], "argument --cell: invalid choice: 'cnn'"),
    (["--cell", "all", "--impl", f"{GATED}:HandGRU"],
     "argument --cell: all checks rnnkern's four cells; with --impl give the cell"),
    (["--cell", "lstm", "--nonlinearity", "relu"],
     "argument --nonlinearity: applies to --cell rnn or indrnn only, got --cell lstm"),
    (["--cell", "gru", "--proj-size", "2"],
     "argument --proj-size: applies to --cell lstm only, got --cell gru"),
    (["--cell", "lstm", "--proj-size", "6"],
     "argument --proj-size: must be smaller than H (as torch.nn.LSTM requires), got 6 with "
     "size 5x3x4x6"),
    (["--cell", "lstm", "--proj-size", "0"], "argument --proj-size: expected a positive"),
    (["--cell", "lstm", "--impl", f"{GATED}:lstm_bptt", "--proj-size", "2"],
     "argument --proj-size: "),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS,
                         ids=[" ".join(a).replace(str(IMPLS), "impls") for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_usage_errors(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", *argv])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("rnnkern check: error: ") and message in last, last
    assert "Traceback" not in captured.err
    assert not os.listdir(tmp_path)  # nothing ran, not even the results folder


def test_impl_file_that_fails_to_import(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("import numpy\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "--impl", f"{broken}:bptt", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"importing {broken} raised RuntimeError: no GPU here" in last


def test_impl_file_may_import_its_neighbours(tmp_path, capsys):
    (tmp_path / "helper.py").write_text(f"import sys\nsys.path.insert(0, {str(IMPLS)!r})\n"
                                        "from bptt import bptt\n")
    (tmp_path / "mine.py").write_text("from helper import bptt as my_bptt\n")
    status, lines = run_check(["--impl", f"{tmp_path / 'mine.py'}:my_bptt", "--size", "3x2x2x3"],
                              tmp_path, capsys)
    assert status == 0 and lines[0].startswith("rnnkern check: mine.my_bptt against")


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for piece in ("--impl FILE.py:NAME", "--forward", "--size TxBxIxH", "--layers",
                  "--bidirectional", "--packed", "--nonlinearity", "--dtype", "--atol", "--rtol",
                  "--reference", "finite-differences", "default: 0", "default: rnnkern-results",
                  "exit status", "bptt(x, h0, w_ih, w_hh, b_ih, b_hh, grad_y)", "--cell",
                  "{rnn,lstm,gru,indrnn,all}", "--proj-size P",
                  "bptt(x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_y)", "--timeout SECONDS",
                  "default: 300", "timed out", "SIGALRM"):
        assert piece.lower() in text.lower(), piece


def test_plan_with_options_replaces_the_grid():
    checks = check.plan(bptt=False, sizes=[(4, 3, 2, 5)], layers=2, packed=True,
                        dtype="float32", references=["torch"])
    assert [(c.config.describe(), c.dtype, c.reference) for c in checks] == [
        ("4x3x2x5 L2 packed tanh", "float32", "torch")]
    checks = check.plan(bptt=True, nonlinearity="relu")
    assert [c.config.describe() for c in checks] == ["5x3x4x6 relu"] * 2
    assert all(c.config.num_layers == 1 and not c.config.packed
               for c in check.plan(bptt=True))


# ----------------------------------------------------------------------------- the gated cells

def tables(lines):
    """Each table's cells (one table per cell with --cell all)."""
    starts = [i for i, l in enumerate(lines) if l.startswith("rnnkern check: ")]
    return [table_cells(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)])]


def test_cell_all_checks_every_cell_on_its_grids(tmp_path, capsys):
    status, lines = run_check(["--cell", "all"], tmp_path, capsys)
    assert status == 0
    heads = [l for l in lines if l.startswith("rnnkern check: ")]
    assert [h.split(" against ")[0] for h in heads] == [
        "rnnkern check: rnnkern.RNN", "rnnkern check: rnnkern.LSTM", "rnnkern check: rnnkern.GRU",
        "rnnkern check: rnnkern.IndRNN"]
    assert "torch.nn.LSTM, finite differences, and torch.autograd.gradcheck" in heads[1]
    counts = []
    for cell, rows in zip(("rnn", "lstm", "gru", "indrnn"), tables(lines)):
        oracles = 2 if cells.get(cell).drop_in else 1  # torch's class: the drop-ins only
        expected = (oracles * len(check.GRIDS[cell]) + len(check.FINITE_DIFFERENCES_GRIDS[cell])
                    + len(check.GRADCHECK_GRIDS[cell]))
        assert len(rows) == expected and all(r["result"] == "ok" for r in rows)
        counts.append(expected)
        described = " ".join(r["configuration"] for r in rows)
        assert (cell in described) == (cell != "rnn")
        references = {r["reference"] for r in rows}
        torch_class = {"rnn": {"torch.nn.RNN"}, "lstm": {"torch.nn.LSTM"},
                       "gru": {"torch.nn.GRU"}, "indrnn": set()}
        assert references == {"rnnkern.reference", *torch_class[cell], "finite differences",
                              "autograd.gradcheck"}
    assert "L2 bi packed proj2 lstm" in " ".join(r["configuration"] for r in tables(lines)[1])
    assert {"float32"} < {r["dtype"] for r in tables(lines)[2]}
    assert lines[-2] == (f"rnnkern.RNN, rnnkern.LSTM, rnnkern.GRU, rnnkern.IndRNN: all "
                         f"{sum(counts)} checks agree")
    data = json.loads((tmp_path / "out" / "check.json").read_text())
    assert data["passed"]
    assert data["candidate"] == "rnnkern.RNN, rnnkern.LSTM, rnnkern.GRU, rnnkern.IndRNN"
    assert [sum(c["cell"] == cell for c in data["checks"])
            for cell in ("rnn", "lstm", "gru", "indrnn")] == counts
    assert any(c["proj_size"] == 2 for c in data["checks"])


def test_gated_numpy_bptt_with_cell(tmp_path, capsys):
    status, lines = run_check(["--cell", "lstm", "--impl", f"{GATED}:lstm_bptt", "--forward",
                               f"{GATED}:lstm_forward"], tmp_path, capsys)
    assert status == 0 and len(table_rows(lines)) == 2 * len(check.BPTT_GRIDS["lstm"])
    assert "torch.nn.LSTM" in lines[0]
    status, lines = run_check(["--cell", "lstm", "--impl", f"{GATED}:lstm_bptt_dc_without_f"],
                              tmp_path, capsys)
    assert status == 1
    enters = {(r["configuration"], r["error enters"]) for r in table_cells(lines)}
    assert enters == {("1x1x1x1 lstm", "∂L/∂c0"), ("7x3x5x17 lstm", "step 5 (∂L/∂c)"),
                      ("6x4x3x5 lstm", "step 4 (∂L/∂c)"), ("12x11x4x129 lstm", "step 10 (∂L/∂c)")}
    assert any(l.startswith("error enters: step 5: ∂L/∂c_5 differs while δ_6 agrees")
               for l in lines)
    status, lines = run_check(["--cell", "gru", "--impl", f"{GATED}:gru_bptt_no_h_n_in_da_r",
                               "--size", "6x3x4x5", "--reference", "torch"], tmp_path, capsys)
    assert status == 1
    assert [(r["reference"], r["error enters"], r["result"]) for r in table_cells(lines)] == [
        ("torch.nn.GRU", "step 5 (δ)", "FAIL")]


def test_gated_module_class_with_cell(tmp_path, capsys):
    status, lines = run_check(["--cell", "gru", "--impl", f"{GATED}:HandGRUNoZCarry", "--size",
                               "6x3x4x5", "--layers", "2"], tmp_path, capsys)
    assert status == 1
    cells = table_cells(lines)
    assert [c["error enters"] for c in cells] == ["step 4 (∂L/∂h)"] * 2
    assert cells[0]["configuration"] == "6x3x4x5 L2 gru"
    assert any("of layer" in l and l.startswith("error enters: step 4: ∂L/∂h_4") for l in lines)
    status, lines = run_check(["--cell", "lstm", "--impl", f"{GATED}:HandLSTM", "--size",
                               "5x3x4x6", "--size", "2x1x1x2"], tmp_path, capsys)
    assert status == 0 and len(table_rows(lines)) == 4
    status, lines = run_check(["--cell", "lstm", "--proj-size", "2", "--bidirectional",
                               "--packed", "--dtype", "float32"], tmp_path, capsys)
    assert status == 0
    assert [c["configuration"] for c in table_cells(lines)] == ["5x3x4x6 bi packed proj2 lstm"] * 2


def test_exit_status_with_cell(tmp_path):
    for argv, status in (([f"{GATED}:gru_bptt"], 0), ([f"{GATED}:gru_bptt_no_z_carry"], 1)):
        proc = subprocess.run([sys.executable, "-m", "rnnkern", "check", "--cell", "gru",
                               "--impl", *argv, "--size", "3x2x2x3"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == status, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "rnnkern", "check", "--cell", "all", "--impl",
                           f"{GATED}:HandLSTM"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "argument --cell" in proc.stderr


def test_plan_for_each_cell(cell):
    spec = cells.get(cell)
    if spec.projection:
        checks = check.plan(bptt=False, cell=cell, sizes=[(4, 3, 2, 5)], proj_size=2,
                            references=["torch"])
        assert [(c.config.describe(), c.reference) for c in checks] == [
            (f"4x3x2x5 proj2 {cell}", "torch")]
    checks = check.plan(bptt=False, cell=cell, builtin=True)
    assert {c.config.cell for c in checks} == {cell}
    torch_class = {"torch"} if spec.drop_in else set()  # torch's class: the drop-ins only
    assert {c.reference for c in checks} == {"reference", *torch_class, "finite-differences",
                                             "gradcheck"}
    # the four sizes of the bptt grid, against the reference (and torch's class)
    assert [c.config.cell for c in check.plan(bptt=True, cell=cell)] == \
        [cell] * (8 if spec.drop_in else 4)


# ----------------------------------------------------------------------------- README example

# the worked example of docs/checking-gradients.md
SECTION = (ROOT / "docs" / "checking-gradients.md").read_text().split("## Checking gradients")[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCKS = [(m.group(1), m.group(2)) for m in FENCE.finditer(SECTION)]


def _readme_example():
    source = next(code for lang, code in BLOCKS if lang == "python"
                  and code.startswith("# my_bptt.py"))
    command = next(code.strip() for lang, code in BLOCKS if lang == "bash")
    shown = next(code for lang, code in BLOCKS if lang == "text")
    return source, command, shown


def _comparable(text):
    """The output with what depends on the machine and folder left out: torch's version and
    the kernels in the first line, the path written, and rounding-level numbers (< 1e-6)."""
    lines = []
    text = text[text.index("rnnkern check:"):]  # an editable install prints its build first
    for line in text.strip().splitlines():
        if line.startswith("rnnkern check:"):
            line = line.split(";")[0]
        if line.startswith("wrote "):
            line = "wrote " + os.path.basename(line)
        lines.append(re.sub(r"\d\.\de-(0[7-9]|[1-9]\d)", "<tiny>", line))
    return lines


def test_readme_example_runs_as_pasted_and_prints_what_the_readme_shows(tmp_path):
    source, command, shown = _readme_example()
    assert command.startswith("rnnkern check --impl my_bptt.py:bptt")
    (tmp_path / "my_bptt.py").write_text(source)
    argv = [sys.executable, "-m", "rnnkern", *command.split()[1:]]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert _comparable(proc.stdout) == _comparable(shown)
    # the fix the README names makes it agree, exit status 0
    fixed = source.replace("g = delta[t] @ w_hh.T", "g = delta[t] @ w_hh")
    assert fixed != source
    (tmp_path / "my_bptt.py").write_text(fixed)
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "all 2 checks agree" in proc.stdout
    # `python my_bptt.py` runs the same check from Python (and asserts what it finds)
    (tmp_path / "my_bptt.py").write_text(source)
    proc = subprocess.run([sys.executable, "my_bptt.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "error enters: step 4:" in proc.stdout


def test_readme_names_the_step_of_each_bug():
    """What the README says the other bugs report, at the example's size 6x3x4x5."""
    from rnnkern import testing

    sys.path.insert(0, str(IMPLS))
    import bptt as impls

    for name, short in (("bptt_no_dphi", "step 5 (δ)"), ("bptt_one_step_late", "step 4 (δ)")):
        assert f"`{short}`" in SECTION
        report = testing.compare(getattr(impls, name), size=(6, 3, 4, 5))
        assert report.localisation.short() == short
    assert "`after the loop`" in SECTION



def test_the_grids_built_from_the_specs_are_those_written_per_cell_before():
    """The grids come from each cell's spec (nonlinearity → relu rows, projection → proj_size
    rows); for the Elman RNN, the LSTM and the GRU they are exactly the grids that were
    written out per cell, in the same order (so that `rnnkern check` prints the same tables)."""
    from dataclasses import replace

    from rnnkern.cells import NAMES as CELL_NAMES
    from rnnkern.testing import Config

    DEFAULT_GRID = (
        (Config(1, 1, 1, 1), "float64"),
        (Config(7, 3, 5, 17), "float64"),
        (Config(6, 4, 3, 5, nonlinearity="relu"), "float64"),
        (Config(5, 3, 4, 6, num_layers=2, bidirectional=True), "float64"),
        (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True, nonlinearity="relu"),
         "float64"),
        (Config(4, 3, 2, 5, bidirectional=True, bias=False), "float64"),
        (Config(12, 11, 4, 129), "float64"),
        (Config(7, 3, 5, 17), "float32"),
        (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True), "float32"),
    )
    # and against finite differences (an oracle without autograd), and torch.autograd.gradcheck
    FINITE_DIFFERENCES_GRID = ((Config(4, 2, 3, 5, num_layers=2, bidirectional=True, packed=True),
                                "float64"),)
    GRADCHECK_GRID = (Config(3, 2, 2, 3),
                      Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True,
                             nonlinearity="relu"))
    # A NumPy bptt is one layer, one direction, unpacked; tanh unless --nonlinearity says.
    BPTT_GRID = ((Config(1, 1, 1, 1), "float64"), (Config(7, 3, 5, 17), "float64"),
                 (Config(6, 4, 3, 5), "float64"), (Config(12, 11, 4, 129), "float64"))


    def _gated(cell: str, grid):
        return tuple((replace(c, cell=cell), d) for c, d in grid)


    # The LSTM and the GRU: the same kinds of configuration (no relu), the LSTM with proj_size too.
    _GATED_GRID = (
        (Config(1, 1, 1, 1), "float64"),
        (Config(7, 3, 5, 17), "float64"),
        (Config(5, 3, 4, 6, num_layers=2, bidirectional=True), "float64"),
        (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True), "float64"),
        (Config(4, 3, 2, 5, bidirectional=True, bias=False), "float64"),
        (Config(12, 11, 4, 129), "float64"),
        (Config(7, 3, 5, 17), "float32"),
        (Config(9, 5, 3, 7, num_layers=2, bidirectional=True, packed=True), "float32"),
    )
    _PROJ_GRID = (
        (Config(6, 4, 3, 5, proj_size=3), "float64"),
        (Config(7, 3, 4, 6, num_layers=2, bidirectional=True, packed=True, proj_size=2), "float64"),
        (Config(7, 3, 4, 6, num_layers=2, bidirectional=True, packed=True, proj_size=2), "float32"),
    )
    GRIDS = {"rnn": DEFAULT_GRID, "lstm": _gated("lstm", _GATED_GRID + _PROJ_GRID),
             "gru": _gated("gru", _GATED_GRID)}
    FINITE_DIFFERENCES_GRIDS = {
        "rnn": FINITE_DIFFERENCES_GRID,
        "lstm": _gated("lstm", ((Config(3, 2, 2, 3, num_layers=2, bidirectional=True,
                                        packed=True, proj_size=2), "float64"),)),
        "gru": _gated("gru", FINITE_DIFFERENCES_GRID),
    }
    GRADCHECK_GRIDS = {
        "rnn": GRADCHECK_GRID,
        "lstm": (Config(3, 2, 2, 3, cell="lstm"),
                 Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True, cell="lstm",
                        proj_size=2)),
        "gru": (Config(3, 2, 2, 3, cell="gru"),
                Config(3, 2, 2, 3, num_layers=2, bidirectional=True, packed=True, cell="gru")),
    }
    BPTT_GRIDS = {cell: _gated(cell, BPTT_GRID) for cell in CELL_NAMES}
    assert check.DEFAULT_GRID == DEFAULT_GRID and check.BPTT_GRID == BPTT_GRID
    assert check.FINITE_DIFFERENCES_GRID == FINITE_DIFFERENCES_GRID
    assert check.GRADCHECK_GRID == GRADCHECK_GRID
    for cell in ("rnn", "lstm", "gru"):
        assert check.GRIDS[cell] == GRIDS[cell] == check.grid(cell)
        assert check.FINITE_DIFFERENCES_GRIDS[cell] == FINITE_DIFFERENCES_GRIDS[cell]
        assert check.GRADCHECK_GRIDS[cell] == GRADCHECK_GRIDS[cell]
        assert check.BPTT_GRIDS[cell] == BPTT_GRIDS[cell]
