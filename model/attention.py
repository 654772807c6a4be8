"""Equivariant graph attention: SO(2)-convolution messages in each edge's frame, attention from invariants."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.activation import GateActivation
from model.checkpointing import checkpoint_layer
from model.lean_silu import LeanSiLU, lean_silu
from model.parity import pseudo_mask
from model.so2_conv import SO2Convolution
from model.so3 import CoefficientLayout, rotate_from_edge_frame, rotate_to_edge_frame
from model.so3_linear import SO3Linear

# Attention logits are soft-capped to (-LOGIT_CAP, LOGIT_CAP) so exp() of them stays finite in float32.
LOGIT_CAP = 30.0


@dataclass
class EdgeGeometry:
    """Per-edge quantities shared by every layer.

    rotation: [E, K, (lmax+1)**2] rotations into each edge's frame (edge along +z), rows in the order-major
    edge layout of mmax (:func:`~model.so3.edge_frame_rotation`).
    radial_basis: [E, num_rbf] basis expansion of the edge length.   envelope: [E], 1 -> 0 at the cutoff.
    """

    rotation: Tensor
    radial_basis: Tensor
    envelope: Tensor


def smooth_attention_weights(logits: Tensor, envelope: Tensor, target: Tensor, num_nodes: int) -> Tensor:
    """Softmax of logits [E, H] over the edges into each target node, with each edge's exp weight multiplied
    by its envelope [E] and a null edge of logit 0 and envelope 1 in every denominator.

    The null edge keeps the weight of a lone edge going to 0 with its envelope at the cutoff, which a plain
    softmax would renormalise back to 1; so an atom crossing the cutoff changes the output smoothly.
    Computed in at least float32. Returns [E, H], each node's weights summing to less than 1.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    capped = LOGIT_CAP * torch.tanh(logits.to(dtype) / LOGIT_CAP)
    weights = envelope.to(dtype).unsqueeze(-1) * torch.exp(capped)
    total = torch.zeros(num_nodes, logits.shape[1], dtype=dtype, device=logits.device).index_add(
        0, target, weights
    )
    return weights / (1 + total.index_select(0, target))


def gather_edge_pairs(x: Tensor, edge_index: Tensor) -> Tensor:
    """Node features x [N, P, C] -> [E, P, 2C]: for each edge, every coefficient's source channels then its
    target channels. One index_select of (node, coefficient) rows, cheaper forward and backward than
    gathering each end and concatenating."""
    num_nodes, num_coefficients, channels = x.shape
    coefficient = torch.arange(num_coefficients, device=x.device).unsqueeze(-1)
    rows = edge_index.T.unsqueeze(1) * num_coefficients + coefficient  # [E, P, 2 (source, target)]
    pairs = x.reshape(num_nodes * num_coefficients, channels).index_select(0, rows.flatten())
    return pairs.view(edge_index.shape[1], num_coefficients, 2 * channels)


