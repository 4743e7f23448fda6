"""DistributedDataParallel (gloo, 2 processes) over rnnkern's modules gives the single-process
gradients: for each drop-in cell, and for an LSTM feeding a GRU (the worker: ddp_worker.py)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ddp_worker
from conftest import assert_f64_close

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def check_ddp_matches_single_process(tmp_path, chain):
    world_size = 2
    mp.spawn(ddp_worker.worker, args=(world_size, str(tmp_path / "init"), str(tmp_path), chain),
             nprocs=world_size, join=True)
    model, x = ddp_worker.make_model_and_data(chain)
    model(x).backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for name in expected:
            assert_f64_close(got[name], expected[name], f"rank {rank} grad {name}")


@pytest.mark.cells(drop_in=True)
def test_ddp_two_processes_match_single_process(tmp_path, cell):
    check_ddp_matches_single_process(tmp_path, cell)


def test_ddp_two_processes_lstm_feeding_a_gru(tmp_path):
    check_ddp_matches_single_process(tmp_path, "lstm+gru")
