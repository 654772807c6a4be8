"""Long-range electrostatics of the model's latent charges.

Each atom carries a Gaussian charge of width ``smearing`` (σ, Å). Two such charges interact through

    φ(r) = k_e · erf(r / (√2 σ)) / r · s(r),        k_e = 14.399645 eV·Å/e²,

where ``s`` damps the interaction inside ``damping`` (r_d, Å), the region the short-range backbone already
describes: ``s(r) = (1 − cos(π r / r_d)) / 2`` for r < r_d and 1 beyond (``damping = 0``: no damping). The
kernel is finite at r = 0 and tends to the bare Coulomb law beyond a few σ.

- Periodic structures: the sum over all periodic images is the reciprocal-space sum (Ewald or PME) of a
  :class:`torchpme.CoulombPotential` with the same σ (Ewald: on torch-pme's k-grid, summed here over half of it
  through the structure factor, equal to torch-pme's full sum to round-off at a quarter of the work; PME:
  torch-pme's); the damping term ``−φ_erf(r)(1 − s(r))`` needs only
  pairs inside r_d, which are the batch's own edges (r_d is at most the backbone's cutoff). Charged cells get
  torch-pme's neutralising background.
- Non-periodic structures: the same kernel summed directly over every pair of atoms of the structure, with
  explicit coordinate differences (twice differentiable, no ``torch.cdist``).

Both paths are invariant under rotations and translations, and differentiable twice (conservative forces
are trained through them).
"""

from __future__ import annotations

import math

import torch
import torchpme
from torch import Tensor, nn

COULOMB_CONSTANT = 14.399645  # eV·Å/e²
LONG_RANGE_METHODS: tuple[str, ...] = ("ewald", "pme", "direct")
# Reciprocal-space resolution as a fraction of σ: torch-pme's k-grid then reaches |k|σ ≈ 2π, where the
# Gaussian kernel exp(−σ²k²/2) has fallen below 3e-9 (Ewald). PME with a σ/2 mesh and 6-point (quintic)
# interpolation agrees with Ewald to ~1e-4 of the largest force (4 points: ~1e-2).
EWALD_WAVELENGTH_PER_SMEARING = 0.5
PME_SPACING_PER_SMEARING = 0.5
PME_INTERPOLATION_NODES = 6


