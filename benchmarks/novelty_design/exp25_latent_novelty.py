"""The Transformer's own embedding as the novelty space (issue #17; lost).

For every case of ``cross_study.py`` and each seed: the public default call, then, with the
model it trained, the package's novelty distance rebuilt in the embedding (``X_transanno``)
instead of the PCA of the reference's log-expression: a query cell's mean cosine distance to
its 10 nearest training cells of its predicted type, divided by that type's median distance of
the validation cells (to the training cells of their own type), and its p-value among the
validation cells' divided distances (no query-level shift). Printed per case: the AUROC of
known against novel cells for the package's p-value (PCA space, query shift included), this
p-value and the maximum probability, and the shares of known and novel cells under p = 0.03.

    python benchmarks/novelty_design/exp25_latent_novelty.py --seeds 0 [--out FILE.csv]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cross_study as cs


def latent_pvalue(model, fwd) -> np.ndarray:
    """Novelty p-values of the query of forward pass ``fwd`` in ``model``'s embedding: the
    package's class-conditional distance (``_class_distance``) to the training cells."""
    import torch

    from transanno_sc.module._transanno import _class_distance

    def unit(z):
        z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def distance(z, labels):
        sim = unit(z) @ reference.T
        return _class_distance(sim, ref_labels, torch.as_tensor(labels)).numpy()

    classes = list(model.classes_)
    names = model.adata.obs[model.registry_["setup_args"]["labels_key"]].astype(str)
    codes = names.map({t: i for i, t in enumerate(classes)}).to_numpy()
    train, val = np.sort(model.train_indices), np.sort(model.validation_indices)
    Z = model.get_latent_representation()
    reference, ref_labels = unit(Z[train]), torch.as_tensor(codes[train])
    held = distance(Z[val], codes[val])
    median = np.ones(len(classes))
    for t in np.unique(codes[val]):
        median[t] = max(float(np.median(held[codes[val] == t])), 1e-6)
    held = held / median[codes[val]]
    forced = fwd.probs.argmax(1)
    dist = distance(fwd.latent, forced) / median[forced]
    return (held[None, :] >= dist[:, None]).mean(1)


def main(argv=None):
    from sklearn.metrics import roc_auc_score

    import transanno_sc.tl._annotate as annotate

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    cap = {}
    context_fn = annotate._context

    def context(rna, model, fwd, confidence, layer, random_state):
        cap.update(model=model, fwd=fwd)
        return context_fn(rna, model, fwd, confidence, layer, random_state)

    annotate._context = context
    rows = []
    for seed in args.seeds:
        for pair in cs.PAIRS:
            for case in cs.CASES[pair]:
                c = cs.build(pair, case, seed)
                truth = c.query.obs[c.key].astype(str).to_numpy()
                cs.run_method("transanno", c, seed, {})  # the benchmark's call
                model, fwd = cap["model"], cap["fwd"]
                p_latent, p_pca = latent_pvalue(model, fwd), fwd.novelty_pvalue
                novel = ~np.isin(truth, list(model.classes_))
                r = {"case": f"{pair}: {case}", "seed": seed}
                if novel.any():
                    r["auroc_pca"] = roc_auc_score(~novel, p_pca)
                    r["auroc_latent"] = roc_auc_score(~novel, p_latent)
                    r["auroc_probability"] = roc_auc_score(~novel, fwd.probs.max(1))
                    r["novel_p<0.03_pca"] = 100 * float((p_pca[novel] < 0.03).mean())
                    r["novel_p<0.03_latent"] = 100 * float((p_latent[novel] < 0.03).mean())
                r["known_p<0.03_pca"] = 100 * float((p_pca[~novel] < 0.03).mean())
                r["known_p<0.03_latent"] = 100 * float((p_latent[~novel] < 0.03).mean())
                rows.append(r)
                print(json.dumps(r), flush=True)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    print(df.groupby("case").median(numeric_only=True).drop(columns="seed").round(3).to_string())


if __name__ == "__main__":
    main()
