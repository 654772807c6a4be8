"""Sampling molecules from a diffusion-trained checkpoint: the reverse of ``train/tasks/diffusion.py``.

Start at t = 1 from zero-mean Gaussian positions and every type hidden (z = 0), then for t = 1, (S−1)/S, ...,
0 ask the model for ε̂ and type logits and step to s = t − 1/S:

- positions, EDM's ancestral step: with α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² − α²_{t|s} σ_s²,
  z_s = z_t/α_{t|s} − σ²_{t|s}/(α_{t|s} σ_t) ε̂ + (σ_{t|s} σ_s/σ_t) ε′, ε′ zero-mean Gaussian; at the end
  x = (z_0 − σ_0 ε̂_0)/α_0 from one more call at t = 0;
- types, the reverse of masking: each hidden atom is revealed with probability (m_t − m_s)/m_t, its element
  drawn from the softmax of its logits over the elements the training molecules contain; revealed atoms
  keep their element; the last step reveals every atom still hidden.

Fragment completion: given a fragment, every molecule's first atoms are its atoms, with their elements
fixed and, at each step, their positions replaced by the fragment as the forward process would have it at
that noise level, placed where those atoms are (RePaint-style replacement); the rest is generated around it.

All randomness comes from one :class:`NoiseSource` per batch of molecules, seeded by (seed, batch index) and
drawn in a fixed order, so a seed and the batching fix the molecules. Positions
noise enters only through ``NoiseSource.gaussian``: rotating (or mirroring) every Gaussian draw rotates (or
mirrors) the molecule, since the ``noise`` head is an E(3)-equivariant polar vector and the type logits are
invariant (``tests/test_generation.py`` checks both in float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from data_pipeline.schema import BadInputError
from data_pipeline.vocab import domain_index, level_index
from eval.generation.molecules import Molecule
from train.tasks.diffusion import DiffusionSchedule, complete_graph, remove_mean


@dataclass
class MoleculeBatch:
    """The fields of the batch contract (``docs/batch.md``) a sampling step needs, for non-periodic
    molecules on a complete graph; ``noise_level`` [B] is the diffusion time."""

    z: Tensor
    pos: Tensor
    batch: Tensor
    natoms: Tensor
    cell: Tensor
    pbc: Tensor
    edge_index: Tensor
    cell_offsets: Tensor
    charge: Tensor
    spin: Tensor
    level_of_theory: Tensor
    domain: Tensor
    noise_level: Tensor


class NoiseSource:
    """The random numbers of one sampling run, from one seeded generator, in the order they are asked for.

    ``transform`` [3, 3] (an orthogonal matrix) is applied to every Gaussian position draw: the
    equivariance tests rotate or mirror the noise with it.
    """

    def __init__(self, seed: int, transform: Tensor | None = None) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.transform = transform

    def gaussian(self, batch: Tensor, num_graphs: int, dtype: torch.dtype) -> Tensor:
        """Zero-mean (per structure) unit Gaussian positions [N, 3]."""
        draw = torch.randn(batch.shape[0], 3, generator=self.generator, dtype=torch.float64)
        draw = remove_mean(draw, batch.cpu(), num_graphs)
        if self.transform is not None:
            draw = draw @ self.transform.to(draw.dtype).T
        return draw.to(dtype)

    def uniform(self, n: int) -> Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64)


class DiffusionSampler:
    """Draws molecules from a model with the ``noise`` and ``atom_type`` heads and noise-level conditioning.

    elements: the atomic numbers it may place (those of the training molecules); level_of_theory: what
    the model is conditioned on (default its main level); charge, spin: of every molecule.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        elements: Sequence[int],
        *,
        steps: int = 100,
        level_of_theory: str | None = None,
        charge: int = 0,
        spin: int = 1,
        schedule: DiffusionSchedule | None = None,
    ) -> None:
        config = model.config
        if not config.backbone.noise_level_embedding:
            raise BadInputError(
                "this checkpoint has no noise-level conditioning: it was not trained with the diffusion task "
                "(tasks.diffusion, model.overrides.noise_level_embedding: true)",
                field="checkpoint",
            )
        missing = [h for h in ("noise", "atom_type") if h not in model.heads]
        if missing:
            raise BadInputError(f"the checkpoint lacks the head(s) {', '.join(missing)}", field="checkpoint")
        if steps < 1:
            raise BadInputError(f"need at least one step, got {steps}", field="steps")
        if not elements:
            raise BadInputError("no elements to place", field="elements")
        self.model = model.eval()
        self.elements = torch.as_tensor(sorted(set(int(e) for e in elements)), dtype=torch.int64)
        self.steps = steps
        self.schedule = schedule or DiffusionSchedule()
        self.level = level_index(level_of_theory or config.main_level_of_theory, config.levels_of_theory)
        self.charge, self.spin = charge, spin

    @property
    def device(self) -> torch.device:
        return self.model.reference_energies.energies.device

    def sample(
        self,
        natoms: Sequence[int],
        seed: int,
        *,
        transform: Tensor | None = None,
        fragment: Molecule | None = None,
        atoms_per_batch: int = 2000,
        on_step: Callable[[int], None] | None = None,
    ) -> list[Molecule]:
        """One molecule per entry of ``natoms``, in batches of at most ``atoms_per_batch`` atoms, batch k drawing
        its noise from the seed (``seed``, k); ``transform`` goes to every :class:`NoiseSource`; ``fragment``:
        atoms every molecule must contain (its first atoms, kept exactly up to a translation; see
        :meth:`_impose_fragment`); ``on_step`` is called with the number of molecule-steps just done."""
        natoms = [int(n) for n in natoms]
        if fragment is not None and min(natoms) <= fragment.num_atoms:
            raise BadInputError(
                f"the fragment has {fragment.num_atoms} atoms: every molecule needs more (got {min(natoms)})",
                field="atoms",
            )
        out: list[Molecule] = []
        for k, chunk in enumerate(_chunks(natoms, atoms_per_batch)):
            noise = NoiseSource(int(np.random.SeedSequence([seed, k]).generate_state(1)[0]), transform)
            out += self._sample_batch(chunk, noise, on_step, fragment)
        return out

    def empty_batch(self, natoms: list[int]) -> MoleculeBatch:
        """A batch of molecules with ``natoms`` atoms each, all types hidden, on complete graphs."""
        dtype, device = self.model.dtype, self.device
        counts = torch.tensor(natoms, dtype=torch.int64)
        b = len(natoms)
        edges = complete_graph(counts)
        return MoleculeBatch(
            z=torch.zeros(int(counts.sum()), dtype=torch.int64, device=device),
            pos=torch.zeros(int(counts.sum()), 3, dtype=dtype, device=device),
            batch=torch.repeat_interleave(torch.arange(b), counts).to(device),
            natoms=counts.to(device),
            cell=torch.zeros(b, 3, 3, dtype=dtype, device=device),
            pbc=torch.zeros(b, 3, dtype=torch.bool, device=device),
            edge_index=edges.to(device),
            cell_offsets=torch.zeros(edges.shape[1], 3, dtype=dtype, device=device),
            charge=torch.full((b,), self.charge, dtype=torch.int64, device=device),
            spin=torch.full((b,), self.spin, dtype=torch.int64, device=device),
            level_of_theory=torch.full((b,), self.level, dtype=torch.int64, device=device),
            domain=torch.full((b,), domain_index("molecule"), dtype=torch.int64, device=device),
            noise_level=torch.ones(b, dtype=dtype, device=device),
        )

    @torch.no_grad()
    def predict(self, batch: MoleculeBatch, t: float) -> tuple[Tensor, Tensor]:
        """ε̂ [N, 3] (zero mean per molecule) and type logits [N, 119] at time ``t``."""
        batch.noise_level = torch.full_like(batch.noise_level, t)
        out = self.model(batch, ("noise", "atom_logits"))
        eps = remove_mean(out["noise"].to(batch.pos.dtype), batch.batch, len(batch.natoms))
        return eps, out["atom_logits"]

    def _sample_batch(
        self,
        natoms: list[int],
        noise: NoiseSource,
        on_step: Callable[[int], None] | None,
        fragment: Molecule | None,
    ) -> list[Molecule]:
        batch = self.empty_batch(natoms)
        num_graphs, dtype, device = len(natoms), batch.pos.dtype, batch.pos.device
        sched = self.schedule
        batch.pos = noise.gaussian(batch.batch, num_graphs, dtype).to(device)
        hidden = torch.ones(batch.z.shape[0], dtype=torch.bool, device=device)
        known = self._fragment_atoms(natoms, fragment).to(device)
        if fragment is not None:
            shape = torch.from_numpy(fragment.positions - fragment.positions.mean(axis=0)).to(device, dtype)
            shape = shape.repeat(num_graphs, 1)
            batch.z[known] = torch.from_numpy(fragment.numbers).to(device).repeat(num_graphs)
            hidden &= ~known
            batch.pos = self._impose_fragment(batch, known, shape, 1.0, noise)
        for k in range(self.steps, 0, -1):
            t, s = k / self.steps, (k - 1) / self.steps
            eps, logits = self.predict(batch, t)
            tt, ss = torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
            alpha_ts = sched.alpha(tt) / sched.alpha(ss)
            var_ts = sched.sigma(tt) ** 2 - alpha_ts**2 * sched.sigma(ss) ** 2
            mean = batch.pos / float(alpha_ts) - float(var_ts / (alpha_ts * sched.sigma(tt))) * eps
            std = float(var_ts.sqrt() * sched.sigma(ss) / sched.sigma(tt))
            batch.pos = mean + std * noise.gaussian(batch.batch, num_graphs, dtype).to(device)
            if fragment is not None:
                batch.pos = self._impose_fragment(batch, known, shape, s, noise)
            m_t, m_s = float(sched.mask_probability(tt)), float(sched.mask_probability(ss))
            reveal_probability = 1.0 if k == 1 else (m_t - m_s) / m_t
            batch.z, hidden = self._reveal_types(batch.z, hidden, logits, reveal_probability, noise)
            if on_step is not None:
                on_step(num_graphs)
        eps, _ = self.predict(batch, 0.0)
        zero = torch.tensor(0.0, dtype=torch.float64)
        positions = (batch.pos - float(sched.sigma(zero)) * eps) / float(sched.alpha(zero))
        if fragment is not None:
            positions[known] = shape + _known_centroid(positions, known, batch.batch, num_graphs)
            positions = remove_mean(positions, batch.batch, num_graphs)
        z, pos = batch.z.cpu().numpy(), positions.double().cpu().numpy()
        starts = np.concatenate([[0], np.cumsum(natoms)])
        return [
            Molecule(z[a:b].copy(), pos[a:b].copy(), charge=self.charge)
            for a, b in zip(starts[:-1], starts[1:], strict=True)
        ]

    @staticmethod
    def _fragment_atoms(natoms: list[int], fragment: Molecule | None) -> Tensor:
        """[N] bool: the first ``fragment.num_atoms`` atoms of every molecule (none without a fragment)."""
        k = 0 if fragment is None else fragment.num_atoms
        return torch.cat([torch.arange(n) < k for n in natoms])

    def _impose_fragment(
        self, batch: MoleculeBatch, known: Tensor, shape: Tensor, t: float, noise: NoiseSource
    ) -> Tensor:
        """Positions with the fragment's atoms replaced by the fragment as the forward process has it at time
        t, α_t x_frag + σ_t ε (ε zero-mean over the fragment), placed at those atoms' current centroid (so
        the molecule's centre stays at zero and the fragment's place is the model's choice), RePaint-style."""
        num_graphs = len(batch.natoms)
        tt = torch.tensor(t, dtype=torch.float64)
        draw = noise.gaussian(batch.batch, num_graphs, batch.pos.dtype).to(batch.pos.device)[known]
        draw = draw - _known_centroid(draw, torch.ones_like(known[known]), batch.batch[known], num_graphs)
        centroid = _known_centroid(batch.pos, known, batch.batch, num_graphs)
        pos = batch.pos.clone()
        pos[known] = float(self.schedule.alpha(tt)) * shape + float(self.schedule.sigma(tt)) * draw + centroid
        return pos

    def _reveal_types(
        self, z: Tensor, hidden: Tensor, logits: Tensor, probability: float, noise: NoiseSource
    ) -> tuple[Tensor, Tensor]:
        """Reveal each hidden atom with ``probability``, drawing its element from its logits restricted to
        :attr:`elements` (inverse CDF of one uniform per atom, so the draw is rotation-invariant)."""
        n = z.shape[0]
        reveal = (noise.uniform(n) < probability).to(z.device) & hidden
        u = noise.uniform(n).to(z.device)
        elements = self.elements.to(z.device)
        probabilities = torch.softmax(logits[:, elements].double(), dim=-1)
        cdf = probabilities.cumsum(dim=-1)
        choice = (
            torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1).clamp_max(len(elements) - 1)
        )
        z = torch.where(reveal, elements[choice], z)
        return z, hidden & ~reveal


def _chunks(natoms: list[int], atoms_per_batch: int) -> list[list[int]]:
    """Consecutive runs of ``natoms`` holding at most ``atoms_per_batch`` atoms (at least one molecule)."""
    out: list[list[int]] = [[]]
    total = 0
    for n in natoms:
        if out[-1] and total + n > atoms_per_batch:
            out.append([])
            total = 0
        out[-1].append(n)
        total += n
    return [c for c in out if c]


def _known_centroid(values: Tensor, known: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Per ``known`` row, the mean of its molecule's ``known`` rows of ``values`` [N, 3]."""
    rows, graph = values[known], batch[known]
    total = values.new_zeros(num_graphs, 3).index_add(0, graph, rows)
    count = values.new_zeros(num_graphs).index_add(0, graph, torch.ones_like(rows[:, 0]))
    return (total / count.clamp_min(1)[:, None])[graph]
