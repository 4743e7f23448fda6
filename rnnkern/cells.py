"""The registry of cells: what each recurrent cell rnnkern runs *is*, written once.

Every part of rnnkern that has to know the cells (the functional and NumPy levels, the
drop-in modules, the gradient checks, the commands) reads this module. A cell's math lives in
its C++ policy header (csrc/core/cells/); its identity lives here. The specs name their
classes and functions as ``"module:attribute"`` strings, resolved on first use, so importing
the registry imports neither torch nor the rest of rnnkern.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable, Dict, Tuple

__all__ = ["Cell", "CELLS", "NAMES", "get"]


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(import_module(module), attribute)


@dataclass(frozen=True)
class Cell:
    """One recurrent cell.

    Attributes:
        name: the cell's name in every API and on the command line (``cell="lstm"``).
        title: the class name, ``rnnkern.<title>`` (and ``torch.nn.<title>`` for a drop-in).
        gates: the names of the blocks of H rows of W_ih, W_hh and the biases, in torch's
            order (the Elman cell has one block, named ``h``).
        states: the recurrent states, ``("h",)`` or the LSTM's ``("h", "c")``.
        nonlinearity: whether the cell takes ``nonlinearity`` (tanh or relu).
        projection: whether the cell takes ``proj_size`` (the LSTM).
        torch_class: the torch class whose constructor and forward the module has, and which
            the benchmark times it against.
        module: rnnkern's module class.
        drop_in: whether the module replaces ``torch_class`` (rnnkern.convert swaps it).
        reference: the autograd loop of :mod:`rnnkern.reference` for one layer-direction.
        backends: the devices whose kernels run it (elsewhere torch's own computation runs).
        summary: one line for help texts.
    """

    name: str
    title: str
    gates: Tuple[str, ...]
    states: Tuple[str, ...]
    nonlinearity: bool
    projection: bool
    torch_class: str
    module: str
    drop_in: bool
    reference: str
    backends: Tuple[str, ...]
    summary: str

    @property
    def gate_count(self) -> int:
        """Blocks of H rows in W_ih, W_hh and the biases."""
        return len(self.gates)

    def torch_type(self) -> type:
        """The torch class (imports torch)."""
        return _resolve(self.torch_class)

    def module_type(self) -> type:
        """rnnkern's module class (imports torch)."""
        return _resolve(self.module)

    def reference_loop(self) -> Callable[..., Any]:
        """The reference loop of one layer-direction (imports torch)."""
        return _resolve(self.reference)


CELLS: Tuple[Cell, ...] = (
    Cell("rnn", "RNN", ("h",), ("h",), nonlinearity=True, projection=False,
         torch_class="torch.nn:RNN", module="rnnkern.modules:RNN", drop_in=True,
         reference="rnnkern.reference:rnn", backends=("cpu", "cuda"),
         summary="the Elman RNN, h_t = φ(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)"),
    Cell("lstm", "LSTM", ("i", "f", "g", "o"), ("h", "c"), nonlinearity=False,
         projection=True, torch_class="torch.nn:LSTM", module="rnnkern.modules:LSTM",
         drop_in=True, reference="rnnkern.reference:lstm", backends=("cpu",),
         summary="the LSTM (input, forget, cell and output gates; proj_size)"),
    Cell("gru", "GRU", ("r", "z", "n"), ("h",), nonlinearity=False, projection=False,
         torch_class="torch.nn:GRU", module="rnnkern.modules:GRU", drop_in=True,
         reference="rnnkern.reference:gru", backends=("cpu",),
         summary="the GRU (reset, update and new gates)"),
)

NAMES: Tuple[str, ...] = tuple(cell.name for cell in CELLS)
_BY_NAME: Dict[str, Cell] = {cell.name: cell for cell in CELLS}


def get(name: str) -> Cell:
    """The cell called ``name``, or a ValueError listing the cells."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"cell must be one of {', '.join(map(repr, NAMES))}, got {name!r}") \
            from None
