"""One rank of the LSTM / GRU DistributedDataParallel test (run by test_gated_distributed.py)."""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import rnnkern


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnkern.LSTM(4, 6, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.gru = rnnkern.GRU(12, 5, dtype=torch.float64)

    def forward(self, x):
        out, (h_n, c_n) = self.lstm(x)
        out, g_n = self.gru(out)
        return out.square().mean() + h_n.mean() + c_n.mean() + g_n.mean()


def make_model_and_data():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return Model(), torch.randn(7, 6, 4, dtype=torch.float64, generator=g)


def worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        model, x = make_model_and_data()
        ddp = DistributedDataParallel(model)
        per_rank = x.shape[1] // world_size
        ddp(x[:, rank * per_rank:(rank + 1) * per_rank]).backward()
        torch.save({n: p.grad for n, p in model.named_parameters()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
