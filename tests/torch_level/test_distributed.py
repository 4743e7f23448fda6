"""DistributedDataParallel (gloo, 2 processes) gives the single-process gradients."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest

import ddp_worker
from conftest import assert_f64_close


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_processes_match_single_process(tmp_path):
    world_size = 2
    mp.spawn(ddp_worker.worker, args=(world_size, str(tmp_path / "init"), str(tmp_path)),
             nprocs=world_size, join=True)

    model, x = ddp_worker.make_model_and_data()
    ddp_worker.loss_fn(model, x).backward()
    expected = {n: p.grad for n, p in model.named_parameters()}
    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for name in expected:
            assert_f64_close(got[name], expected[name], f"rank {rank} grad {name}")
