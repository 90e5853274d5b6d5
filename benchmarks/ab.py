"""Converted vs hand-written Flax, alone: the two jitted programs called alternately.

    python benchmarks/ab.py resnet50 bert_base --calls 60

With only two engines and many alternating calls, the machine's noise affects both alike;
prints the ratio (converted / hand-written) of the median and of the fastest call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import numpy as np

import run  # noqa: E402  (sets up the path and the model specs)
import onnx2flax  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", choices=list(run.SPECS))
    parser.add_argument("--calls", type=int, default=60, help="calls per program")
    parser.add_argument("--cache", type=Path, default=run.HERE / ".cache")
    args = parser.parse_args()
    for key in args.models:
        spec = run.SPECS[key]
        converted = onnx2flax.convert(run.export(spec, key, args.cache))
        inputs = [np.moveaxis(a, 1, -1) if spec.image else a
                  for a in spec.inputs(spec.batches[0])]
        programs = {"converted": jax.jit(converted.module.apply),
                    "hand-written": jax.jit(spec.make_flax().apply)}
        times: dict[str, list[float]] = {name: [] for name in programs}
        for fn in programs.values():  # compile and warm up
            for _ in range(3):
                jax.block_until_ready(fn(converted.variables, *inputs))
        for call in range(args.calls):
            order = list(programs) if call % 2 == 0 else list(programs)[::-1]
            for name in order:
                start = time.perf_counter()
                jax.block_until_ready(programs[name](converted.variables, *inputs))
                times[name].append(time.perf_counter() - start)
        conv, hand = times["converted"], times["hand-written"]
        print(f"{spec.name} b{spec.batches[0]}: median {statistics.median(conv) * 1e3:.1f} vs "
              f"{statistics.median(hand) * 1e3:.1f} ms (ratio "
              f"{statistics.median(conv) / statistics.median(hand):.3f}), fastest "
              f"{min(conv) * 1e3:.1f} vs {min(hand) * 1e3:.1f} ms (ratio "
              f"{min(conv) / min(hand):.3f})", flush=True)


if __name__ == "__main__":
    main()