class Electrostatics(nn.Module):
    """Energy [B] (eV) of latent charges [N] (e) for a batch of periodic and non-periodic structures.

    method: ``ewald`` or ``pme`` for periodic structures (non-periodic ones always use the direct sum);
    ``direct`` accepts non-periodic structures only.
    """

    def __init__(self, method: str = "ewald", smearing: float = 1.0, damping: float = 0.0) -> None:
        super().__init__()
        if method not in LONG_RANGE_METHODS:
            raise ValueError(
                f"unknown long-range method {method!r}; expected one of {', '.join(LONG_RANGE_METHODS)}"
            )
        if smearing <= 0:
            raise ValueError(f"long-range smearing must be positive (Å), got {smearing}")
        if damping < 0:
            raise ValueError(f"long-range damping radius must be >= 0 (Å), got {damping}")
        self.method, self.smearing, self.damping = method, float(smearing), float(damping)

    def extra_repr(self) -> str:
        return f"method={self.method}, smearing={self.smearing} Å, damping={self.damping} Å"

    def forward(
        self,
        charges: Tensor,
        pos: Tensor,
        batch: Tensor,
        cell: Tensor,
        pbc: Tensor,
        edge_index: Tensor,
        edge_vec: Tensor,
    ) -> Tensor:
        """charges [N] e; pos [N, 3] Å; batch [N]; cell [B, 3, 3]; pbc [B, 3]; edges as in the batch contract
        (``edge_vec`` [E, 3] = r_j − r_i + shift, differentiable). Returns the energy per structure [B], eV."""
        num_graphs = cell.shape[0]
        dtype = torch.promote_types(pos.dtype, torch.float32)
        with torch.autocast(device_type=pos.device.type, enabled=False):
            charges, pos, cell, edge_vec = (t.to(dtype) for t in (charges, pos, cell, edge_vec))
            periodic = pbc.any(dim=1)
            energy = self._direct_energy(charges, pos, batch, ~periodic, num_graphs)
            if bool(periodic.any()):
                if self.method == "direct":
                    raise ValueError(
                        "long-range method 'direct' handles non-periodic structures only; "
                        "use 'ewald' or 'pme' for a batch with periodic cells"
                    )
                energy = energy + self._periodic_energy(
                    charges, pos, batch, cell, pbc, periodic, edge_index, edge_vec
                )
        return energy

    def pair_kernel(self, r: Tensor) -> Tensor:
        """φ(r) / k_e [1/Å] at distances r > 0 (the damped, smeared Coulomb kernel)."""
        return torch.erf(r / (math.sqrt(2.0) * self.smearing)) / r * self._damping_factor(r)

    def _damping_factor(self, r: Tensor) -> Tensor:
        if self.damping == 0.0:
            return torch.ones_like(r)
        inside = r < self.damping
        ramp = 0.5 * (1.0 - torch.cos(math.pi * torch.where(inside, r, torch.zeros_like(r)) / self.damping))
        return torch.where(inside, ramp, torch.ones_like(r))

    def _direct_energy(
        self, charges: Tensor, pos: Tensor, batch: Tensor, graph_selected: Tensor, num_graphs: int
    ) -> Tensor:
        """Σ_{i<j} q_i q_j φ(r_ij) within each selected structure; zeros elsewhere."""
        energy = pos.new_zeros(num_graphs)
        first, second = pairs_within_graphs(batch, graph_selected[batch], num_graphs)
        if first.numel() == 0:
            return energy
        r = torch.linalg.vector_norm(pos[second] - pos[first], dim=-1)
        pair_energy = COULOMB_CONSTANT * charges[first] * charges[second] * self.pair_kernel(r)
        return energy.index_add(0, batch[first], pair_energy)

    def _periodic_energy(
        self,
        charges: Tensor,
        pos: Tensor,
        batch: Tensor,
        cell: Tensor,
        pbc: Tensor,
        periodic: Tensor,
        edge_index: Tensor,
        edge_vec: Tensor,
    ) -> Tensor:
        calculator = self._torchpme_calculator(pos.dtype, pos.device)
        ptr = torch.cat([batch.new_zeros(1), torch.bincount(batch, minlength=cell.shape[0]).cumsum(0)])
        edge_len = torch.linalg.vector_norm(edge_vec, dim=-1)
        damped = edge_len < self.damping
        edge_graph = batch[edge_index[1]]
        graphs = torch.nonzero(periodic).flatten()
        per_graph = []
        ewald = self.method == "ewald"
        for g in graphs.tolist():
            start, stop = int(ptr[g]), int(ptr[g + 1])
            pairs = damped & (edge_graph == g)
            q = charges[start:stop, None]
            potential = calculator(
                charges=q,
                cell=cell[g],
                positions=pos[start:stop],
                neighbor_indices=torch.stack([edge_index[1, pairs], edge_index[0, pairs]], dim=1) - start,
                neighbor_distances=edge_len[pairs],
                periodic=pbc[g],
                # Ewald: torch-pme gives the real-space, self and background terms; the reciprocal sum is ours
                kvectors=pos.new_zeros(0, 3) if ewald else None,
            )
            energy = (q * potential).sum()
            if ewald:
                energy = energy + self._reciprocal_energy(q[:, 0], pos[start:stop], cell[g], calculator)
            per_graph.append(energy)
        return pos.new_zeros(cell.shape[0]).index_add(0, graphs, torch.stack(per_graph))

    def _reciprocal_energy(
        self, charges: Tensor, pos: Tensor, cell: Tensor, calculator: torchpme.EwaldCalculator
    ) -> Tensor:
        """torch-pme's Ewald reciprocal-space energy, (1/2V) Σ_k G(k) |Σ_j q_j e^{ik·r_j}|², over the same
        k-vectors, from the structure factor of half of them: k and −k contribute equally, so each pair is
        summed once with weight 2 (a grid-edge vector without its partner once). Equal to torch-pme's sum
        to round-off, at a fraction of its work (it forms every atom's potential over every k-vector)."""
        kvectors, weights = half_kvectors(cell, calculator.lr_wavelength)
        phase = kvectors @ pos.T  # [K, N]
        real, imag = torch.cos(phase) @ charges, torch.sin(phase) @ charges
        kernel = calculator.potential.lr_from_k_sq((kvectors**2).sum(-1)) * weights
        return (kernel * (real**2 + imag**2)).sum() / (2.0 * torch.abs(torch.linalg.det(cell)))

    def _torchpme_calculator(self, dtype: torch.dtype, device: torch.device) -> torchpme.Calculator:
        """A torch-pme calculator for this σ and damping (built per call: it holds no learned state)."""
        potential = torchpme.CoulombPotential(
            smearing=self.smearing,
            exclusion_radius=self.damping if self.damping > 0 else None,
            prefactor=COULOMB_CONSTANT,
        )
        if self.method == "pme":
            calculator = torchpme.PMECalculator(
                potential,
                mesh_spacing=PME_SPACING_PER_SMEARING * self.smearing,
                interpolation_nodes=PME_INTERPOLATION_NODES,
                full_neighbor_list=True,
            )
        else:
            calculator = torchpme.EwaldCalculator(
                potential,
                lr_wavelength=EWALD_WAVELENGTH_PER_SMEARING * self.smearing,
                full_neighbor_list=True,
            )
        return calculator.to(device=device, dtype=dtype)


