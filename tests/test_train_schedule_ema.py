"""Warm-up + cosine learning rate, and the EMA of the weights (full and ZeRO-3-partitioned)."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from train.ema import ParameterEMA, consolidate_partitions
from train.schedule import WarmupCosine, warmup_cosine_factor


def test_warmup_rises_linearly_then_cosine_reaches_the_floor():
    kw = dict(warmup_steps=10, total_steps=110, min_ratio=0.1)
    factors = [warmup_cosine_factor(s, **kw) for s in range(130)]
    assert_close(factors[:10], [(s + 1) / 11 for s in range(10)])
    assert factors[10] == 1.0
    assert_close(factors[60], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(factors[10:110], factors[11:111], strict=True))
    assert factors[110] == factors[129] == 0.1


def test_scheduler_drives_the_optimiser_and_resumes_from_its_state():
    def fresh() -> tuple[torch.optim.Optimizer, WarmupCosine]:
        opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=2e-3)
        return opt, WarmupCosine(opt, warmup_steps=5, total_steps=40, min_ratio=0.05)

    opt, sched = fresh()
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert_close(
        lrs,
        [2e-3 * warmup_cosine_factor(s, warmup_steps=5, total_steps=40, min_ratio=0.05) for s in range(25)],
    )
    opt2, sched2 = fresh()
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_ema_follows_the_warmed_up_decay_recursion():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3).double()
    ema = ParameterEMA(layer, decay=0.9)
    expected = {k: v.detach().clone() for k, v in layer.named_parameters()}
    for n in range(30):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
        ema.update(layer)
        d = min(0.9, (1 + n) / (10 + n))
        for k, p in layer.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * p.detach()
    for k, v in expected.items():
        assert_close(ema.shadow[k].double(), v, rtol=1e-6, atol=1e-6)
    restored = ParameterEMA(torch.nn.Linear(4, 3), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 30 and restored.decay == 0.9
    assert_close(restored.shadow["weight"], ema.shadow["weight"])


def test_partitioned_ema_states_join_back_into_full_tensors():
    """ZeRO-3 layout: rank r holds flattened elements [r*p, (r+1)*p) of each parameter, zero-padded."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.SiLU(), torch.nn.Linear(7, 1))
    full = {k: v.detach().clone() for k, v in model.named_parameters()}
    for world in (2, 3):
        states = []
        for rank in range(world):
            shadow = {}
            for name, value in full.items():
                part = math.ceil(value.numel() / world)
                flat = torch.cat([value.flatten(), value.new_zeros(part * world - value.numel())])
                shadow[name] = flat[rank * part : (rank + 1) * part].clone()
            states.append(
                {
                    "partitioned": True,
                    "shapes": {k: list(v.shape) for k, v in full.items()},
                    "shadow": shadow,
                    "decay": 0.9,
                    "num_updates": 1,
                }
            )
        joined = consolidate_partitions(states)
        for name, value in full.items():
            assert_close(joined[name], value)
