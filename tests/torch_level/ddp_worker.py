"""One rank of the DistributedDataParallel tests (run by test_distributed.py), for a model of the
cells it is given: a cell's name ("rnn", "lstm", ...) or a chain of them ("lstm+gru": an LSTM
whose output feeds a GRU)."""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rnnkern import cells


class Model(torch.nn.Module):
    """The chain's first module has 2 bidirectional layers of 6 units over 4 features, each next
    one a layer of 5 units; the loss is the mean square of the last output plus the mean of
    every final state."""

    def __init__(self, chain):
        super().__init__()
        modules, width = [], None
        for name in chain.split("+"):
            cls = cells.get(name).module_type()
            if width is None:
                modules.append(cls(4, 6, num_layers=2, bidirectional=True, dtype=torch.float64))
                width = 12
            else:
                modules.append(cls(width, 5, dtype=torch.float64))
                width = 5
        self.chain = torch.nn.ModuleList(modules)

    def forward(self, x):
        finals = []
        for module in self.chain:
            x, hidden = module(x)
            finals += list(hidden) if isinstance(hidden, tuple) else [hidden]
        loss = x.square().mean()
        for state in finals:
            loss = loss + state.mean()
        return loss


def make_model_and_data(chain):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return Model(chain), torch.randn(7, 6, 4, dtype=torch.float64, generator=g)


def worker(rank, world_size, init_file, out_dir, chain):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        model, x = make_model_and_data(chain)
        ddp = DistributedDataParallel(model)
        per_rank = x.shape[1] // world_size
        ddp(x[:, rank * per_rank:(rank + 1) * per_rank]).backward()
        torch.save({n: p.grad for n, p in model.named_parameters()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # The results are saved. Leave without the interpreter's teardown, in which torch 2.13's
    # gloo aborts now and then ("terminate called without an active exception", SIGABRT; seen
    # on a Zen 4 EPYC in 1 to 3 runs of 30 with torch.nn.LSTM alone, rnnkern not imported).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
