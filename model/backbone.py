"""The equivariant backbone: a pre-norm transformer over SO(3) features of atoms (EquiformerV2 / eSEN family).

Features are irreps of degrees 0..lmax in polar and pseudo channels (``model.parity``), so the backbone is
equivariant to rotations, translations and reflections: a molecule and its mirror image get the same
polar features, and pseudo-scalars of opposite sign, which chirality-aware heads read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from data_pipeline.config_mapping import from_mapping
from data_pipeline.schema import DOMAINS, BadInputError
from data_pipeline.vocab import LEVELS_OF_THEORY
from model.activation import ACTIVATIONS, make_activation
from model.attention import EdgeGeometry, EquivariantGraphAttention
from model.checkpointing import checkpoint_layer
from model.conditioning import ConditioningEmbedding, NoiseLevelEmbedding
from model.lean_silu import LeanSiLU
from model.norm import EquivariantRMSNorm
from model.parity import pseudo_mask, same_parity
from model.radial import RADIAL_BASES, PolynomialEnvelope
from model.so3 import (
    CoefficientLayout,
    edge_frame_rotation,
    edge_rotation,
    rotate_from_edge_frame,
    vector_to_l1,
    wigner_d,
)
from model.so3_linear import SO3Linear

MAX_LMAX = 6


@dataclass
class BackboneConfig:
    """Shape of the backbone. Channels are per (l, m) coefficient; lengths in Å."""

    lmax: int = 2  # 1..6
    mmax: int = 2  # orders kept in the edge frame, <= lmax
    channels: int = 64  # sphere channels of the residual stream
    num_layers: int = 4
    num_heads: int = 4
    attn_channels: int = 32  # channels of the message/value path, split over the heads
    ffn_channels: int = 128
    num_rbf: int = 32
    radial_basis: str = "gaussian"  # "gaussian" | "bessel"
    radial_channels: int = 64  # hidden width of the per-layer radial MLP
    cutoff: float = 6.0  # Å
    activation: str = "s2"  # feed-forward nonlinearity: "s2" | "gate"
    s2_resolution: int | None = None  # latitude points of the S² grid; None: 3 * (lmax + 1)
    activation_checkpointing: bool = False
    checkpoint_edge_chunk: int = 8192  # with activation_checkpointing: edges per recomputed attention chunk
    compile: bool = False  # torch.compile the layers (inference, direct-force training; docs/model.md)
    pseudo_fraction: float = 0.25  # share of each feature width in pseudo (parity-odd) channels; 0: achiral
    num_elements: int = 119  # index 0 = [MASK] token (masked atom types), 1..118 = Z
    num_levels: int = len(LEVELS_OF_THEORY)
    num_domains: int = len(DOMAINS)
    max_abs_charge: int = 100  # total charges -100..100 e
    max_spin: int = 20  # spin multiplicities 1..20
    noise_level_embedding: bool = False  # diffusion denoisers: condition on the batch field ``noise_level``

    def __post_init__(self) -> None:
        checks = [
            ("lmax", 1 <= self.lmax <= MAX_LMAX, f"must be in 1..{MAX_LMAX}"),
            ("mmax", 0 <= self.mmax <= self.lmax, f"must be in 0..lmax ({self.lmax})"),
            (
                "attn_channels",
                self.num_heads > 0 and self.attn_channels % self.num_heads == 0,
                f"must be a positive multiple of num_heads ({self.num_heads})",
            ),
            ("radial_basis", self.radial_basis in RADIAL_BASES, f"must be one of {', '.join(RADIAL_BASES)}"),
            ("activation", self.activation in ACTIVATIONS, f"must be one of {', '.join(ACTIVATIONS)}"),
            ("cutoff", self.cutoff > 0, "must be positive"),
            (
                "s2_resolution",
                self.s2_resolution is None or self.s2_resolution > self.lmax,
                f"must exceed lmax ({self.lmax}) for the grid to resolve the features",
            ),
            ("num_rbf", self.num_rbf >= 2, "must be at least 2"),
            ("checkpoint_edge_chunk", self.checkpoint_edge_chunk > 0, "must be positive"),
            (
                "pseudo_fraction",
                0.0 <= self.pseudo_fraction < 1.0,
                "must lie in [0, 1): polar channels carry the energy",
            ),
        ]
        for name in (
            "channels",
            "num_layers",
            "ffn_channels",
            "radial_channels",
            "num_elements",
            "num_levels",
            "num_domains",
            "max_spin",
        ):
            checks.append((name, getattr(self, name) > 0, "must be positive"))
        for name, ok, requirement in checks:
            if not ok:
                raise BadInputError(
                    f"BackboneConfig.{name}={getattr(self, name)!r} {requirement}", field=name
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | None = None) -> BackboneConfig:
        """From a mapping; an unknown key or a wrong type is a ``BadInputError`` naming it (and ``source``)."""
        return from_mapping(cls, d, source=source)


class EquivariantFeedForward(nn.Module):
    """Per-atom feed-forward: SO(3)-linear up to ``hidden`` channels, nonlinearity, SO(3)-linear back."""

    def __init__(
        self,
        lmax: int,
        channels: int,
        hidden: int,
        activation: str,
        s2_resolution: int | None,
        pseudo_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        node, inner = pseudo_mask(channels, pseudo_fraction), pseudo_mask(hidden, pseudo_fraction)
        self.activation = make_activation(
            activation, CoefficientLayout(lmax, lmax), hidden, s2_resolution, inner
        )
        num_scalars = ACTIVATIONS[activation].num_scalars(lmax, hidden)
        self.scalars = nn.Linear(channels, num_scalars)
        # The S² activation's scalars are the hidden l = 0 features (of each channel's parity); the gate's are
        # gates (polar). Either way, a scalar reads input channels of its own parity.
        scalar_parity = inner if num_scalars == hidden else pseudo_mask(num_scalars, 0.0)
        self.register_buffer("scalar_parity", scalar_parity, persistent=False)
        self.register_buffer("node_parity", node, persistent=False)
        self.masked = bool(node.any())
        self.up = SO3Linear(lmax, channels, hidden, in_pseudo=node, out_pseudo=inner)
        self.down = SO3Linear(lmax, hidden, channels, in_pseudo=inner, out_pseudo=node)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.scalars.weight, self.scalars.bias
        if self.masked:
            weight = weight * same_parity(self.scalar_parity, self.node_parity).to(weight)
            bias = bias * (~self.scalar_parity).to(bias)
        scalars = nn.functional.linear(x[..., 0, :], weight, bias)
        return self.down(self.activation(self.up(x), scalars))


class EdgeDegreeEmbedding(nn.Module):
    """Initial features of every degree from each atom's neighbourhood (EquiformerV2's edge-degree embedding).

    For edge j -> i an MLP of the radial basis and both atoms' scalar features gives one coefficient per
    (l, channel) on the edge axis (m = 0 in the edge frame); rotated back, these are spherical harmonics of
    the edge direction. Atom i gets sum_j env_ij h_ij / sqrt(1 + sum_j env_ij), which keeps the l > 0 part
    of order one whatever the number of neighbours (their directions partly cancel) and is smooth as a
    neighbour crosses the cutoff. [N, C] scalars -> [N, (lmax+1)**2, C].
    """

    def __init__(
        self, lmax: int, channels: int, num_rbf: int, radial_channels: int, pseudo: Tensor | None = None
    ) -> None:
        super().__init__()
        self.lmax, self.channels = lmax, channels
        polar = (~(pseudo_mask(channels, 0.0) if pseudo is None else pseudo)).to(torch.get_default_dtype())
        self.register_buffer("polar", polar, persistent=False)  # edge directions make polar features only
        self.radial_mlp = nn.Sequential(
            nn.Linear(num_rbf + 2 * channels, radial_channels),
            nn.LayerNorm(radial_channels),
            LeanSiLU(),
            nn.Linear(radial_channels, (lmax + 1) * channels),
        )

    def forward(self, scalars: Tensor, edge_index: Tensor, geometry: EdgeGeometry) -> Tensor:
        source, target = edge_index[0], edge_index[1]
        features = torch.cat(
            [geometry.radial_basis, scalars.index_select(0, source), scalars.index_select(0, target)], dim=-1
        )
        on_axis = self.radial_mlp(features).unflatten(-1, (self.lmax + 1, self.channels)) * self.polar.to(
            features.dtype
        )
        values = rotate_from_edge_frame(on_axis, geometry.rotation[:, : self.lmax + 1]).to(scalars.dtype)
        envelope = geometry.envelope.to(scalars.dtype)
        num_atoms = scalars.shape[0]
        total = values.new_zeros(num_atoms, *values.shape[1:]).index_add(
            0, target, values * envelope[:, None, None]
        )
        weight = envelope.new_zeros(num_atoms).index_add(0, target, envelope)
        return total * torch.rsqrt(1 + weight)[:, None, None]


class TransformerBlock(nn.Module):
    """x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        pseudo = pseudo_mask(cfg.channels, cfg.pseudo_fraction)
        self.attention_norm = EquivariantRMSNorm(cfg.lmax, cfg.channels, pseudo=pseudo)
        self.attention = EquivariantGraphAttention(
            lmax=cfg.lmax,
            mmax=cfg.mmax,
            channels=cfg.channels,
            attn_channels=cfg.attn_channels,
            num_heads=cfg.num_heads,
            num_rbf=cfg.num_rbf,
            radial_channels=cfg.radial_channels,
            pseudo_fraction=cfg.pseudo_fraction,
        )
        self.edge_chunk = cfg.checkpoint_edge_chunk if cfg.activation_checkpointing else None
        self.feed_forward_norm = EquivariantRMSNorm(cfg.lmax, cfg.channels, pseudo=pseudo)
        self.feed_forward = EquivariantFeedForward(
            cfg.lmax, cfg.channels, cfg.ffn_channels, cfg.activation, cfg.s2_resolution, cfg.pseudo_fraction
        )

    def forward(self, x: Tensor, edge_index: Tensor, geometry: EdgeGeometry) -> Tensor:
        x = x + self.attention(self.attention_norm(x), edge_index, geometry, self.edge_chunk)
        return x + self.feed_forward(self.feed_forward_norm(x))

    def checkpointed(self, x: Tensor, edge_index: Tensor, geometry: EdgeGeometry) -> Tensor:
        """:meth:`forward` keeping only its inputs for the backward passes, a conservative-force loss's
        second backward included (``model.checkpointing``)."""
        return checkpoint_layer(
            self._forward_of_tensors,
            list(self.parameters()),
            x,
            edge_index,
            geometry.rotation,
            geometry.radial_basis,
            geometry.envelope,
        )

    def _forward_of_tensors(
        self, x: Tensor, edge_index: Tensor, rotation: Tensor, radial_basis: Tensor, envelope: Tensor
    ) -> Tensor:
        return self(x, edge_index, EdgeGeometry(rotation, radial_basis, envelope))


