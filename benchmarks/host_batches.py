"""Host-side cost of inference batches (issue #18): reading a backed .h5ad and building the
dense vocabulary batches the model is fed (``data.iter_vocab_batches``), no model.

On a GPU the forward pass is cheap and this is what bounds the cells/s of backed inference.
Runs on one thread over ``scale.make_file``'s thinned Zilionis cells (written once to
``benchmarks/results_tmp/host_batches/``), with 2,000 random vocabulary genes::

    python benchmarks/host_batches.py [--cells 100000] [--repeats 3]

Prints the median cells/s of each access pattern: the whole file, a contiguous range given
as ``indices``, every second cell, and a random 30 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    import anndata as ad

    from transanno_sc.data import iter_vocab_batches

    scale.WORK = HERE / "results_tmp" / "host_batches"
    X = ad.read_h5ad(scale.make_file(a.cells), backed="r").X
    rng = np.random.default_rng(0)
    source = np.sort(rng.choice(X.shape[1], 2000, replace=False))
    target = np.arange(2000)
    n = X.shape[0]
    patterns = {
        "whole file": None,
        "contiguous indices (30%)": np.arange(n // 10, n // 10 + 3 * n // 10),
        "every second cell": np.arange(0, 6 * n // 10, 2),
        "random 30%": np.sort(rng.choice(n, 3 * n // 10, replace=False)),
    }
    for name, idx in patterns.items():
        m = n if idx is None else idx.size
        rates = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for _ in iter_vocab_batches(X, source, target, 2000, 1024, indices=idx, max_tokens=128):
                pass
            rates.append(m / (time.perf_counter() - t0))
        print(f"{name}: {np.median(rates):,.0f} cells/s (median of {a.repeats})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
