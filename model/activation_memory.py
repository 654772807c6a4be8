"""How much memory the model's activations take in training: an analytic estimate and a measurement.

Estimate: the tensors autograd keeps for the backward pass, per layer, counted from the backbone's shapes
(P = (lmax+1)² node coefficients, K = edge-frame coefficients with |m| ≤ mmax, C channels, A attention
channels, F feed-forward channels, G = S² grid points, R radial channels):

    per edge:  2PC (gathered pair, kept by the rotation into the edge frame)
             + 4KC (pair in the edge frame, reordered and radially scaled, kept by the SO(2) convolution)
             + 5KA (message, gated message, values, weighted values, values kept by the rotation back)
             + PA  (values back in the global frame)  + 6R (radial MLP)
    per atom:  7PC (two norms, residual, projections) + 2PF (feed-forward up/down) + GF (S² grid values,
             all that ``model.lean_silu`` keeps) + PA (attention output projection)

With activation checkpointing (``BackboneConfig.activation_checkpointing``) a layer keeps only its input
(PC per atom) until the backward pass recomputes it, so the peak is every layer's input plus one layer's
saved tensors (``checkpointed_bytes``, an upper bound: the recomputed layer's tensors are freed as its
backward goes). For a conservative-force loss the layer's first backward is checkpointed too
(``model.checkpointing``): the second backward recomputes one layer's forward and first backward at a time.

Measurement: the bytes of every distinct tensor autograd saves during a forward pass
(``torch.autograd.graph.saved_tensors_hooks``), which is what a backward pass must keep alive; it is the
same on any device. :func:`account_saved_tensors` itemises them: for each saved tensor the module that
was running (forward pre- and post-hooks keep a stack of qualified names), the op that saved it, its
shape with the edge and atom dimensions named ``E`` and ``N``, and whether the forward pass saved it or the
first backward pass of conservative forces did (``create_graph=True``: kept for the second backward),
attributed there to the module whose forward op the backward node belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from model.activation import default_s2_resolution
from model.backbone import BackboneConfig
from model.so3 import CoefficientLayout, num_coefficients


@dataclass
class ActivationEstimate:
    """Estimated saved activations (bytes) for ``num_atoms`` atoms with ``edges_per_atom`` neighbours."""

    num_atoms: int
    edges_per_atom: float
    bytes_per_value: int
    per_atom_values: int
    per_edge_values: int
    num_layers: int = 1
    layer_input_values: int = 0  # per atom and layer: what activation checkpointing keeps (P × C)

    @property
    def total_bytes(self) -> float:
        values = self.num_atoms * (self.per_atom_values + self.edges_per_atom * self.per_edge_values)
        return values * self.bytes_per_value

    @property
    def checkpointed_bytes(self) -> float:
        """With activation checkpointing: every layer's input, plus one layer's tensors while it is recomputed."""
        inputs = self.num_atoms * self.num_layers * self.layer_input_values * self.bytes_per_value
        return inputs + self.total_bytes / self.num_layers


def estimate_activation_memory(
    cfg: BackboneConfig, num_atoms: int = 1000, edges_per_atom: float = 50.0, bytes_per_value: int = 4
) -> ActivationEstimate:
    """Analytic estimate (see the module docstring); ``bytes_per_value`` 4 for fp32, 2 for bf16."""
    p = num_coefficients(cfg.lmax)
    k = CoefficientLayout(cfg.lmax, cfg.mmax).size
    c, a, f, r = cfg.channels, cfg.attn_channels, cfg.ffn_channels, cfg.radial_channels
    resolution = cfg.s2_resolution or default_s2_resolution(cfg.lmax)
    grid = resolution * 2 * resolution if cfg.activation == "s2" else 0
    per_edge = cfg.num_layers * (2 * p * c + 4 * k * c + 5 * k * a + p * a + 6 * r)
    per_atom = cfg.num_layers * (7 * p * c + 2 * p * f + grid * f + p * a)
    return ActivationEstimate(
        num_atoms, edges_per_atom, bytes_per_value, per_atom, per_edge, cfg.num_layers, p * c
    )


def measure_saved_activations(model: torch.nn.Module, run: Callable[[], Any]) -> int:
    """Bytes of the distinct tensors autograd holds for backward passes when ``run()`` returns, the
    model's own parameters and buffers left out. ``run`` must return what holds the graph (its outputs)."""
    return account_saved_tensors(model, run).total_bytes


@dataclass(frozen=True)
class SavedTensor:
    """One distinct tensor autograd saved: where (module, op), what (shape, dtype), its storage's bytes."""

    phase: str  # "forward", or "backward": saved by a create_graph backward for the next one
    module: str  # qualified module name, layer indices as "*" ("backbone.blocks.*.attention.message")
    op: str  # the torch function (forward) or the backward node (backward) that saved it
    shape: str  # e.g. "E x 9 x 128": E = edges, N = atoms of the batch
    dtype: str
    nbytes: int


