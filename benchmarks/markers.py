"""Marker genes of TransAnno checked against known biology (issue #19).

For each task a model is trained with the package defaults (seed 0) on the reference (Zilionis:
the healthy animals, with and without them as ``batch_key``, or all cells; Baron: all cells), and
``model.marker_genes()`` ranks every vocabulary gene per reference type. Reported:

- canonical markers (textbook lists below): in the vocabulary or not, their rank by the
  model (wide + Transformer), by the wide path alone, by the Transformer alone, by a logistic
  regression's coefficients and by ``sc.tl.rank_genes_groups`` (Wilcoxon, all genes);
- top-20 overlaps of the model's markers with those of the other rankings;
- the cost of ``marker_genes`` (median of 3 runs, seconds) and the accuracy of its integrals
  (completeness: a cell's Transformer attributions add up to its logit minus the logit without
  gene tokens), and how the top 20 change with the number of steps or plain gradient x input.

The logistic regression is scikit-learn's (C=0.1, no class weights) on the log1p CP10k
reference over the model's own vocabulary (so that only the ranking differs), genes ranked by
their coefficient (CellTypist's ``extract_top_markers``).

    python benchmarks/markers.py --out benchmarks/markers
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import DATA, _dense_on, _log1p, _zilionis, train_transanno

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

MARKERS = {
    "zilionis": {
        "B cells": "Cd79a Cd79b Ms4a1 Cd19 Cd74 Ebf1 Pax5 Cd22 Fcmr",
        "T cells": "Cd3e Cd3d Cd3g Cd2 Trbc2 Bcl11b Tcf7 Lef1 Il7r Thy1 Cd28 Cd5 Cd6",
        "NK cells": "Nkg7 Gzma Gzmb Ncr1 Klrb1c Klrd1 Klrk1 Il2rb Eomes Prf1",
        "Neutrophils": "S100a8 S100a9 Retnlg Csf3r Il1b Cxcr2 Ly6g Mmp8 Mmp9 Cxcl2",
    },
    "baron": {"alpha": "Gcg", "beta": "Ins1 Ins2", "delta": "Sst", "gamma": "Ppy"},
}
#: Top-k in which a type needs at least ``need`` canonical markers.
CHECK = {"zilionis": (20, 2), "baron": (5, 1)}


def tasks(names):
    import anndata as ad

    for name in names:
        if name.startswith("zilionis"):
            a = _zilionis()
            if name.startswith("zilionis_healthy"):
                ref = a[(a.obs.condition == "healthy").to_numpy()].copy()
            elif name == "zilionis_animals":
                ref = a[a.obs.batch.isin(["h_1", "t_1"]).to_numpy()].copy()
            elif name == "zilionis_all":
                ref = a.copy()
            else:
                raise ValueError(name)
            # the animals as batch_key (n_top_genes="auto" may then choose more genes), as
            # run.py's tasks do; "_nobatch": none, as transanno_annotate without batch_key
            batches = None if name.endswith("_nobatch") else ref.obs["batch"].astype(str)
            yield (
                name,
                "zilionis",
                ref,
                "cell_type",
                None if batches is None else batches.to_numpy(),
            )
        elif name == "baron":
            yield name, "baron", ad.read_h5ad(DATA / "baron_mouse_pancreas.h5ad"), "cell_type", None
        else:
            raise ValueError(name)


def canonical(kind: str, var_names) -> dict[str, list[str]]:
    """Canonical markers per type, spelled as in ``var_names`` (case-insensitive match)."""
    lookup = {str(g).upper(): str(g) for g in var_names}
    return {
        t: [lookup.get(g.upper(), g.upper() if kind == "zilionis" else g) for g in genes.split()]
        for t, genes in MARKERS[kind].items()
    }


def ranks(order: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    return {t: {g: i + 1 for i, g in enumerate(genes)} for t, genes in order.items()}


def run_task(name, kind, ref, key, batches, seed):
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = train_transanno(ref, key, seed, ref_batches=batches)
    train_s = time.perf_counter() - t0
    vocab = list(model.var_names_)
    n_vocab = len(vocab)
    times, table = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        table = model.marker_genes(n_genes=n_vocab, return_scores=True)
        times.append(time.perf_counter() - t0)
    types = list(dict.fromkeys(table.cell_type))
    by = {}
    for col in ("score", "wide", "transformer"):
        by[col] = {
            t: table[table.cell_type == t].sort_values(col, ascending=False).gene.tolist()
            for t in types
        }
    # logistic regression's coefficients over the same genes
    r = _log1p(ref)
    X = _dense_on(r.X, r.var_names, vocab)
    y = r.obs[key].astype(str).to_numpy()
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(X, y)
    coef = clf.coef_ if clf.coef_.shape[0] > 1 else np.vstack([-clf.coef_, clf.coef_])
    by["logreg"] = {
        t: [vocab[i] for i in np.argsort(-coef[list(clf.classes_).index(t)], kind="stable")]
        for t in types
    }
    # rank_genes_groups (Wilcoxon) on all genes, and restricted to the vocabulary
    sc.tl.rank_genes_groups(r, key, method="wilcoxon", n_genes=r.n_vars)
    names = r.uns["rank_genes_groups"]["names"]
    by["wilcoxon_all"] = {t: [str(g) for g in names[t]] for t in types}
    in_vocab = set(vocab)
    by["wilcoxon_vocab"] = {t: [g for g in by["wilcoxon_all"][t] if g in in_vocab] for t in types}
    rk = {m: ranks(o) for m, o in by.items()}
    canon = canonical(kind, ref.var_names)
    k, need = CHECK[kind]
    rows = []
    for t, genes in canon.items():
        for g in genes:
            row = {"task": name, "cell_type": t, "gene": g, "in_vocabulary": g in in_vocab}
            row["in_data"] = g in ref.var_names
            for m in by:
                row[f"rank_{m}"] = rk[m][t].get(g)
            rows.append(row)
    canon_df = pd.DataFrame(rows)
    summary = []
    for t in canon:
        top = {m: by[m][t][:k] for m in by}
        hits = {m: [g for g in canon[t] if g in top[m]] for m in by}
        ours20 = set(by["score"][t][:20])
        summary.append(
            {
                "task": name,
                "cell_type": t,
                "n_cells": int(table[table.cell_type == t].n_cells.iloc[0]),
                "canonical_in_vocabulary": int(sum(g in in_vocab for g in canon[t])),
                "canonical_total": len(canon[t]),
                **{f"hits_top{k}_{m}": len(h) for m, h in hits.items()},
                "model_hits": hits["score"],
                "passes": len(hits["score"]) >= min(need, len(canon[t])),
                **{
                    f"overlap20_{m}": len(ours20 & set(by[m][t][:20]))
                    for m in ("logreg", "wilcoxon_all", "wilcoxon_vocab", "wide", "transformer")
                },
                "top10": by["score"][t][:10],
                "top10_transformer": by["transformer"][t][:10],
            }
        )
    # integration accuracy and the effect of the number of steps
    integral = integration_check(model, types, table)
    return {
        "task": name,
        "n_cells": int(ref.n_obs),
        "n_vocabulary": n_vocab,
        "train_s": train_s,
        "marker_genes_s": times,
        "marker_genes_s_median": float(np.median(times)),
        "deep_weight": float(model.module.deep_weight),
        "temperature": float(model.module.temperature),
        "summary": summary,
        "canonical": canon_df.to_dict("records"),
        "integration": integral,
        "transformer_share": float(
            table.groupby("cell_type")
            .apply(lambda d: d.transformer.abs().sum() / (d.wide.abs() + d.transformer.abs()).sum())
            .median()
        ),
    }


def integration_check(model, types, default: pd.DataFrame) -> dict:
    """Completeness error of the integrals, and top-20 agreement with other step counts."""
    from transanno_sc.model._attribution import _gated_deep_logits, _gene_embeddings, attribute

    out = {}
    for label, kw in {
        "ig8": {"n_steps": 8},
        "ig32": {"n_steps": 32},
        "gradient": {"method": "gradient"},
    }.items():
        t0 = time.perf_counter()
        tab = model.marker_genes(n_genes=len(model.var_names_), return_scores=True, **kw)
        out[f"{label}_s"] = time.perf_counter() - t0
        for col in ("score", "transformer"):
            same = []
            for t in types:
                mine = tab[tab.cell_type == t].sort_values(col, ascending=False).gene[:20]
                ref = default[default.cell_type == t].sort_values(col, ascending=False).gene[:20]
                same.append(len(set(mine) & set(ref)))
            out[f"top20_{col}_overlap_{label}_vs_ig16"] = float(np.mean(same)) / 20
    # completeness on (at most 256 of) the registered cells
    data, _ = model._markers_data(None)
    cells = np.arange(min(256, model.adata.n_obs))
    module = model.module
    scale = float(module.deep_weight) / float(module.temperature)
    errs = {8: [], 16: [], 32: []}
    for _, x_log in model._iter_log_expression(data, cells, 64):
        tokens, h = _gene_embeddings(module, x_log)
        with torch.no_grad():
            full = _gated_deep_logits(module, h, tokens.attention_mask, None)
            none = _gated_deep_logits(
                module, h, tokens.attention_mask, torch.full(h.shape[:2], 1e-30)
            )
        for n_steps, acc in errs.items():
            a = attribute(module, x_log, None, "integrated_gradients", n_steps)
            target = a.logits.argmax(1)

            def centered(o, target=target):
                return (o - o.mean(1, keepdim=True)).gather(1, target[:, None])[:, 0]

            want = (centered(full) - centered(none)).numpy() * scale
            got = a.transformer.sum(1).numpy()
            acc.append(np.abs(got - want) / np.maximum(np.abs(want), 1e-3))
    out["completeness_rel_error"] = {
        n: {
            "median": float(np.median(np.concatenate(e))),
            "p90": float(np.quantile(np.concatenate(e), 0.9)),
            "max": float(np.concatenate(e).max()),
        }
        for n, e in errs.items()
    }
    return out


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        k = CHECK["baron" if res["task"] == "baron" else "zilionis"][0]
        lines.append(
            f"### {res['task']}: {res['n_cells']} reference cells, {res['n_vocabulary']} "
            f"genes, deep_weight {res['deep_weight']:.2f}, temperature {res['temperature']:.2f}"
        )
        lines.append("")
        lines.append(
            f"marker_genes: {res['marker_genes_s_median']:.1f} s (median of 3: "
            + ", ".join(f"{t:.1f}" for t in res["marker_genes_s"])
            + f"); training {res['train_s']:.0f} s"
        )
        lines.append("")
        head = (
            f"| type | canonical in vocab | hits top {k}: model / wide / Transformer / logreg / "
            "Wilcoxon (all genes) | model's hits | top-20 overlap with logreg / Wilcoxon all / "
            "Wilcoxon vocab / Transformer alone |"
        )
        lines += [head, "| --- | --- | --- | --- | --- |"]
        for s in res["summary"]:
            hits = " / ".join(
                str(s[f"hits_top{k}_{m}"])
                for m in ("score", "wide", "transformer", "logreg", "wilcoxon_all")
            )
            ov = " / ".join(
                str(s[f"overlap20_{m}"])
                for m in ("logreg", "wilcoxon_all", "wilcoxon_vocab", "transformer")
            )
            lines.append(
                f"| {s['cell_type']} | {s['canonical_in_vocabulary']}/{s['canonical_total']} | "
                f"{hits} | {', '.join(s['model_hits'])} | {ov} |"
            )
        lines.append("")
        lines.append(
            "| type | gene | in vocab | rank: model | wide | Transformer | logreg | Wilcoxon all |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in res["canonical"]:

            def fmt(v):
                return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else str(int(v))

            lines.append(
                f"| {c['cell_type']} | {c['gene']} | {'yes' if c['in_vocabulary'] else 'no'} | "
                + " | ".join(
                    fmt(c[f"rank_{m}"])
                    for m in ("score", "wide", "transformer", "logreg", "wilcoxon_all")
                )
                + " |"
            )
        lines.append("")
        lines.append(
            "Top 10 (model): "
            + "; ".join(f"{s['cell_type']}: {', '.join(s['top10'])}" for s in res["summary"])
        )
        lines.append("")
        lines.append(
            "Top 10 (Transformer alone): "
            + "; ".join(
                f"{s['cell_type']}: {', '.join(s['top10_transformer'])}" for s in res["summary"]
            )
        )
        lines.append("")
        lines.append(
            f"Integration: {json.dumps(res['integration'])}; Transformer share of "
            f"|contribution| (median over types): {res['transformer_share']:.3f}"
        )
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["zilionis_healthy", "zilionis_healthy_nobatch", "zilionis_all", "baron"],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    results = []
    for name, kind, ref, key, batches in tasks(args.tasks):
        res = run_task(name, kind, ref, key, batches, args.seed)
        results.append(res)
        print(markdown([res]), flush=True)
        if args.out:
            Path(f"{args.out}.json").write_text(json.dumps(results, indent=1, default=str))
            Path(f"{args.out}.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
