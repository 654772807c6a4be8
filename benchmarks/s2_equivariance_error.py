"""Equivariance error of the separable S² activation against grid resolution (its aliasing error).

    OMP_NUM_THREADS=1 python benchmarks/s2_equivariance_error.py --out s2_equivariance_error.json

Features with unit-variance coefficients (as after a layer norm with unit scales), float64, random rotation R:
error = |act(D(R) x) - D(R) act(x)| / |D(R) act(x)|. The gate activation's error is float64 round-off.
Prints a table and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import json

import torch

from data_pipeline.atomic_files import write_text_atomic
from model.activation import SeparableS2Activation, default_s2_resolution
from model.so3 import CoefficientLayout, rotate, wigner_d


def relative_error(lmax: int, resolution: int, generator: torch.Generator) -> float:
    channels = 16
    x = torch.randn(64, (lmax + 1) ** 2, channels, dtype=torch.float64, generator=generator)
    scalars = torch.randn(64, channels, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    wigner = wigner_d(q * torch.det(q), lmax)
    activation = SeparableS2Activation(CoefficientLayout(lmax, lmax), channels, resolution).double()
    expected = rotate(activation(x, scalars), wigner)
    return float((activation(rotate(x, wigner), scalars) - expected).norm() / expected.norm())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="s2_equivariance_error.json")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    multiples = (2, 3, 4, 6)
    rows = []
    for lmax in range(1, 7):
        errors = {m: relative_error(lmax, m * (lmax + 1), generator) for m in multiples}
        rows.append(
            {
                "lmax": lmax,
                "default_resolution": default_s2_resolution(lmax),
                "errors_by_resolution": {str(m * (lmax + 1)): e for m, e in errors.items()},
            }
        )
    header = " ".join(f"{f'{m}(lmax+1)':>11}" for m in multiples)
    print(f"{'lmax':>4} {header}")
    for row in rows:
        print(f"{row['lmax']:>4} " + " ".join(f"{e:>11.1e}" for e in row["errors_by_resolution"].values()))
    write_text_atomic(args.out, json.dumps({"rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
