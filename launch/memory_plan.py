"""Memory planning: what a model size needs per GPU under ZeRO 0–3, and how many atoms fit beside it.

Model states, bytes per GPU for P parameters on N GPUs in all. atomfm keeps fp32 weights (bf16 is DeepSpeed's
``torch_autocast`` over them) and trains with AdamW (two fp32 moments), so:

    stage 0:  weights 4P + gradients 4P + moments 8P                              (DeepSpeed has no estimator)
    stage 1:  weights 4P + gradients 4P + (fp32 partition 4P + moments 8P) / N     (DeepSpeed has no estimator)
    stage 2:  weights 4P + (gradients 4P + fp32 partition 4P + moments 8P) / N
    stage 3:  (weights 4P + gradients 4P + moments 8P) / N + 4L (the largest layer, gathered whole)

Stages 1 and 2 keep an fp32 partition of the weights beside them, a copy even when the weights are fp32
(``stage_1_and_2``: "cloned and detached"); stage 3 uses fp32 weight partitions as they are. DeepSpeed's
estimators (``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``, no offload)
count the mixed-precision layout with 16-bit weights: stage 2 as 2P + 18P/N (16-bit weights; 16-bit and fp32
gradients, fp32 weights, moments per partition), stage 3 as 18P/N + 4L (16-bit weights, fp32 gradients,
weights and moments per partition). So atomfm's stage 2 is DeepSpeed's + 2P − 2P/N and its stage 3
DeepSpeed's − 2P/N; both are reported, and the plan uses atomfm's own. Under ZeRO-3 DeepSpeed may keep more
than one layer gathered (``stage3_max_live_parameters``, 1e9 by default, and the prefetch bucket); the
estimate, like DeepSpeed's, counts the largest layer.

Activations come from the model's analytic count (``model/activation_memory.py``) per 1,000 atoms, at 2 bytes
a value under bf16 and 4 under fp32, with and without activation checkpointing; conservative forces (a double
backward) take ``CONSERVATIVE_FACTOR`` times the direct-force figure, checkpointed or not. ``RESERVED_FRACTION``
of each GPU is left for the CUDA context, NCCL and DeepSpeed's communication buckets and allocator slack.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

RESERVED_FRACTION = 0.10
CONSERVATIVE_FACTOR = 3.0  # measured for `tiny` on a 64-atom silicon cell: 12.9 / 4.3 GiB (docs/model.md)
DEFAULT_TARGET_ATOMS = 1000  # the atoms per GPU a plan aims for when --max-atoms is not given
MEMORY_UNITS = {
    "b": 1,
    "kb": 2**10,
    "kib": 2**10,
    "mb": 2**20,
    "mib": 2**20,
    "gb": 2**30,
    "gib": 2**30,
    "tb": 2**40,
    "tib": 2**40,
}


def parse_memory(text: str) -> int:
    """``"80GB"`` → bytes. GB and GiB both mean 2³⁰ bytes: an "80 GB" GPU has 81,920 MiB (``nvidia-smi``)."""
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number) :] or "gb"
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in MEMORY_UNITS or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 80GB, 80GiB, 141GB or 24000MiB")
    return int(value * MEMORY_UNITS[unit])


@dataclass
class ModelSize:
    """What the plan needs of a model: its parameters and the largest layer's (DeepSpeed's definition: the
    parameters a module holds itself, its children's left out)."""

    name: str
    parameters: int
    largest_layer_parameters: int
    activation_bytes_per_1000_atoms: float  # direct forces, no checkpointing, at the plan's precision
    checkpointed_bytes_per_1000_atoms: float


def measure_model(name: str, *, precision: str = "bf16", edges_per_atom: float = 50.0) -> ModelSize:
    """Count a named size on the meta device (no memory is allocated, so ``xl`` counts anywhere)."""
    import torch

    from model.activation_memory import estimate_activation_memory
    from model.atomfm import AtomFM, model_config

    cfg = model_config(name)
    with torch.device("meta"):
        model = AtomFM(cfg)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    act = estimate_activation_memory(cfg.backbone, 1000, edges_per_atom, 2 if precision == "bf16" else 4)
    return ModelSize(
        name=name,
        parameters=sum(p.numel() for p in model.parameters()),
        largest_layer_parameters=largest,
        activation_bytes_per_1000_atoms=act.total_bytes,
        checkpointed_bytes_per_1000_atoms=act.checkpointed_bytes,
    )


@dataclass
class ModelStates:
    """Bytes per GPU of one ZeRO stage's weights, gradients and optimiser state."""

    stage: int
    weights: float
    gradients: float
    optimiser: float
    gathered: float = 0.0  # ZeRO-3: the largest layer's full weights while it runs
    deepspeed_estimate: int | None = None  # DeepSpeed's own figure (16-bit weights), stages 2 and 3

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimiser + self.gathered


def model_states(
    parameters: int, largest_layer: int, stage: int, gpus_per_node: int, nodes: int = 1
) -> ModelStates:
    """atomfm's model states per GPU for ``stage`` (see the module docstring), with DeepSpeed's estimate."""
    p, n = float(parameters), gpus_per_node * nodes
    if stage == 0:
        states = ModelStates(0, 4 * p, 4 * p, 8 * p)
    elif stage == 1:
        states = ModelStates(1, 4 * p, 4 * p, 12 * p / n)
    elif stage == 2:
        states = ModelStates(2, 4 * p, 4 * p / n, 12 * p / n)
    elif stage == 3:
        states = ModelStates(3, 4 * p / n, 4 * p / n, 8 * p / n, gathered=4.0 * largest_layer)
    else:
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    states.deepspeed_estimate = deepspeed_estimate(parameters, largest_layer, stage, gpus_per_node, nodes)
    return states