class EquivariantTransformer(nn.Module):
    """Atoms and edges in, per-atom SO(3) features out (see :meth:`forward`)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conditioning = ConditioningEmbedding(
            cfg.channels,
            num_elements=cfg.num_elements,
            num_levels=cfg.num_levels,
            num_domains=cfg.num_domains,
            max_abs_charge=cfg.max_abs_charge,
            max_spin=cfg.max_spin,
        )
        self.noise_level = NoiseLevelEmbedding(cfg.channels) if cfg.noise_level_embedding else None
        self.vector_embedding = nn.Parameter(torch.randn(cfg.channels))
        self.radial_basis = RADIAL_BASES[cfg.radial_basis](cfg.num_rbf, cfg.cutoff)
        self.envelope = PolynomialEnvelope(cfg.cutoff)
        pseudo = pseudo_mask(cfg.channels, cfg.pseudo_fraction)
        self.register_buffer("polar", (~pseudo).to(torch.get_default_dtype()), persistent=False)
        self.edge_degree_embedding = EdgeDegreeEmbedding(
            cfg.lmax, cfg.channels, cfg.num_rbf, cfg.radial_channels, pseudo
        )
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = EquivariantRMSNorm(cfg.lmax, cfg.channels, pseudo=pseudo)

    def forward(
        self,
        z: Tensor,
        edge_index: Tensor,
        edge_vec: Tensor,
        batch: Tensor,
        charge: Tensor,
        spin: Tensor,
        level_of_theory: Tensor,
        domain: Tensor,
        vector_input: Tensor | None = None,
        noise_level: Tensor | None = None,
    ) -> Tensor:
        """z [N] long (0 = masked); edge_index [2, E] (row 0 = neighbour j / source, row 1 = centre i / target);
        edge_vec [E, 3] Å, r_ij = pos[j] - pos[i] (+ periodic shift), differentiable w.r.t. positions/strain;
        batch [N]; charge, spin, level_of_theory, domain: [B] long;
        vector_input: optional [N, 3] per-atom Cartesian vectors (DeNS: clean forces) embedded as l = 1 features;
        noise_level: optional [B] diffusion time in [0, 1], added to the scalars through
        :class:`~model.conditioning.NoiseLevelEmbedding` (needs ``noise_level_embedding``; absent: none).
        Returns x [N, (lmax+1)**2, channels], coefficient index l*l + (m + l) for m = -l..l; the last
        ``pseudo_channels`` channels are pseudo (parity-odd), the others polar.

        Edges at or beyond ``cfg.cutoff`` contribute nothing (their envelope is 0) and are dropped.
        """
        edge_index, edge_vec = self._edges_within_cutoff(edge_index, edge_vec)
        encode = EquivariantTransformer._encode
        # torch.compile has no double backward: a model in training whose edges carry gradients (conservative
        # forces, a loss on them next) runs the plain layers
        if self.cfg.compile and not (self.training and edge_vec.requires_grad):
            self.conditioning.check_ranges(z, batch, charge, spin, level_of_theory, domain)
            encode = _compiled_encode()
        return encode(
            self,
            z,
            edge_index,
            edge_vec,
            batch,
            charge,
            spin,
            level_of_theory,
            domain,
            vector_input,
            noise_level,
        )

    def _encode(
        self,
        z: Tensor,
        edge_index: Tensor,
        edge_vec: Tensor,
        batch: Tensor,
        charge: Tensor,
        spin: Tensor,
        level_of_theory: Tensor,
        domain: Tensor,
        vector_input: Tensor | None,
        noise_level: Tensor | None,
    ) -> Tensor:
        """:meth:`forward` after the edges beyond the cutoff are dropped: the part ``cfg.compile`` compiles
        (one graph, no breaks: ``torch._dynamo.explain``)."""
        geometry = self._edge_geometry(edge_vec)
        polar = self.polar.to(self.vector_embedding.dtype)
        scalars = self.conditioning(z, batch, charge, spin, level_of_theory, domain)
        if noise_level is not None:
            if self.noise_level is None:
                raise BadInputError(
                    "the batch gives a noise level but this model has no noise-level conditioning "
                    "(backbone.noise_level_embedding: false); train a diffusion model with it on",
                    field="noise_level",
                )
            scalars = scalars + self.noise_level(noise_level).index_select(0, batch)
        scalars = scalars * polar
        x = self.edge_degree_embedding(scalars, edge_index, geometry)
        if vector_input is not None:  # forces are polar vectors
            vectors = vector_to_l1(vector_input.to(x.dtype).unsqueeze(-1)) * (self.vector_embedding * polar)
            x = x + nn.functional.pad(vectors, (0, 0, 1, x.shape[1] - 4))
        x = torch.cat([x[:, :1] + scalars.unsqueeze(1), x[:, 1:]], dim=1)
        for block in self.blocks:
            if self.cfg.activation_checkpointing and torch.is_grad_enabled():
                x = block.checkpointed(x, edge_index, geometry)
            else:
                x = block(x, edge_index, geometry)
        return self.final_norm(x)

    @property
    def pseudo_channels(self) -> int:
        return int((self.polar == 0).sum())

    def _edges_within_cutoff(self, edge_index: Tensor, edge_vec: Tensor) -> tuple[Tensor, Tensor]:
        if edge_vec.shape[0] == 0:
            return edge_index, edge_vec
        length = torch.linalg.vector_norm(edge_vec.detach(), dim=-1)
        inside = length < self.cfg.cutoff
        shortest, num_inside = torch.stack([length.min(), inside.sum().to(length.dtype)]).tolist()
        if shortest <= 0:
            edge = int(torch.argmin(length))
            raise BadInputError(
                f"edge {edge} ({int(edge_index[0, edge])} -> {int(edge_index[1, edge])}) has zero length: "
                "two atoms at the same position, or a self-edge",
                field="edge_vec",
            )
        if num_inside == len(length):
            return edge_index, edge_vec
        return edge_index[:, inside], edge_vec[inside]

    def _edge_geometry(self, edge_vec: Tensor) -> EdgeGeometry:
        """Edge frames and radial features, computed in at least float32 (a Wigner-D in bf16 would lose the
        rotation's accuracy) and handed to the layers in the parameters' dtype."""
        dtype = self.vector_embedding.dtype
        with torch.autocast(device_type=edge_vec.device.type, enabled=False):
            vec = edge_vec.to(torch.promote_types(torch.promote_types(edge_vec.dtype, dtype), torch.float32))
            length = torch.linalg.vector_norm(vec, dim=-1)
            wigner = wigner_d(edge_rotation(vec), self.cfg.lmax)
            return EdgeGeometry(
                rotation=edge_frame_rotation(wigner, self.cfg.mmax).to(dtype),
                radial_basis=self.radial_basis(length).to(dtype),
                envelope=self.envelope(length).to(dtype),
            )


@cache
def _compiled_encode() -> Callable[..., Tensor]:
    """:meth:`EquivariantTransformer._encode` under ``torch.compile``, with dynamic atom and edge counts;
    compiled on first use, shared by every model (dynamo guards on the module)."""
    return torch.compile(EquivariantTransformer._encode, dynamic=True)
