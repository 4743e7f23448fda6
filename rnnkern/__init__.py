"""rnnkern: fast, exact backpropagation through time for recurrent layers: the Elman RNN, the
LSTM and the GRU (the cells of ``rnnkern.cells``).

``rnnkern.forward`` / ``rnnkern.backward`` work on NumPy arrays. The torch parts load on first
use: ``rnnkern.RNN``, ``LSTM``, ``GRU`` (drop-ins for torch.nn's), ``rnnkern.functional`` (custom ops),
``rnnkern.reference`` (the autograd oracle), ``rnnkern.diagnostics`` (gradient flow) and
``rnnkern.testing`` (gradient checks for any RNN implementation against an oracle).
"""

import os as _os
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _unbuilt_source_tree(error: ImportError) -> bool:
    """True when ``_core`` was not found because this is the unbuilt ``rnnkern/`` folder of a
    source checkout (a clone's root on sys.path shadows the installed package)."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    in_checkout = all(_os.path.exists(_os.path.join(root, name))
                      for name in ("pyproject.toml", "CMakeLists.txt", "csrc"))
    not_found = isinstance(error, ModuleNotFoundError) or "cannot import name '_core'" in str(error)
    built_here = any(name.startswith("_core.") for name in _os.listdir(here))
    return in_checkout and not_found and not built_here


try:
    from . import _core
except ImportError as _error:
    if not _unbuilt_source_tree(_error):
        raise
    raise ImportError(
        "rnnkern's compiled part (rnnkern._core) is missing: Python imported the 'rnnkern' "
        f"folder of a source checkout ({_os.path.dirname(_os.path.abspath(__file__))}), which "
        "is not built, instead of an installed rnnkern. This happens when Python runs in the "
        "checkout's root, whose folder comes first on sys.path. Install rnnkern "
        "(pip install .) and run Python from another directory, or, to work on rnnkern, use "
        "an editable install, which builds the extension: pip install --no-build-isolation "
        "-Ceditable.rebuild=true -Cbuild-dir=build/editable -e . (see README, Developing)."
    ) from _error

from .numpy_api import Gradients, backward, forward  # noqa: E402

from . import cells  # noqa: E402

# Each cell's module class (rnnkern.RNN, LSTM, GRU, …), named by the registry.
_MODULE_CLASSES = {cell.title: cell for cell in cells.CELLS}
# And the one-step cells' (rnnkern.RNNCell, LSTMCell, GRUCell) where a cell has one.
_STEP_CLASSES = {cell.step_module.rpartition(":")[2]: cell for cell in cells.CELLS
                 if cell.step_module}
__all__ = [*_MODULE_CLASSES, *_STEP_CLASSES, "convert", "revert", "Gradients", "forward",
           "backward", "cells",
           "functional", "reference", "diagnostics", "testing", "isa", "empty_cache",
           "cuda_available"]
# The gated cells' NumPy-level functions.
__all__ += ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]
from .numpy_api import gru_backward, gru_forward, lstm_backward, lstm_forward  # noqa: E402

_TORCH_MODULES = ("functional", "reference", "modules", "diagnostics", "testing")


def isa() -> str:
    """Instruction set of the recurrent kernels in use: "avx512", "avx2" or "generic"."""
    return _core.isa()


def cuda_available() -> bool:
    """Whether rnnkern runs CUDA tensors here: its CUDA module (rnnkern._cuda, built when nvcc
    was found at install time) loads and a GPU is visible. CPU tensors work either way."""
    try:
        from . import _cuda
    except ImportError:
        return False
    return _cuda.device_count() > 0


def empty_cache() -> int:
    """Frees the large output buffers that rnnkern keeps for reuse; returns the bytes freed.

    Outputs of 64 KiB and more and the kernels' workspaces come from a cache of blocks (no
    more than recent demand), so a training loop gets the same memory back at every step
    instead of page-faulting fresh memory in. Like ``torch.cuda.empty_cache``, this gives every
    cached block back to the system.
    """
    return _core.empty_cache()


if TYPE_CHECKING:  # what __getattr__ loads on first use, for mypy and pyright
    from . import diagnostics, functional, reference, testing
    from .indrnn import IndRNN
    from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert, revert


def __getattr__(name: str) -> Any:
    if name in _MODULE_CLASSES:
        return _MODULE_CLASSES[name].module_type()
    if name in _STEP_CLASSES:
        return _STEP_CLASSES[name].step_types()[1]
    if name in ("convert", "revert"):
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
