"""A short-range repulsion prior: the Ziegler–Biersack–Littmark (ZBL) universal screened nuclear potential.

    E_ij = k_e Z_i Z_j / r · φ(r / a) · s(r / r_c),    a = 0.8854 a₀ / (Z_i^0.23 + Z_j^0.23)
    φ(x) = 0.18175 e^(−3.19980 x) + 0.50986 e^(−0.94229 x) + 0.28022 e^(−0.40290 x) + 0.02817 e^(−0.20162 x)

(J. F. Ziegler, J. P. Biersack, U. Littmark, *The Stopping and Range of Ions in Solids*, 1985). A learned
energy trained on equilibrium structures is flat where no data is (two atoms 0.01 Å apart feel 1e-4 eV/Å); the
prior makes the energy rise steeply as nuclei meet, as MACE's and NequIP's ZBL options do. It is switched off
between the nuclei and a fraction f of the pair's covalent bond length, r_c = f (r_cov,i + r_cov,j) (ASE's
radii, at most the model's cutoff), by s(t) = 1 − 10t³ + 15t⁴ − 6t⁵, t = r / r_c, whose first and second
derivatives vanish at t = 1: the energy is twice differentiable everywhere (conservative-force training
differentiates it twice), and both factors fall with r, so the prior only ever pushes atoms apart. It
depends on distances alone: invariant to rotations and mirrors.

The fraction matters. At f = 1 (the bond length itself, as LAMMPS's and metatrain's ZBL place the outer
cutoff) the prior is on at the equilibrium length of every bond shorter than its radii sum: double and
triple bonds (C≡N at 1.16 Å is 0.79 of 1.47 Å: 0.7 eV and a large force per bond), rattled single bonds, and
compressed metals. The learned energy must then first learn to cancel it: on the demo molecules its forces
are 0.19 eV/Å per component on average, half the labels' own size. The shortest bonds of real molecules are
0.77–0.79 of the radii sum (N≡N, C≡N, C≡C, C≡O; 0.76 once rattled, in the demo corpus), so with f = 0.7
(new models' default) the prior is zero at every training geometry and only guards the gap below them.
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from ase.units import Bohr
from torch import Tensor, nn

COULOMB = 14.399645  # e²/(4πε₀), eV·Å
SCREENING_LENGTH = 0.8854 * Bohr  # Å
PHI_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
PHI_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
MIN_DISTANCE = 1e-4  # Å: coincident atoms get a large finite energy, not inf
MAX_SWITCH = 2.0  # the largest switch fraction (of the covalent bond length) a model may ask for


class ZBLRepulsion(nn.Module):
    """Σ over pairs within r_c of the switched ZBL energy, per structure [B] eV."""

    def __init__(self, cutoff: float, switch: float = 1.0) -> None:
        """cutoff: the model's, Å (no pair beyond it); switch: the fraction f of the covalent bond length at
        which the prior has fallen to zero."""
        super().__init__()
        if not 0.0 < switch <= MAX_SWITCH:
            raise ValueError(f"switch must lie in (0, {MAX_SWITCH}], got {switch}")
        self.cutoff = float(cutoff)
        self.switch = float(switch)
        self.register_buffer(
            "covalent_radii", torch.tensor(covalent_radii, dtype=torch.float64), persistent=False
        )

    def pair_energy(self, z_i: Tensor, z_j: Tensor, r: Tensor) -> Tensor:
        """The switched ZBL energy (eV) of pairs of atomic numbers ``z_i``, ``z_j`` at distances ``r`` (Å)."""
        zi, zj = z_i.to(r.dtype), z_j.to(r.dtype)
        a = SCREENING_LENGTH / (zi**0.23 + zj**0.23).clamp_min(1e-12)
        x = r / a
        phi = sum(c * torch.exp(-d * x) for c, d in zip(PHI_COEFFICIENTS, PHI_EXPONENTS, strict=True))
        radii = self.covalent_radii.to(r.dtype)
        r_c = (self.switch * (radii[z_i] + radii[z_j])).clamp(max=self.cutoff)
        t = (r / r_c).clamp(max=1.0)
        switch = 1 - t**3 * (10 - 15 * t + 6 * t**2)
        return COULOMB * zi * zj / r * phi * switch

    def forward(
        self, z: Tensor, edge_index: Tensor, edge_vec: Tensor, batch: Tensor, num_graphs: int
    ) -> Tensor:
        """z: [N]; edge_index: [2, E] (both directions of each pair); edge_vec: [E, 3] Å; batch: [N]."""
        src, dst = edge_index
        r = torch.sqrt((edge_vec * edge_vec).sum(dim=-1) + MIN_DISTANCE**2)
        energy = 0.5 * self.pair_energy(z[dst], z[src], r)  # each pair is two directed edges
        return energy.new_zeros(num_graphs).index_add(0, batch[dst], energy)
