"""Undecided clusters: a higher odds bar for partly foreign ones (not adopted), and their
cells called another type (adopted) (issue #17)

A cluster is undecided (``tl/_query_context.py``) when the cells called its majority type have
median odds under 2 : 1 while another cluster's cells called that type have 8 times those odds;
its markers may be foreign in any share. Baron's endothelial cells, held out (seed 0), sat in
a cluster with 45 % of its markers foreign (capped at 0.55, just over the threshold) and odds
2.06 : 1 (just over the bar): 14 % "Unassigned" where seeds 1 and 2 give 78 % and 94 %. The
rule measured here raises the bar for clusters whose markers are partly foreign: the odds under
which a cluster is undecided rise log-linearly from 2 : 1 at a quarter foreign (``STATE_SHARE``)
to 4 : 1 at one half (``FOREIGN_SHARE``), as in ``undecided_foreign_odds.patch``; fixed bars
(``o3f25``: 3 : 1 over a quarter foreign, ...) for comparison.

Rule ``split`` (adopted after 45916c0): in an undecided cluster, the cells called another
type than its majority are capped likewise where they are undecided on that type as well (5
cells at least, median odds under 2 : 1, a cluster called that type at 8 times the odds): a
new type split between two known ones (held-out T cells called NK cells in part and B cells
in part). Replayed on dumps of 45916c0, the package's labels at the change come back exactly.

Two steps. ``--dump DIR --seeds ...`` runs the public default call on the cases (the
cross-study benchmark's cases, ``cross_study.build``), recording the query context's clusters
and their foreign-marker shares, the probabilities and the confidence per cell (one pickle per
run). ``--replay DIR`` applies each rule to the dumps: the undecided cap enters the
confidence as a minimum, so the replay is exact (it asserts that the dumped labels come back
with the rule of the package) and prints every run whose "Unassigned" shares change.

    python benchmarks/novelty_design/exp32_undecided_foreign_odds.py --dump /tmp/d --seeds 0 1 2
    python benchmarks/novelty_design/exp32_undecided_foreign_odds.py --replay /tmp/d
"""

import argparse
import copy
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parents[1]))
import cross_study as cs

CASES = [
    *(("zilionis_heldout", f"{t} held out") for t in cs.ZILIONIS_TYPES),
    *(("baron_heldout", f"{t} held out") for t in cs.BARON_HELD),
    ("pbmc68k_heldout", "CD14+ Monocyte held out"),
    ("zilionis_to_tabula", "Monocyte novel"),
    ("tabula_to_zilionis", "nothing novel"),
    ("zilionis_subtypes", "healthy -> tumour"),
    ("zilionis_ambient", "query with 20% ambient RNA"),
    ("zilionis_ambient", "reference with 20% ambient RNA"),
    ("zilionis_panel300", "300-gene marker panel"),
    ("zilionis_panel300", "300-gene query"),
    ("zilionis_depth", "query at 10% depth"),
    ("zilionis_to_baron", "pancreas query"),
    ("tabula_to_baron", "pancreas query"),
    *(("tabula_heldout", f"{t} held out") for t in cs.TABULA_HELD),
]
#: name: (odds bar, or "interp" for the log-linear bar; foreign share the cluster must exceed)
RULES = {
    "package": (None, 0.0),
    "interp": ("interp", 0.25),
    "o3f25": (3.0, 0.25),
    "o4f25": (4.0, 0.25),
    "o4f35": (4.0, 0.35),
    "split": ("split", 0.0),
}


def dump(out: Path, seeds: list[int]) -> None:
    """One pickle per (case, seed) of the default call, with the query context's clusters."""
    import scvi

    import transanno_sc as ta
    from transanno_sc.tl import _query_context as qc

    captured = {}
    original = qc._foreign_shares

    def recording(Xm, clusters, forced, det, n_clusters, excess=False):
        shares, records = original(Xm, clusters, forced, det, n_clusters, excess=excess)
        captured.update(clusters=clusters.copy(), records=copy.deepcopy(records))
        return shares, records

    qc._foreign_shares = recording
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for pair, case in CASES:
            path = out / f"{pair}__{case.replace(' ', '_')}__{seed}.pkl"
            if path.exists():
                continue
            captured.clear()
            start = time.perf_counter()
            c = cs.build(pair, case, seed)
            q = c.query
            truth = q.obs[c.key].astype(str).to_numpy()
            q.obs = q.obs[[]]
            scvi.settings.seed = seed
            kwargs = {"enable_progress_bar": False, "random_state": seed}
            if c.batch_key is not None and c.ref.obs[c.batch_key].nunique() > 1:
                kwargs["batch_key"] = c.batch_key
            ta.tl.transanno_annotate(q, reference=c.ref, labels_key=c.key, **kwargs)
            uns = q.uns["transanno"]
            probs = q.obsm["transanno_probabilities"].to_numpy()
            record = {
                "truth": truth,
                "ref_types": sorted(set(c.ref.obs[c.key].astype(str))),
                "forced": np.asarray(uns["classes"], dtype=object)[probs.argmax(1)],
                "prob": probs.max(1),
                "conf": q.obs["transanno_confidence"].to_numpy(),
                "label": q.obs["transanno_label"].astype(str).to_numpy(),
                "clusters": captured.get("clusters"),
                "records": captured.get("records"),
            }
            with open(path, "wb") as f:
                pickle.dump(record, f)
            print(pair, case, seed, f"{time.perf_counter() - start:.0f} s", flush=True)


