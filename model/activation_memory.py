"""How much memory the model's activations take in training: an analytic estimate and a measurement.

Estimate: the tensors autograd keeps for the backward pass, per layer, counted from the backbone's shapes
(P = (lmax+1)² node coefficients, K = edge-frame coefficients with |m| ≤ mmax, C channels, A attention
channels, F feed-forward channels, G = S² grid points, R radial channels):

    per edge:  2PC (gathered pair, kept by the rotation into the edge frame)
             + 4KC (pair in the edge frame, reordered and radially scaled, kept by the SO(2) convolution)
             + 5KA (message, gated message, values, weighted values, values kept by the rotation back)
             + PA  (values back in the global frame)  + 6R (radial MLP)
    per atom:  7PC (two norms, residual, projections) + 2PF (feed-forward up/down) + 2GF (S² grid values
             and their activation) + PA (attention output projection)

With activation checkpointing (``BackboneConfig.activation_checkpointing``) a layer keeps only its input
(PC per atom) until the backward pass recomputes it, so the peak is every layer's input plus one layer's
saved tensors (``checkpointed_bytes``, an upper bound: the recomputed layer's tensors are freed as its
backward goes). A conservative-force loss keeps the recomputed graph for the second backward, so
checkpointing saves little there.

Measurement: the bytes of every distinct tensor autograd saves during a forward pass
(``torch.autograd.graph.saved_tensors_hooks``), which is what a backward pass must keep alive; it is the
same on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

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
    per_atom = cfg.num_layers * (7 * p * c + 2 * p * f + 2 * grid * f + p * a)
    return ActivationEstimate(
        num_atoms, edges_per_atom, bytes_per_value, per_atom, per_edge, cfg.num_layers, p * c
    )


def measure_saved_activations(model: torch.nn.Module, run: Callable[[], Any]) -> int:
    """Bytes of the distinct tensors autograd saves while ``run()`` executes, the model's own parameters
    and buffers left out. ``run`` must return what holds the graph (its outputs), so that no saved tensor
    is freed, and its memory reused, before the count is done."""
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = run()
    total = sum(seen.values())
    del outputs
    return total
