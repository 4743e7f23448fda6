"""rnnkern: fast, exact backpropagation through time for the Elman RNN.

``rnnkern.forward`` / ``rnnkern.backward`` work on NumPy arrays. The torch parts load on first
use: ``rnnkern.functional`` (custom ops) and ``rnnkern.reference`` (the autograd oracle).
"""

from importlib import import_module

from . import _core
from .numpy_api import Gradients, backward, forward

__version__ = "0.1.0"
__all__ = ["Gradients", "forward", "backward", "functional", "reference", "isa"]

_TORCH_MODULES = ("functional", "reference")


def isa() -> str:
    """Instruction set of the recurrent kernels in use: "avx512", "avx2" or "generic"."""
    return _core.isa()


def __getattr__(name):
    if name in _TORCH_MODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rnnkern' has no attribute {name!r}")