def replay_rule(d: dict, rule: str) -> np.ndarray:
    """The confidence of a dumped run with ``rule``'s undecided clusters capped as well."""
    from transanno_sc.tl import _query_context as qc

    odds, min_share = RULES[rule]
    conf = d["conf"].copy()
    if d["clusters"] is None or odds is None:
        return conf
    clusters, forced = d["clusters"], d["forced"]
    p = np.clip(d["prob"], 1e-9, 1 - 1e-9)
    logit = np.log(p) - np.log1p(-p)
    share = {r["cluster"]: r["foreign_share"] for r in d["records"]}
    stats = []
    for k in np.unique(clusters):
        members = np.flatnonzero(clusters == k)
        if members.size < qc.MIN_CLUSTER_CELLS:
            continue
        types, counts = np.unique(forced[members], return_counts=True)
        label = types[counts.argmax()]
        called = members[forced[members] == label]
        stats.append((k, called, label, np.median(logit[called])))
    best = {}
    for _, _, label, m in stats:
        best[label] = max(best.get(label, -np.inf), m)
    if odds == "split":
        return _split(conf, clusters, forced, logit, stats, best)
    span = qc.FOREIGN_SHARE - qc.STATE_SHARE
    for k, called, label, m in stats:
        f = share.get(k, 0.0)
        if odds == "interp":
            bar = np.log(qc.UNDECIDED_ODDS) * (1 + np.clip((f - qc.STATE_SHARE) / span, 0, 1))
        else:
            bar = np.log(odds)
        if f > min_share and m < bar and best[label] - m > np.log(qc.DECIDED_ODDS_RATIO):
            cap = np.clip(0.5 * logit[called] / np.log(qc.DECIDED_ODDS_RATIO), 0, 1)
            conf[called] = np.minimum(conf[called], cap)
    return conf


def _split(conf, clusters, forced, logit, stats, best) -> np.ndarray:
    """Rule ``split``: the cells of an undecided cluster called another type, undecided on it."""
    from transanno_sc.tl import _query_context as qc

    bar, ratio = np.log(qc.UNDECIDED_ODDS), np.log(qc.DECIDED_ODDS_RATIO)
    for k, _, label, m in stats:
        if not (m < bar and best[label] - m > ratio):
            continue
        members = np.flatnonzero(clusters == k)
        for other in np.unique(forced[members]):
            part = members[forced[members] == other]
            if other == label or other not in best or part.size < qc.MIN_CLUSTER_CELLS:
                continue
            median = np.median(logit[part])
            if median < bar and best[other] - median > ratio:
                cap = np.clip(0.5 * logit[part] / ratio, 0, 1)
                conf[part] = np.minimum(conf[part], cap)
    return conf


def replay(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.glob("*.pkl")):
        with open(path, "rb") as f:
            d = pickle.load(f)
        for rule in RULES:
            conf = replay_rule(d, rule)
            pred = np.where(conf < 0.5, cs.UNASSIGNED, d["forced"])
            if rule == "package":
                assert np.array_equal(pred == cs.UNASSIGNED, d["label"] == cs.UNASSIGNED), path
            m = cs.metrics(d["ref_types"], d["truth"], pred, d["forced"], conf)
            rows.append({"run": path.stem, "rule": rule, **m})
    df = pd.DataFrame(rows)
    base = df[df.rule == "package"].set_index("run")
    for rule in list(RULES)[1:]:
        print(f"== {rule}")
        x = df[df.rule == rule].set_index("run")
        for run, row in x.iterrows():
            b = base.loc[run]
            moved = abs(row.known_unassigned - b.known_unassigned) > 0.01
            if moved or abs(np.nan_to_num(row.novel_unassigned - b.novel_unassigned)) > 0.01:
                print(
                    f"  {run}: novel U {b.novel_unassigned:.1f} -> {row.novel_unassigned:.1f} %, "
                    f"known U {b.known_unassigned:.2f} -> {row.known_unassigned:.2f} %, "
                    f"shared macro-F1 {b.f1_macro:.3f} -> {row.f1_macro:.3f}"
                )
    return df


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dump", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--replay", type=Path)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.dump is not None:
        dump(args.dump, args.seeds)
    if args.replay is not None:
        replay(args.replay)


if __name__ == "__main__":
    main()
