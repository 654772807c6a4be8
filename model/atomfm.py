"""The full model: backbone, heads, reference energies, long-range electrostatics, forces and stress.

``AtomFM(config)(batch, outputs=(...))`` reads a batch of the batch contract (``docs/batch.md``) and returns
the requested outputs (units: eV, Å, e):

| output | shape | what |
| --- | --- | --- |
| ``energy`` | [B] | Σ reference energies (per level of theory) + Σ learned atom energies + electrostatics |
| ``forces`` | [N, 3] | −∂E/∂pos when conservative, else ``forces_direct`` |
| ``forces_direct`` | [N, 3] | direct equivariant force head |
| ``stress`` | [B, 3, 3] | (1/V) ∂E/∂ε under a symmetric strain ε (ASE's sign); 0 for non-periodic |
| ``noise`` | [N, 3] | denoising head |
| ``charges`` | [N] | latent charges, Σ per structure = total charge |
| ``dipole`` | [B, 3] | Σ q_i (r_i − r_centre of mass), e·Å; 0 for periodic structures |
| ``atom_logits`` | [N, 119] | masked-atom head |
| ``residue``, ``residue_index`` | [R, D], [R, 2] | per-residue readout, rows' (graph, residue_id) |
| ``properties`` | [B, P] | graph-level property head |
| ``embedding`` | [B, D] | invariant structure embedding |

plus ``atom_energy`` [N] and any output of a head added by fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from ase.data import atomic_masses
from torch import Tensor, nn

from data_pipeline.batch import AtomBatch, edge_vectors
from data_pipeline.config_mapping import from_mapping
from data_pipeline.schema import BadInputError
from data_pipeline.vocab import LEVELS_OF_THEORY, level_key
from model.backbone import BackboneConfig, EquivariantTransformer
from model.coverage import TrainingCoverage
from model.heads import HEADS, Head, HeadInput
from model.long_range import LONG_RANGE_METHODS, Electrostatics
from model.lora import LoRAConfig, apply_lora
from model.reference_energies import NUM_ELEMENTS, ReferenceEnergies, table_from_dict
from model.sizes import backbone_config
from model.zbl import MAX_SWITCH, ZBLRepulsion

NEW_MODEL_ZBL = (
    True  # model_config()'s default for ModelConfig.zbl (the dataclass keeps old checkpoints' off)
)
NEW_MODEL_ZBL_SWITCH = (
    0.7  # model_config()'s ModelConfig.zbl_switch (the dataclass keeps old checkpoints' 1.0)
)
PRETRAINING_HEADS: tuple[str, ...] = ("energy", "forces_direct", "noise", "charges", "atom_type", "embedding")
# Outputs the model derives itself, and the heads each needs at least (electrostatics adds ``charges`` to
# the energy's; direct ``forces`` need ``forces_direct``).
DERIVED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "energy": ("energy",),
    "forces": ("energy",),
    "stress": ("energy",),
    "dipole": ("charges",),
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`AtomFM` (saved as ``model_config.json`` with its weights).

    heads: names from :data:`model.heads.HEADS`; head_options: keyword arguments per head name.
    long_range: add the electrostatic energy of the latent charges (needs the ``charges`` head);
    long_range_method: ``ewald`` | ``pme`` (periodic structures; non-periodic ones use the direct sum) or
    ``direct`` (non-periodic data only); long_range_smearing: Gaussian charge width σ, Å;
    long_range_damping: radius (Å, ≤ backbone cutoff) inside which electrostatics is smoothly switched off.
    conservative_forces: what the ``forces`` output is: −∂E/∂x (True) or the direct head (False). Training
    sets it to what the forces were trained as (``model.conservative_forces`` in a run config), so the
    checkpoint says which forces it can serve.
    reference_energies: initial ``{level of theory: {element: eV}}``; fitted tables replace it in the weights.
    main_level_of_theory: what the ASE calculator predicts unless told otherwise.
    levels_of_theory: the model's vocabulary of levels (the built-in one plus any its data named, appended);
    ``backbone.num_levels`` is its length.
    lora: low-rank adapters on the backbone (``model.lora``), present in fine-tuning checkpoints only.
    zbl: add the ZBL screened nuclear repulsion (:mod:`model.zbl`) to the energy, so atoms pushed closer than any
    training pair repel. Off in this dataclass, so a ``model_config.json`` written before the field existed
    loads as it was trained; on for new models (:func:`model_config`, hence every training config unless it sets
    ``model.overrides.zbl: false``).
    zbl_switch: the fraction of a pair's covalent bond length at which the prior has switched off: 1.0 in this
    dataclass (checkpoints written before the field), 0.7 for new models, below the shortest real bonds, so
    that the prior is zero at every training geometry (:mod:`model.zbl`).
    coverage: what the training batches held (elements, shortest distance), written by the trainer; the ASE
    calculator warns outside it. None: unknown (an untrained model, an older checkpoint).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    heads: list[str] = field(default_factory=lambda: list(PRETRAINING_HEADS))
    head_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    long_range: bool = True
    long_range_method: str = "ewald"
    long_range_smearing: float = 1.0
    long_range_damping: float = 0.0
    conservative_forces: bool = True
    reference_energies: dict[str, dict[str, float]] = field(default_factory=dict)
    main_level_of_theory: str = "none"
    levels_of_theory: list[str] = field(default_factory=lambda: list(LEVELS_OF_THEORY))
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # adapters while fine-tuning; merged at export
    zbl: bool = False
    zbl_switch: float = 1.0
    coverage: TrainingCoverage | None = None

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig.from_dict(self.backbone)
        if isinstance(self.lora, dict):
            self.lora = from_mapping(LoRAConfig, self.lora, prefix="lora")
        self.heads = list(self.heads)
        for name in self.heads:
            if name not in HEADS:
                raise BadInputError(
                    f"unknown head {name!r}; registered heads: {', '.join(HEADS)}", field="heads"
                )
        if len(set(self.heads)) != len(self.heads):
            raise BadInputError(f"heads listed twice in {self.heads}", field="heads")
        for name in self.head_options:
            if name not in self.heads:
                raise BadInputError(
                    f"head_options for {name!r}, which is not among the heads {self.heads}",
                    field="head_options",
                )
        if self.long_range and "charges" not in self.heads:
            raise BadInputError(
                "long_range needs the 'charges' head; add it to heads or set long_range: false",
                field="long_range",
            )
        if self.long_range_method not in LONG_RANGE_METHODS:
            raise BadInputError(
                f"unknown long_range_method {self.long_range_method!r}; "
                f"expected one of {', '.join(LONG_RANGE_METHODS)}",
                field="long_range_method",
            )
        if not 0.0 <= self.long_range_damping <= self.backbone.cutoff:
            raise BadInputError(
                f"long_range_damping {self.long_range_damping} Å must lie in [0, backbone cutoff "
                f"{self.backbone.cutoff} Å]: damped pairs come from the model's edges",
                field="long_range_damping",
            )
        if not 0.0 < self.zbl_switch <= MAX_SWITCH:
            raise BadInputError(
                f"zbl_switch {self.zbl_switch} must lie in (0, {MAX_SWITCH}]: the fraction of a pair's covalent "
                "bond length at which the repulsion prior has switched off",
                field="zbl_switch",
            )
        self.levels_of_theory = [level_key(n) for n in self.levels_of_theory]
        if self.levels_of_theory[: len(LEVELS_OF_THEORY)] != list(LEVELS_OF_THEORY):
            raise BadInputError(
                "levels_of_theory must start with the built-in vocabulary (data_pipeline.vocab); new levels are "
                "appended",
                field="levels_of_theory",
            )
        if len(self.levels_of_theory) != self.backbone.num_levels:
            raise BadInputError(
                f"{len(self.levels_of_theory)} levels of theory but backbone.num_levels is "
                f"{self.backbone.num_levels}",
                field="levels_of_theory",
            )
        if self.main_level_of_theory.lower() not in self.levels_of_theory:
            raise BadInputError(
                f"unknown main_level_of_theory {self.main_level_of_theory!r}; "
                f"expected one of {', '.join(self.levels_of_theory)}",
                field="main_level_of_theory",
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["backbone"] = self.backbone.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str | None = None) -> ModelConfig:
        """From a mapping (YAML/JSON); an unknown key or a wrong type is a ``BadInputError`` naming it."""
        return from_mapping(cls, copy.deepcopy(dict(values)), source=source)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The named size (see ``atomfm model list``) with overrides; keys that are not :class:`ModelConfig`
    fields go to the backbone (``model_config("small", lmax=4, long_range=False)``). New models have the ZBL
    repulsion prior unless ``zbl=False``."""
    own = {f.name for f in dataclasses.fields(ModelConfig)} - {"backbone"}
    defaults = {"zbl": NEW_MODEL_ZBL, "zbl_switch": NEW_MODEL_ZBL_SWITCH}
    model_overrides = defaults | {k: v for k, v in overrides.items() if k in own}
    backbone_overrides = {k: v for k, v in overrides.items() if k not in own}
    if "levels_of_theory" in model_overrides and isinstance(
        model_overrides["levels_of_theory"], list | tuple
    ):
        backbone_overrides.setdefault("num_levels", len(model_overrides["levels_of_theory"]))
    backbone = backbone_config(name, **backbone_overrides)
    return from_mapping(ModelConfig, {"backbone": backbone, **copy.deepcopy(model_overrides)})