def deepspeed_estimate(
    parameters: int, largest_layer: int, stage: int, gpus_per_node: int, nodes: int = 1
) -> int | None:
    """GPU bytes from DeepSpeed's own estimator for ``stage`` (no offload); None for stages 0 and 1."""
    if stage not in (2, 3):
        return None
    # Importing DeepSpeed logs its accelerator choice to stdout, which must stay the plan's (--json).
    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    if stage == 2:
        _, gpu = estimate_zero2_model_states_mem_needs(
            parameters, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False
        )
        return gpu
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        parameters,
        largest_layer,
        num_gpus_per_node=gpus_per_node,
        num_nodes=nodes,
        cpu_offload=False,
        cpu_offload_params=False,
    )
    return gpu


@dataclass
class Option:
    """One way to run: a ZeRO stage, checkpointing on or off, and the atoms per GPU that then fit."""

    zero_stage: int
    activation_checkpointing: bool
    model_states_bytes: float
    activation_bytes_per_1000_atoms: float
    max_atoms: int  # what fits in the memory left; 0: the model states alone do not fit


@dataclass
class Plan:
    model: ModelSize
    gpus_per_node: int
    nodes: int
    gpu_memory_bytes: int
    precision: str
    conservative: bool
    edges_per_atom: float
    target_atoms: int
    stages: list[ModelStates]
    options: list[Option]
    recommended: Option
    fits_target: bool
    notes: list[str] = field(default_factory=list)

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_bytes * (1 - RESERVED_FRACTION)

    def overrides(self) -> list[str]:
        """The training-config overrides that apply the recommendation."""
        r = self.recommended
        return [
            f"deepspeed.zero_stage={r.zero_stage}",
            f"model.activation_checkpointing={'true' if r.activation_checkpointing else 'false'}",
            f"data.max_atoms={round_atoms(r.max_atoms)}",
            f"precision={self.precision}",
        ]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stages"] = [asdict(s) | {"total": s.total} for s in self.stages]
        out["usable_bytes"] = self.usable_bytes
        out["overrides"] = self.overrides()
        return out


def round_atoms(n: int) -> int:
    """A tidy ``data.max_atoms``: rounded down to a multiple of 100 (of 10 below 1,000)."""
    step = 100 if n >= 1000 else 10
    return max(n // step * step, min(n, step))


def plan_memory(
    model: ModelSize,
    *,
    gpus_per_node: int,
    gpu_memory_bytes: int,
    nodes: int = 1,
    precision: str = "bf16",
    conservative: bool = False,
    edges_per_atom: float = 50.0,
    target_atoms: int | None = None,
) -> Plan:
    """Every (ZeRO stage, checkpointing) option, and the first in order of preference that fits the target.

    Preference: one GPU in all runs stage 0 (ZeRO has nothing to partition); otherwise ZeRO-2 (its
    communication volume is plain data parallelism's) without checkpointing, then with it (about a third more
    compute), then ZeRO-3 (half as much communication again, a gather before every layer) without and with.
    Conservative forces rule out ZeRO-3 (the double backward needs the full weights) and checkpointing (it
    saves little there).
    """
    total_gpus = gpus_per_node * nodes
    stages = [
        model_states(model.parameters, model.largest_layer_parameters, s, gpus_per_node, nodes)
        for s in range(4)
    ]
    usable = gpu_memory_bytes * (1 - RESERVED_FRACTION)
    options = []
    for states in stages:
        for checkpointing in (False, True):
            per_1000 = (
                model.checkpointed_bytes_per_1000_atoms
                if checkpointing
                else model.activation_bytes_per_1000_atoms
            )
            if conservative:
                per_1000 = CONSERVATIVE_FACTOR * model.activation_bytes_per_1000_atoms
            left = usable - states.total
            atoms = int(left / per_1000 * 1000) if left > 0 else 0
            options.append(Option(states.stage, checkpointing, states.total, per_1000, atoms))
    if total_gpus == 1:
        order = [(0, False), (0, True)]
    else:
        order = [(2, False), (2, True), (3, False), (3, True)]
    if conservative:
        order = [(stage, ckpt) for stage, ckpt in order if stage < 3 and not ckpt]
    by_key = {(o.zero_stage, o.activation_checkpointing): o for o in options}
    candidates = [by_key[key] for key in order]
    target = target_atoms or DEFAULT_TARGET_ATOMS
    fitting = [o for o in candidates if o.max_atoms >= target]
    recommended = fitting[0] if fitting else max(candidates, key=lambda o: o.max_atoms)
    notes = []
    if not fitting:
        notes.append(
            f"no option holds {target:,} atoms per GPU; the most is {recommended.max_atoms:,}: use more GPUs "
            "(ZeRO-3 divides the model states by them), bf16, a shorter cutoff (fewer edges) or a smaller model"
        )
    if conservative:
        notes.append(
            "conservative forces: activations counted at "
            f"{CONSERVATIVE_FACTOR:g}x the direct-force figure; ZeRO-3 and activation checkpointing left out"
        )
    return Plan(
        model=model,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        gpu_memory_bytes=gpu_memory_bytes,
        precision=precision,
        conservative=conservative,
        edges_per_atom=edges_per_atom,
        target_atoms=target,
        stages=stages,
        options=options,
        recommended=recommended,
        fits_target=bool(fitting),
        notes=notes,
    )