class EquivariantGraphAttention(nn.Module):
    """Multi-head attention over each atom's incoming edges (EquiformerV2 / eSCN family).

    For edge j -> i: the features of j and i, side by side, are rotated into the edge's frame (orders
    |m| > mmax dropped); a radially modulated SO(2) convolution gives the message and invariant scalars;
    the scalars give one attention logit per head, the message passes a gate and a second SO(2)
    convolution into per-head values; the weighted values are rotated back and summed on i.

    x [N, (lmax+1)**2, channels] -> [N, (lmax+1)**2, channels].
    """

    def __init__(
        self,
        *,
        lmax: int,
        mmax: int,
        channels: int,
        attn_channels: int,
        num_heads: int,
        num_rbf: int,
        radial_channels: int,
        pseudo_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if attn_channels % num_heads:
            raise ValueError(f"attn_channels={attn_channels} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_channels = attn_channels // num_heads
        edge_layout = CoefficientLayout(lmax, mmax, order_major=True)
        self.radial_mlp = nn.Sequential(
            nn.Linear(num_rbf, radial_channels),
            nn.LayerNorm(radial_channels),
            LeanSiLU(),
            nn.Linear(radial_channels, radial_channels),
            nn.LayerNorm(radial_channels),
            LeanSiLU(),
        )
        self.num_gates = GateActivation.num_scalars(lmax, attn_channels)
        node, attn = pseudo_mask(channels, pseudo_fraction), pseudo_mask(attn_channels, pseudo_fraction)
        self.message = SO2Convolution(
            edge_layout,
            2 * channels,
            attn_channels,
            extra_scalars=attn_channels + self.num_gates,
            radial_channels=radial_channels,
            in_pseudo=torch.cat([node, node]),  # source then target channels (gather_edge_pairs)
            out_pseudo=attn,
        )
        self.logit_norm = nn.LayerNorm(self.head_channels)
        self.logit_weight = nn.Parameter(torch.randn(num_heads, self.head_channels) / self.head_channels**0.5)
        self.gate = GateActivation(edge_layout, attn_channels, attn)
        self.value = SO2Convolution(
            edge_layout, attn_channels, attn_channels, in_pseudo=attn, out_pseudo=attn
        )
        self.output = SO3Linear(lmax, attn_channels, channels, in_pseudo=attn, out_pseudo=node)

    def forward(
        self, x: Tensor, edge_index: Tensor, geometry: EdgeGeometry, edge_chunk: int | None = None
    ) -> Tensor:
        """``edge_chunk``: compute the per-edge messages in chunks of this many edges, each checkpointed
        (``model.checkpointing``: kept for the backward passes are its inputs only), so that no whole-layer
        per-edge tensor but the values and logits is held; None: all edges at once."""
        target = edge_index[1]
        if edge_chunk is None or edge_index.shape[1] <= edge_chunk:
            values, logits = self._edge_messages(x, edge_index, geometry.rotation, geometry.radial_basis)
        else:
            values, logits = self._chunked_edge_messages(x, edge_index, geometry, edge_chunk)
        weights = smooth_attention_weights(logits, geometry.envelope, target, x.shape[0])
        values = values.unflatten(-1, (self.num_heads, self.head_channels)) * weights[:, None, :, None].to(
            values.dtype
        )
        values = rotate_from_edge_frame(values.flatten(-2), geometry.rotation)
        aggregated = x.new_zeros(x.shape[0], x.shape[1], values.shape[-1]).index_add(
            0, target, values.to(x.dtype)
        )
        return self.output(aggregated)

    def _edge_messages(
        self, x: Tensor, edge_index: Tensor, rotation: Tensor, radial_basis: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per edge, independently of the others: values [E, K, attn_channels] in the edge frame and
        attention logits [E, num_heads]."""
        num_edges = edge_index.shape[1]
        pair = rotate_to_edge_frame(gather_edge_pairs(x, edge_index), rotation)
        message, scalars = self.message(pair, self.radial_mlp(radial_basis.to(pair.dtype)))
        logit_features, gates = scalars.split([self.num_heads * self.head_channels, self.num_gates], dim=-1)
        logit_features = logit_features.reshape(num_edges, self.num_heads, self.head_channels)
        logits = (lean_silu(self.logit_norm(logit_features)) * self.logit_weight).sum(-1)
        values, _ = self.value(self.gate(message, gates))
        return values, logits

    def _packed_edge_messages(
        self, x: Tensor, edge_index: Tensor, rotation: Tensor, radial_basis: Tensor
    ) -> Tensor:
        values, logits = self._edge_messages(x, edge_index, rotation, radial_basis)
        return torch.cat([values.flatten(1), logits.to(values.dtype)], dim=1)

    def _chunked_edge_messages(
        self, x: Tensor, edge_index: Tensor, geometry: EdgeGeometry, edge_chunk: int
    ) -> tuple[Tensor, Tensor]:
        """:meth:`_edge_messages` in checkpointed chunks of edges (split, not sliced: one backward cat)."""
        params = list(self.parameters())
        chunks = zip(
            edge_index.split(edge_chunk, dim=1),
            geometry.rotation.split(edge_chunk),
            geometry.radial_basis.split(edge_chunk),
            strict=True,
        )
        packed = torch.cat(
            [checkpoint_layer(self._packed_edge_messages, params, x, *chunk) for chunk in chunks]
        )
        values, logits = packed.split([packed.shape[1] - self.num_heads, self.num_heads], dim=1)
        return values.view(packed.shape[0], -1, self.num_heads * self.head_channels), logits
