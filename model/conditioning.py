"""What the model is told besides the geometry: element, total charge, spin, level of theory, domain, and
(diffusion models only) the noise level."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from data_pipeline.schema import BadInputError


class ConditioningEmbedding(nn.Module):
    """Invariant per-atom features [N, C]: an element embedding plus the embeddings of its structure's
    total charge (e), spin multiplicity, level of theory and domain.

    Elements are indexed by Z (1..num_elements-1), 0 being the [MASK] token of masked atom types.
    Charges -max_abs_charge..max_abs_charge and multiplicities 1..max_spin are each a learned vector.
    """

    def __init__(
        self,
        channels: int,
        *,
        num_elements: int,
        num_levels: int,
        num_domains: int,
        max_abs_charge: int,
        max_spin: int,
    ) -> None:
        super().__init__()
        self.max_abs_charge = max_abs_charge
        self.element = nn.Embedding(num_elements, channels)
        self.charge = nn.Embedding(2 * max_abs_charge + 1, channels)
        self.spin = nn.Embedding(max_spin, channels)
        self.level_of_theory = nn.Embedding(num_levels, channels)
        self.domain = nn.Embedding(num_domains, channels)

    def forward(
        self, z: Tensor, batch: Tensor, charge: Tensor, spin: Tensor, level_of_theory: Tensor, domain: Tensor
    ) -> Tensor:
        """z, batch: [N] long; charge, spin, level_of_theory, domain: [B] long. Returns [N, C]."""
        if not torch.compiler.is_compiling():  # a compiled backbone checks before it enters the graph
            self.check_ranges(z, batch, charge, spin, level_of_theory, domain)
        per_structure = (
            self.charge(charge + self.max_abs_charge)
            + self.spin(spin - 1)
            + self.level_of_theory(level_of_theory)
            + self.domain(domain)
        )
        return self.element(z) + per_structure.index_select(0, batch)

    def check_ranges(
        self, z: Tensor, batch: Tensor, charge: Tensor, spin: Tensor, level_of_theory: Tensor, domain: Tensor
    ) -> None:
        """One device sync for all inputs; on failure, a BadInputError naming the field and the bad value."""
        inputs = dict(
            z=z, batch=batch, charge=charge, spin=spin, level_of_theory=level_of_theory, domain=domain
        )
        bounds = {
            "z": (0, self.element.num_embeddings - 1),
            "batch": (0, inputs["charge"].shape[0] - 1),
            "charge": (-self.max_abs_charge, self.max_abs_charge),
            "spin": (1, self.spin.num_embeddings),
            "level_of_theory": (0, self.level_of_theory.num_embeddings - 1),
            "domain": (0, self.domain.num_embeddings - 1),
        }
        outside = {name: (t < bounds[name][0]) | (t > bounds[name][1]) for name, t in inputs.items()}
        if not bool(torch.stack([o.any() for o in outside.values()]).any()):
            return
        for name, bad in outside.items():
            if bad.any():
                index = int(bad.nonzero()[0, 0])
                low, high = bounds[name]
                raise BadInputError(
                    f"entry {index} is {int(inputs[name][index])}, outside the model's range {low}..{high}",
                    field=name,
                )


class NoiseLevelEmbedding(nn.Module):
    """The noise level t ∈ [0, 1] of each structure (diffusion time: 0 clean, 1 pure noise; the schedule is
    the diffusion task's, ``train/tasks/diffusion.py``) as invariant features [B, C].

    Sines and cosines of t at ``num_frequencies`` geometrically spaced angular frequencies from 1 to
    ``max_frequency`` (the transformer's timestep embedding), then a two-layer SiLU MLP whose last layer
    starts at zero: a pretrained backbone given this embedding computes exactly what it did before, and
    learns the dependence on t from there.
    """

    def __init__(self, channels: int, num_frequencies: int = 16, max_frequency: float = 1000.0) -> None:
        super().__init__()
        frequencies = torch.exp(torch.linspace(0.0, math.log(max_frequency), num_frequencies))
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_frequencies, channels), nn.SiLU(), nn.Linear(channels, channels)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, noise_level: Tensor) -> Tensor:
        """noise_level: [B] float in [0, 1]. Returns [B, C]; a t outside [0, 1] is a ``BadInputError``."""
        outside = ~((noise_level >= 0) & (noise_level <= 1))
        if bool(outside.any()):
            index = int(outside.nonzero()[0, 0])
            raise BadInputError(
                f"entry {index} is {float(noise_level[index])}, outside the diffusion time range [0, 1]",
                field="noise_level",
            )
        angles = noise_level.to(self.frequencies.dtype)[:, None] * self.frequencies
        features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))
