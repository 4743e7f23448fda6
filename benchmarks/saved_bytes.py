"""Bytes that rnnkern.LSTM / GRU and torch.nn.LSTM / GRU keep for backward (saved_tensors_hooks,
one storage counted once), beyond the input and weights. Run: python benchmarks/saved_bytes.py"""
import torch

import rnnkern


def saved_bytes(module, x, h):
    seen = {}
    def pack(t):
        seen[(t.untyped_storage().data_ptr())] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x, h)
    extern = {p.untyped_storage().data_ptr() for p in module.parameters()}
    extern.add(x.untyped_storage().data_ptr())
    if h is not None:
        for t in (h if isinstance(h, tuple) else (h,)):
            extern.add(t.untyped_storage().data_ptr())
    own = sum(v for k, v in seen.items() if k not in extern)
    return sum(seen.values()), own

for (T, B, I, H) in [(100, 16, 32, 64), (100, 64, 256, 512)]:
    for name, ours_cls, theirs_cls in (("LSTM", rnnkern.LSTM, torch.nn.LSTM), ("GRU", rnnkern.GRU, torch.nn.GRU)):
        torch.manual_seed(0)
        theirs = theirs_cls(I, H)
        ours = ours_cls(I, H); ours.load_state_dict(theirs.state_dict())
        x = torch.randn(T, B, I, requires_grad=True)
        a = saved_bytes(theirs, x, None); b = saved_bytes(ours, x, None)
        print(f"{name} T,B,I,H={T},{B},{I},{H}: torch saves {a[1]/2**20:.2f} MiB beyond inputs/weights "
              f"({a[0]/2**20:.2f} all), rnnkern {b[1]/2**20:.2f} MiB ({b[0]/2**20:.2f} all); T*B*H*4 = {T*B*H*4/2**20:.2f} MiB")