def half_kvectors(cell: Tensor, lr_wavelength: float) -> tuple[Tensor, Tensor]:
    """The k-vectors of torch-pme's Ewald grid for ``cell`` (rows are lattice vectors) and wavelength, one of each
    ±k pair with weight 2 and the grid-edge vectors whose −k the grid lacks with weight 1; k = 0 left out (its
    kernel is zero). Integer grid per axis: ``fftfreq(n) · n`` with n = ⌈|a_i| / λ⌉, as torch-pme builds it."""
    with torch.no_grad():  # torch-pme's expression, so that the grid is the same to the last bit
        k_cutoff = 2 * torch.pi / lr_wavelength
        ns = torch.ceil(k_cutoff * torch.linalg.norm(cell, dim=1) / 2 / torch.pi).long().tolist()
    axes = [torch.round(torch.fft.fftfreq(n, dtype=torch.float64) * n).long() for n in ns]
    m = torch.cartesian_prod(*axes).to(cell.device)  # [M, 3] integer multiples of the reciprocal vectors
    lowest = torch.tensor([-(n // 2) for n in ns], device=m.device)
    even = torch.tensor([n % 2 == 0 for n in ns], device=m.device)
    edge = (even & (m == lowest)).any(dim=1)  # on an even axis −n/2 has no +n/2: −k is outside the grid
    nonzero = m != 0
    first = torch.argmax(nonzero.long(), dim=1)  # the first nonzero component decides the half
    positive = m.gather(1, first[:, None])[:, 0] > 0
    keep = edge | (positive & nonzero.any(dim=1))
    weights = torch.where(edge[keep], 1.0, 2.0).to(cell.dtype)
    reciprocal = 2.0 * torch.pi * torch.linalg.inv(cell).T
    return m[keep].to(cell.dtype) @ reciprocal, weights


def pairs_within_graphs(batch: Tensor, atom_selected: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Every unordered pair (i < j) of atoms in the same graph, for the selected atoms' graphs.

    batch: [N] graph index of each atom (atoms of a graph contiguous, as PyG batches them);
    atom_selected: [N] bool, constant within a graph. Returns (first [P], second [P]), P = Σ n_g (n_g − 1) / 2.
    """
    counts = torch.bincount(batch, minlength=num_graphs)
    start = torch.cumsum(counts, 0) - counts
    atoms = torch.arange(batch.numel(), device=batch.device)
    local = atoms - start[batch]
    partners = torch.where(atom_selected, counts[batch] - 1 - local, torch.zeros_like(local))
    first = torch.repeat_interleave(atoms, partners)
    run_start = torch.repeat_interleave(torch.cumsum(partners, 0) - partners, partners)
    second = first + 1 + torch.arange(first.numel(), device=batch.device) - run_start
    return first, second
