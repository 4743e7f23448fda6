"""One rank of the DistributedDataParallel test (run by test_distributed.py)."""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import rnnkern


def make_model_and_data():
    torch.manual_seed(0)
    model = rnnkern.RNN(4, 6, num_layers=2, bidirectional=True, dropout=0.0,
                        dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 6, 4, dtype=torch.float64, generator=g)
    return model, x


def loss_fn(model, x):
    out, h_n = model(x)
    return out.square().mean() + h_n.mean()


def worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        model, x = make_model_and_data()
        ddp = DistributedDataParallel(model)
        per_rank = x.shape[1] // world_size
        loss = loss_fn(ddp, x[:, rank * per_rank:(rank + 1) * per_rank])
        loss.backward()
        torch.save({n: p.grad for n, p in model.named_parameters()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