_NODE_MODULE = "atomfm_module"  # key of Node.metadata naming the module whose forward made the node


class _OwnerOfNodes(TorchFunctionMode):
    """Labels every autograd node that a torch function creates with the module running at the time."""

    def __init__(self, stack: list[str], state: dict[str, Any]) -> None:
        super().__init__()
        self.stack, self.state = stack, state

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.state["op"] = getattr(func, "__name__", str(func))
        out = func(*args, **(kwargs or {}))
        owner = self.stack[-1] if self.stack else ""
        pending = [t.grad_fn for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.grad_fn]
        while pending:
            node = pending.pop()
            if node is None or _NODE_MODULE in node.metadata:
                continue
            node.metadata[_NODE_MODULE] = owner
            pending.extend(next_node for next_node, _ in node.next_functions)
        return out


@dataclass
class SavedTensorAccount:
    """What autograd held during ``run()``: the tensors still held when it returned, and the peak."""

    tensors: list[SavedTensor]  # held when run() returned, in the order saved
    peak_bytes: int  # the most bytes held at once while run() executed (recomputed layers included)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Held:
    """A saved tensor as autograd keeps it (the pack hook's result): the account's count of the tensor's
    storage drops when autograd lets go of it."""

    __slots__ = ("tensor", "key", "release")

    def __init__(self, tensor: torch.Tensor, key: int, release: Callable[[int], None]) -> None:
        self.tensor, self.key, self.release = tensor, key, release

    def __del__(self) -> None:
        self.release(self.key)


def account_saved_tensors(
    model: torch.nn.Module, run: Callable[[], Any], dims: dict[str, int] | None = None
) -> SavedTensorAccount:
    """The distinct tensors (by storage) that autograd holds for backward passes while ``run()`` executes,
    the model's parameters and buffers left out. ``dims``: sizes to name in shapes, e.g. ``{"E": 2880}``.

    ``run`` returning its outputs (what holds the graph) gives what a backward pass must keep; ``run``
    doing a whole training step (forward and backward) gives, in ``peak_bytes``, the most held at once,
    the layers that activation checkpointing recomputes included."""
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    names = {id(module): name for name, module in model.named_modules()}
    stack: list[str] = []
    state = {"op": "", "held": 0, "peak": 0}
    live: dict[int, list] = {}  # storage -> [SavedTensor, number of autograd's references]
    by_size = {size: label for label, size in (dims or {}).items()}

    def push(module: torch.nn.Module, _args: Any) -> None:
        stack.append(re.sub(r"\.\d+(?=\.|$)", ".*", names[id(module)]))

    def pop(_module: torch.nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()

    def release(key: int) -> None:
        entry = live[key]
        entry[1] -= 1
        if not entry[1]:
            state["held"] -= entry[0].nbytes
            del live[key]

    def pack(t: torch.Tensor) -> torch.Tensor | _Held:
        op = str(state["op"])  # the op saving t; the calls below pass through _OwnerOfNodes too
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in weights:
            return t
        if key not in live:
            node = torch._C._current_autograd_node()
            if node is None:
                phase, module = "forward", stack[-1] if stack else ""
            else:
                phase, module, op = "backward", node.metadata.get(_NODE_MODULE, "?"), node.name()
            shape = " x ".join(by_size.get(n, str(n)) for n in t.shape) or "scalar"
            dtype = str(t.dtype).removeprefix("torch.")
            live[key] = [SavedTensor(phase, module, op, shape, dtype, storage.nbytes()), 0]
            state["held"] += storage.nbytes()
            state["peak"] = max(state["peak"], state["held"])
        live[key][1] += 1
        state["op"] = op
        return _Held(t, key, release)

    def unpack(held: torch.Tensor | _Held) -> torch.Tensor:
        return held.tensor if isinstance(held, _Held) else held

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop, always_call=True))
    try:
        with (
            torch.enable_grad(),
            torch.autograd.graph.saved_tensors_hooks(pack, unpack),
            _OwnerOfNodes(stack, state),
        ):
            outputs = run()
        account = SavedTensorAccount([entry[0] for entry in live.values()], int(state["peak"]))
        del outputs
    finally:
        for handle in handles:
            handle.remove()
    return account


def summarise_saved_tensors(saved: list[SavedTensor], scale: float = 1.0) -> list[dict[str, Any]]:
    """Saved tensors grouped by (phase, module, op, shape, dtype), largest first: count and bytes x scale."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for t in saved:
        entry = groups.setdefault((t.phase, t.module, t.op, t.shape, t.dtype), [0, 0])
        entry[0] += 1
        entry[1] += t.nbytes
    rows = [
        dict(zip(("phase", "module", "op", "shape", "dtype"), key, strict=True), count=n, bytes=b * scale)
        for key, (n, b) in groups.items()
    ]
    return sorted(rows, key=lambda row: -row["bytes"])
