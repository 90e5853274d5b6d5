"""Scale of the passes issue 12 found quadratic: conversion and first-run seconds of the
generated hostile models (``tests/hostile_models.py``) at growing sizes, and a chain of
100,000 nodes (``Neg`` / ``Relu`` alternating) converted and run once.

    JAX_PLATFORMS=cpu PYTHONPATH=. python benchmarks/hostile_scale.py [--sizes 1000,4000,16000]

Linear passes show seconds growing with the size, not with its square. The first run of a
long chain is dominated by JAX tracing (about 0.1 ms per op) and XLA compiling (about 0.1 ms
per op): both linear, so 100,000 ops take tens of seconds, not minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import hostile_models  # noqa: E402
import onnx2flax  # noqa: E402

F = np.float32


class _Fixed:
    """A generator's ``rng`` whose first ``integers`` call (the size) returns ``n``."""

    def __init__(self, n):
        self.n, self.rng, self.first = n, np.random.default_rng(0), True

    def integers(self, *args, **kwargs):
        if self.first:
            self.first = False
            return self.n
        return self.rng.integers(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.rng, name)


def _sized(generator, n):
    return generator(_Fixed(n), Path("."), True)


def _time(case) -> tuple[float, float]:
    start = time.perf_counter()
    converted = onnx2flax.convert(case.model.SerializeToString(), progress=False)
    converted_at = time.perf_counter()
    got = converted.run(case.feeds)
    done = time.perf_counter()
    if case.expected is not None:
        np.testing.assert_allclose(got[0], case.expected[0], rtol=1e-5, atol=1e-5)
    return converted_at - start, done - converted_at


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--chain", type=int, default=100_000)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print("| class | nodes | convert s | first run s |\n|---|---|---|---|")
    for name in ("chained_if", "castlike_chain", "alike_names", "relu_chain"):
        for n in sizes:
            convert_s, run_s = _time(_sized(getattr(hostile_models, name), n))
            print(f"| {name} | {n} | {convert_s:.2f} | {run_s:.2f} |", flush=True)
    convert_s, run_s = _time(_sized(hostile_models.relu_chain, args.chain))
    print(f"| relu_chain | {args.chain} | {convert_s:.2f} | {run_s:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
