"""What every head sees, and the small invariant MLP the heads are built from."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class HeadInput:
    """The backbone's output and the batch fields heads read.

    x: [N, (lmax+1)², C] node features (index 0 = l=0, 1..3 = l=1, ...), polar channels only (pseudo
    channels zeroed), so every head is mirror-equivariant by construction; pseudo_scalars: [N, P] the
    backbone's l = 0 pseudo channels, which change sign under a reflection (for chirality-aware heads);
    z: [N] atomic numbers (0 = masked);
    batch: [N] graph index; pos: [N, 3] Å (as the backbone saw them, strained when stress is asked);
    charge: [B] total charge, e; residue_id: [N] residue number within its structure, −1 off-protein.
    """

    x: Tensor
    z: Tensor
    batch: Tensor
    num_graphs: int
    pos: Tensor
    charge: Tensor
    residue_id: Tensor | None = None
    pseudo_scalars: Tensor | None = None

    @property
    def invariant(self) -> Tensor:
        """The l=0 features [N, C] (rotation-invariant)."""
        return self.x[:, 0, :]


class Head(nn.Module):
    """A head reads :class:`HeadInput` and returns named outputs; ``outputs`` lists their names."""

    outputs: tuple[str, ...] = ()

    def __init__(self, channels: int, lmax: int) -> None:
        super().__init__()
        self.channels, self.lmax = channels, lmax

    def forward(self, inp: HeadInput) -> dict[str, Tensor]:
        raise NotImplementedError


def invariant_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Two-layer SiLU MLP on invariant features."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features))