class AtomFM(nn.Module):
    """SE(3)-equivariant atomistic foundation model: see the module docstring for the outputs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = copy.deepcopy(config)
        bb = self.config.backbone
        self.backbone = EquivariantTransformer(bb)
        self.heads = nn.ModuleDict({name: self._build_head(name) for name in self.config.heads})
        self.reference_energies = ReferenceEnergies(bb.num_levels)
        self.reference_energies.set_table(
            table_from_dict(self.config.reference_energies, self.config.levels_of_theory)
        )
        self.electrostatics = (
            Electrostatics(
                self.config.long_range_method, self.config.long_range_smearing, self.config.long_range_damping
            )
            if self.config.long_range
            else None
        )
        self.zbl = ZBLRepulsion(bb.cutoff, self.config.zbl_switch) if self.config.zbl else None
        self.register_buffer("atomic_masses", torch.tensor(atomic_masses[:NUM_ELEMENTS]), persistent=False)
        apply_lora(self, self.config.lora)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype positions, cells and energies are computed in: that of the model's buffers (the weights',
        unless an engine casts only parameters, as DeepSpeed's bf16 mode does, keeping buffers in fp32)."""
        return self.reference_energies.energies.dtype

    def _build_head(self, name: str) -> Head:
        bb = self.config.backbone
        try:
            return HEADS[name](bb.channels, bb.lmax, **self.config.head_options.get(name, {}))
        except TypeError as err:
            raise ValueError(f"head_options for head {name!r}: {err}") from None

    def add_head(self, name: str, **options: Any) -> Head:
        """Add head ``name`` from :data:`model.heads.HEADS` (fine-tuning); recorded in ``config``."""
        if name in self.heads:
            raise ValueError(f"the model already has a head {name!r}")
        if name not in HEADS:
            raise ValueError(f"unknown head {name!r}; registered heads: {', '.join(HEADS)}")
        self.config.heads.append(name)
        if options:
            self.config.head_options[name] = dict(options)
        head = self._build_head(name).to(device=self.reference_energies.energies.device, dtype=self.dtype)
        self.heads[name] = head
        return head

    def available_outputs(self) -> list[str]:
        """Every output name this model can return."""
        out = [o for o, needs in DERIVED_OUTPUTS.items() if all(h in self.heads for h in needs)]
        return out + [o for head in self.heads.values() for o in head.outputs if o not in out]

    def forward(
        self, batch: AtomBatch, outputs: Iterable[str] = ("energy",), conservative: bool | None = None
    ) -> dict[str, Tensor]:
        """Requested ``outputs`` for a batch of the batch contract; ``conservative`` (default: the config's)
        chooses what ``forces`` means. Gradients are taken even under ``torch.no_grad`` when forces or
        stress are asked for; with ``self.training`` they keep their graph (for force losses)."""
        outputs = tuple(dict.fromkeys(outputs))
        conservative = self.config.conservative_forces if conservative is None else conservative
        heads = self._heads_for(outputs, conservative)
        grad_wrt_pos = "forces" in outputs and conservative
        need_grad = grad_wrt_pos or "stress" in outputs
        with torch.set_grad_enabled(torch.is_grad_enabled() or need_grad):
            return self._forward(batch, outputs, heads, grad_wrt_pos, "stress" in outputs)

    def _heads_for(self, outputs: tuple[str, ...], conservative: bool) -> list[str]:
        """Heads to run for ``outputs``; raises ValueError naming an output this model cannot give."""
        needed: list[str] = []
        for name in outputs:
            needs = self._heads_for_output(name, conservative)
            if not needs:
                raise ValueError(
                    f"unknown output {name!r}; this model gives {', '.join(self.available_outputs())}"
                )
            missing = [h for h in needs if h not in self.heads]
            if missing:
                raise ValueError(
                    f"output {name!r} needs the head(s) {', '.join(missing)}, which this model lacks; "
                    f"add them with model.add_head(name)"
                )
            needed += [h for h in needs if h not in needed]
        return needed

    def _heads_for_output(self, name: str, conservative: bool) -> list[str]:
        if name == "forces" and not conservative:
            return ["forces_direct"]
        if name in ("energy", "forces", "stress"):
            return ["energy"] + (["charges"] if self.electrostatics is not None else [])
        if name == "dipole":
            return ["charges"]
        return [h for h, head in self.heads.items() if name in head.outputs]

    def _forward(
        self,
        batch: AtomBatch,
        outputs: tuple[str, ...],
        heads: list[str],
        grad_wrt_pos: bool,
        want_stress: bool,
    ) -> dict[str, Tensor]:
        dtype, num_graphs = self.dtype, int(batch.natoms.shape[0])
        with torch.autocast(device_type=batch.pos.device.type, enabled=False):
            pos = batch.pos.to(dtype)
            cell = batch.cell.to(dtype).reshape(num_graphs, 3, 3)
            if grad_wrt_pos and not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            strain = None
            if want_stress:
                strain = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=pos.device, requires_grad=True)
                symmetric = 0.5 * (strain + strain.transpose(1, 2))
                pos = pos + torch.einsum("ni,nij->nj", pos, symmetric[batch.batch])
                cell = cell + torch.bmm(cell, symmetric)
            edge_index, edge_vec = self._edges(batch, pos, cell)

        x = self.backbone(
            batch.z,
            edge_index,
            edge_vec,
            batch.batch,
            batch.charge,
            batch.spin,
            batch.level_of_theory,
            batch.domain,
            vector_input=getattr(batch, "dens_forces", None),
            noise_level=getattr(batch, "noise_level", None),
        )
        polar = self.backbone.polar.to(x.dtype)
        inp = HeadInput(
            x=x * polar,  # physical heads read polar channels only: mirror-invariant energies
            pseudo_scalars=x[:, 0, polar == 0],
            z=batch.z,
            batch=batch.batch,
            num_graphs=num_graphs,
            pos=pos,
            charge=batch.charge,
            residue_id=getattr(batch, "residue_id", None),
        )
        results: dict[str, Tensor] = {}
        for name in heads:
            results.update(self.heads[name](inp))
        if "charges" in results:
            results["charges"] = results["charges"].to(dtype)
        if "dipole" in outputs:
            results["dipole"] = self._dipole(results["charges"], pos, batch)

        if "energy" in outputs or grad_wrt_pos or want_stress:
            results["energy"] = self._energy(results, batch, pos, cell, edge_index, edge_vec, num_graphs)
        if grad_wrt_pos or want_stress:
            wrt = [t for t in (pos if grad_wrt_pos else None, strain) if t is not None]
            grads = torch.autograd.grad(results["energy"].sum(), wrt, create_graph=self.training)
            if grad_wrt_pos:
                results["forces"] = -grads[0]
            if want_stress:
                volume = torch.linalg.det(cell.detach()).abs()
                periodic = batch.pbc.reshape(num_graphs, 3).any(dim=1)
                stress = grads[-1] / torch.where(periodic, volume, torch.ones_like(volume))[:, None, None]
                results["stress"] = stress * periodic[:, None, None]
        if "forces" in outputs and not grad_wrt_pos:
            results["forces"] = results["forces_direct"]
        companions = ("residue_index",) if "residue" in outputs else ()
        return {name: results[name] for name in outputs + companions}

    def _edges(self, batch: AtomBatch, pos: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
        """Edge vectors r_j − r_i + S·cell [E, 3] by explicit differences (the backbone drops those beyond its
        cutoff)."""
        return batch.edge_index, edge_vectors(batch, pos, cell)

    def _energy(
        self,
        results: dict[str, Tensor],
        batch: AtomBatch,
        pos: Tensor,
        cell: Tensor,
        edge_index: Tensor,
        edge_vec: Tensor,
        num_graphs: int,
    ) -> Tensor:
        atom_energy = results["atom_energy"].to(self.dtype) + self.reference_energies(
            batch.z, batch.level_of_theory[batch.batch]
        )
        energy = atom_energy.new_zeros(num_graphs).index_add(0, batch.batch, atom_energy)
        if self.zbl is not None:
            energy = energy + self.zbl(batch.z, edge_index, edge_vec, batch.batch, num_graphs)
        if self.electrostatics is not None:
            energy = energy + self.electrostatics(
                results["charges"],
                pos,
                batch.batch,
                cell,
                batch.pbc.reshape(num_graphs, 3),
                edge_index,
                edge_vec,
            )
        return energy

    def _dipole(self, charges: Tensor, pos: Tensor, batch: AtomBatch) -> Tensor:
        """Σ q_i (r_i − centre of mass) per structure [B, 3], e·Å; 0 for periodic structures."""
        num_graphs = int(batch.natoms.shape[0])
        mass = self.atomic_masses.to(pos.dtype)[batch.z]
        zeros = pos.new_zeros(num_graphs, 3)
        total_mass = pos.new_zeros(num_graphs).index_add(0, batch.batch, mass)
        centre = zeros.index_add(0, batch.batch, mass[:, None] * pos) / total_mass[:, None]
        dipole = zeros.index_add(0, batch.batch, charges[:, None] * (pos - centre[batch.batch]))
        periodic = batch.pbc.reshape(num_graphs, 3).any(dim=1)
        return dipole * (~periodic)[:, None]
