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
from typing import Any, Callable, Dict, Sequence, Tuple

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
        recurrent: the shape of W_hh: ``"dense"``, a matrix (G·H, H) ((G·H, P) with
            ``proj_size``), or ``"diagonal"``, a vector (G·H,) that multiplies h_{t-1} unit
            by unit (the IndRNN's u).
        delta: what δ_t, the gradient of step t's pre-activations, is, in the words of the
            gradient checks' localisation (``{t}`` is the step), e.g.
            ``"δ_{t} = [da_r da_z da_n]_{t}"``.
        error_inside: where inside a step an error in δ_t arises (``{t}``), e.g.
            ``"in a gate's derivative"``.
        hand_offs: per state, in the order of ``states``, what step t sends back to that
            state of step t - 1 (``{t}``), e.g. ``"it is δ_{t} W_hh: W_hh itself, not its
            transpose"``.
        autocast_on_cpu: whether under CPU autocast the torch class returns the autocast
            dtype for float32 input (torch's GRU returns float32 there); the module does
            the same.
        step_torch_class, step_module: torch's one-step cell (``torch.nn:LSTMCell``) and
            rnnkern's drop-in for it (``rnnkern.modules:LSTMCell``), empty where there is
            none: for code that writes its own time loop.

    Derived from these: ``gate_count``, ``state_keys`` (``hx``, ``cx``: the initial states'
    names), ``final_keys`` (``h_n``, ``c_n``), ``bptt_arguments`` (a NumPy bptt's arguments
    before ``grad_y``) and :meth:`parameter_shape`.

    The module (and, for a drop-in, the torch class) is built as ``cls(input_size,
    hidden_size, num_layers=, bias=, bidirectional=, dtype=)``, with ``nonlinearity=`` when
    the cell takes it and ``proj_size=`` when it takes that; it has torch.nn.RNNBase's
    attributes (``num_layers``, ``bidirectional``, ``hidden_size``, ``nonlinearity``,
    ``proj_size``) and parameter names (``weight_ih_l{k}``, ``weight_hh_l{k}``,
    ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}`` with ``proj_size``, ``_reverse``
    for the reverse direction), of the shapes :meth:`parameter_shape` gives. It is called as
    ``module(input, hx) -> (output, h_n)``, with hx a tuple ``(h0, c0, …)`` and the result
    ``(output, (h_n, c_n, …))`` for a cell with several states.

    The reference loop, one layer in one direction, is called as
    ``reference(input, hx, w_ih, w_hh, b_ih, b_hh, *, batch_sizes=, reverse=)``, with
    ``w_hr=`` when the cell has ``projection`` and ``nonlinearity=`` (``"tanh"`` or
    ``"relu"``) when it has ``nonlinearity``: input (T, B, I), or packed rows (N, I) with
    ``batch_sizes``; hx the initial state (B, ·), or a tuple of them in the order of
    ``states`` for a cell with several; biases None without bias. It returns (output,
    final), final like hx: each sequence's state at its own last step. :meth:`reference_layer`
    makes that call.
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
    recurrent: str = "dense"
    delta: str = "δ_{t}"
    error_inside: str = "in the step's derivative"
    hand_offs: Tuple[str, ...] = ()
    autocast_on_cpu: bool = True
    step_torch_class: str = ""
    step_module: str = ""

    def __post_init__(self) -> None:
        if self.recurrent not in ("dense", "diagonal"):
            raise ValueError(f"cell {self.name!r}: recurrent must be 'dense' or 'diagonal', "
                             f"got {self.recurrent!r}")
        if len(self.hand_offs) not in (0, len(self.states)):
            raise ValueError(f"cell {self.name!r}: hand_offs must have one text per state "
                             f"{self.states}, got {len(self.hand_offs)}")

    @property
    def gate_count(self) -> int:
        """Blocks of H rows in W_ih, W_hh and the biases."""
        return len(self.gates)

    @property
    def state_keys(self) -> Tuple[str, ...]:
        """The initial states' names, ``("hx",)`` or the LSTM's ``("hx", "cx")``."""
        return tuple(f"{state}x" for state in self.states)

    @property
    def final_keys(self) -> Tuple[str, ...]:
        """The final states' names, ``("h_n",)`` or the LSTM's ``("h_n", "c_n")``."""
        return tuple(f"{state}_n" for state in self.states)

    @property
    def bptt_arguments(self) -> Tuple[str, ...]:
        """A NumPy bptt's arguments before ``grad_y`` (and its result's keys):
        ``x, h0, [c0,] w_ih, w_hh, b_ih, b_hh``."""
        return ("x", *(f"{state}0" for state in self.states), "w_ih", "w_hh", "b_ih", "b_hh")

    def hand_off(self, index: int) -> str:
        """What step t sends back to state ``states[index]`` of step t - 1 (``{t}``)."""
        if self.hand_offs:
            return self.hand_offs[index]
        return "it is δ_{t} W_hh" if self.recurrent == "dense" else "it is δ_{t} ⊙ W_hh"

    def parameter_shape(self, kind: str, input_size: int, hidden_size: int,
                        proj_size: int = 0) -> Tuple[int, ...]:
        """The shape of one layer-direction's parameter ``kind`` (``weight_ih``,
        ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_hr``), for a layer reading
        ``input_size`` features."""
        rows = self.gate_count * hidden_size
        if kind in ("bias_ih", "bias_hh"):
            return (rows,)
        if kind == "weight_hr":
            return (proj_size, hidden_size)
        if kind == "weight_hh":
            return (rows, proj_size or hidden_size) if self.recurrent == "dense" else (rows,)
        if kind == "weight_ih":
            return (rows, input_size)
        raise ValueError(f"kind must be one of weight_ih, weight_hh, bias_ih, bias_hh, "
                         f"weight_hr, got {kind!r}")

    def reference_layer(self, input: Any, states: Tuple[Any, ...], weights: Sequence[Any],
                        nonlinearity: str = "tanh", batch_sizes: Any = None,
                        reverse: bool = False) -> Tuple[Any, Tuple[Any, ...]]:
        """One layer-direction by the reference loop (imports torch): ``states`` the
        initial states in the order of ``states`` (h0, or (h0, c0)), ``weights`` (w_ih,
        w_hh, b_ih, b_hh) and w_hr for a cell with ``projection`` (None without bias or
        projection). Returns (output, the final states as a tuple)."""
        options: Dict[str, Any] = dict(batch_sizes=batch_sizes, reverse=reverse)
        weights = list(weights)
        if self.projection:
            options["w_hr"] = weights[4] if len(weights) > 4 else None
        if self.nonlinearity:
            options["nonlinearity"] = nonlinearity
        hx = tuple(states) if len(self.states) > 1 else states[0]
        output, final = self.reference_loop()(input, hx, *weights[:4], **options)
        return output, (tuple(final) if len(self.states) > 1 else (final,))

    def torch_type(self) -> type:
        """The torch class (imports torch)."""
        return _resolve(self.torch_class)

    def module_type(self) -> type:
        """rnnkern's module class (imports torch)."""
        return _resolve(self.module)

    def step_types(self) -> Tuple[type, ...]:
        """(torch's one-step cell class, rnnkern's) (imports torch); () without them."""
        if not self.step_module:
            return ()
        return _resolve(self.step_torch_class), _resolve(self.step_module)

    def reference_loop(self) -> Callable[..., Any]:
        """The reference loop of one layer-direction (imports torch)."""
        return _resolve(self.reference)


CELLS: Tuple[Cell, ...] = (
    Cell("rnn", "RNN", ("h",), ("h",), nonlinearity=True, projection=False,
         torch_class="torch.nn:RNN", module="rnnkern.modules:RNN", drop_in=True,
         reference="rnnkern.reference:rnn", backends=("cpu", "cuda"),
         summary="the Elman RNN, h_t = φ(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh)",
         delta="δ_{t}", error_inside="in the φ'(a_{t}) factor",
         hand_offs=("it is δ_{t} W_hh: W_hh itself, not its transpose",),
         step_torch_class="torch.nn:RNNCell", step_module="rnnkern.modules:RNNCell"),
    Cell("lstm", "LSTM", ("i", "f", "g", "o"), ("h", "c"), nonlinearity=False,
         projection=True, torch_class="torch.nn:LSTM", module="rnnkern.modules:LSTM",
         drop_in=True, reference="rnnkern.reference:lstm", backends=("cpu",),
         summary="the LSTM (input, forget, cell and output gates; proj_size)",
         delta="δ_{t} = [da_i da_f da_g da_o]_{t}",
         error_inside="in a gate's derivative, in dc_{t}",
         hand_offs=("it is δ_{t} W_hh, all four gate blocks: W_hh itself, not its transpose",
                    "it is dc_{t} ⊙ f_{t}"),
         step_torch_class="torch.nn:LSTMCell", step_module="rnnkern.modules:LSTMCell"),
    Cell("gru", "GRU", ("r", "z", "n"), ("h",), nonlinearity=False, projection=False,
         torch_class="torch.nn:GRU", module="rnnkern.modules:GRU", drop_in=True,
         reference="rnnkern.reference:gru", backends=("cpu",),
         summary="the GRU (reset, update and new gates)",
         delta="δ_{t} = [da_r da_z da_n]_{t}", error_inside="in a gate's derivative",
         hand_offs=("it is δ_{t} W_hh + ∂L/∂h_{t} ⊙ z_{t}, with the n block of δ_{t} "
                    "times r_{t}",), autocast_on_cpu=False,
         step_torch_class="torch.nn:GRUCell", step_module="rnnkern.modules:GRUCell"),
    Cell("indrnn", "IndRNN", ("h",), ("h",), nonlinearity=True, projection=False,
         torch_class="torch.nn:RNN", module="rnnkern.indrnn:IndRNN", drop_in=False,
         reference="rnnkern.indrnn:reference", backends=("cpu",),
         summary="the IndRNN, h_t = φ(x_t W_ihᵀ + b_ih + u ⊙ h_{t-1} + b_hh), u = W_hh (H,)",
         recurrent="diagonal", delta="δ_{t}", error_inside="in the φ'(a_{t}) factor",
         hand_offs=("it is δ_{t} ⊙ u, u = W_hh the vector",)),
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
