"""rnnkern: fast, exact backpropagation through time for the Elman RNN.

``rnnkern.forward`` / ``rnnkern.backward`` work on NumPy arrays. The torch parts load on first
use: ``rnnkern.RNN`` (the torch.nn.RNN drop-in), ``rnnkern.functional`` (custom ops),
``rnnkern.reference`` (the autograd oracle) and ``rnnkern.diagnostics`` (gradient flow).
"""

import sys
from importlib import import_module

from . import _core
from .numpy_api import Gradients, backward, forward

__version__ = "0.1.0"
__all__ = ["RNN", "convert", "revert", "Gradients", "forward", "backward", "functional",
           "reference", "diagnostics", "isa", "empty_cache"]

_TORCH_MODULES = ("functional", "reference", "modules", "diagnostics")


def isa() -> str:
    """Instruction set of the recurrent kernels in use: "avx512", "avx2" or "generic"."""
    return _core.isa()


def empty_cache() -> int:
    """Frees the large output buffers that rnnkern keeps for reuse; returns the bytes freed.

    Outputs of 64 KiB and more come from a cache of blocks (at most 512 MiB of freed ones),
    so a training loop gets the same memory back at every step instead of page-faulting fresh
    memory in. Like ``torch.cuda.empty_cache``, this gives the freed blocks back to the system.
    """
    return _core.empty_cache()


def __getattr__(name):
    if name in ("RNN", "convert", "revert"):
        return getattr(import_module(".modules", __name__), name)
    if name in _TORCH_MODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rnnkern' has no attribute {name!r}")


# torch.load(weights_only=True) accepts rnnkern.RNN once rnnkern.modules has registered it:
# now if torch is loaded, else as soon as it is (the torch parts load lazily).
if "torch" in sys.modules:
    import_module(".modules", __name__)
else:
    from ._after_torch import call_after_torch_import

    call_after_torch_import(lambda: import_module(".modules", __name__))
