"""Cost of the query context on large and backed queries (issues #17, #18).

A model trained on the Zilionis animals h_1, t_1 annotates ``--cells`` thinned copies of the
Zilionis cells (``scale.make_file``), each run in a fresh process: in memory and backed
(``backed="r"``), with ``query_context=True`` (over 100,000 cells or backed: streamed from a
50,000-cell sample) and ``False`` (cell by cell). Wall time of the call, peak RSS of the
process, and the share of cells "Unassigned"::

    python benchmarks/query_context_scale.py [--cells 200000] [--out benchmarks/results]

Writes ``query_context_scale.json`` and ``.md`` in ``--out`` (``query_context_scale_N`` for
another ``--cells N``); ``--backed-only`` skips the in-memory query.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale  # noqa: E402

WORK = HERE / "results_tmp" / "query_context_scale"


def _model() -> Path:
    import scvi

    import transanno_sc as ta

    folder = WORK / "model"
    if (folder / "transanno.json").exists():
        return folder
    scvi.settings.seed = 0
    lung = ta.datasets.zilionis_mouse_lung()
    ref = lung[lung.obs["batch"].isin(["h_1", "t_1"])].copy()
    ta.model.TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = ta.model.TransAnno(ref)
    model.train(enable_progress_bar=False, accelerator="cpu")
    model.save(str(folder), overwrite=True)
    return folder


def worker(path: str, model_dir: str, backed: bool, context: bool) -> dict:
    import anndata as ad
    import numpy as np

    import transanno_sc as ta

    model = ta.model.TransAnno.load(model_dir, accelerator="cpu")
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    rss_data = scale._peak_rss_gb()
    t0 = time.perf_counter()
    ta.tl.transanno_annotate(adata, model, query_context=context)
    seconds = time.perf_counter() - t0
    labels = adata.obs["transanno_label"].astype(str)
    info = adata.uns["transanno"].get("query_context") or {}
    return {
        "n_cells": adata.n_obs,
        "backed": backed,
        "query_context": context,
        "seconds": seconds,
        "peak_rss_gb": scale._peak_rss_gb(),
        "rss_after_reading_gb": rss_data,
        "unassigned": float((labels == "Unassigned").mean()),
        "sampled_cells": info.get("sampled_cells"),
        "neighbour_parts": info.get("neighbour_parts"),
        "foreign_cluster_cells": int(np.sum(info.get("foreign_clusters", {}).get("n_cells", []))),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--backed-only", action="store_true", help="skip the in-memory query")
    a = p.parse_args(argv)
    scale.WORK = WORK
    path = scale.make_file(a.cells)
    model_dir = _model()
    rows = []
    for backed in (True,) if a.backed_only else (False, True):
        for context in (False, True):
            cfg = json.dumps([str(path), str(model_dir), backed, context])
            proc = subprocess.run(
                [sys.executable, __file__, "_worker", cfg],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                print(proc.stderr[-3000:])
                raise SystemExit(proc.returncode)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = f"query_context_scale_{a.cells}" if a.cells != 200_000 else "query_context_scale"
    (a.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    lines = [
        f"# Query context on {a.cells:,} cells (`python benchmarks/query_context_scale.py "
        f"--cells {a.cells}{' --backed-only' if a.backed_only else ''}`)",
        "",
        "| query | query context | wall s | peak RSS GB | Unassigned % | sampled cells | parts "
        "| cells in foreign clusters |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {'backed' if r['backed'] else 'in memory'} | {r['query_context']} | "
            f"{r['seconds']:.0f} | {r['peak_rss_gb']:.2f} | {100 * r['unassigned']:.1f} | "
            f"{r['sampled_cells'] or '-'} | {r['neighbour_parts'] or '-'} | "
            f"{r['foreign_cluster_cells'] if r['query_context'] else '-'} |"
        )
    (a.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        scale._log = lambda msg: None
        print(json.dumps(worker(*json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
