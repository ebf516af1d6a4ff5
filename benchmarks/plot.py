"""Plot macro-F1 per task and method from the runner's JSON (median, seed range as error bars).

python benchmarks/plot.py benchmarks/results.json [more.json ...] --out benchmarks/results.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import summarize

COLORS = {
    "logreg_l1": "#9ecae1",
    "logreg_l2": "#4292c6",
    "celltypist": "#a1d99b",
    "celltypist_majority": "#41ab5d",
    "scanvi": "#fdae6b",
    "scanvi_semi": "#e6550d",
}
TRANSANNO_COLORS = ["#54278f", "#807dba", "#bcbddc", "#3f007d", "#9e9ac8", "#dadaeb"]


def plot(rows: list[dict], out: str, title: str = "") -> None:
    agg = summarize(rows)
    tasks = list(dict.fromkeys(agg.task))
    methods = list(dict.fromkeys(agg.method))
    ta_methods = [m for m in methods if m.startswith("transanno")]
    colors = {m: COLORS.get(m, "#888888") for m in methods}
    colors.update(
        {m: TRANSANNO_COLORS[i % len(TRANSANNO_COLORS)] for i, m in enumerate(ta_methods)}
    )
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(8, 1.9 * len(tasks)), 4.8))
    for j, m in enumerate(methods):
        sub = agg[agg.method == m].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width
        med = sub.f1_macro.to_numpy()
        err = np.vstack([med - sub.f1_macro_min.to_numpy(), sub.f1_macro_max.to_numpy() - med])
        ax.bar(
            x,
            med,
            width,
            yerr=err,
            capsize=2,
            label=m,
            color=colors[m],
            edgecolor="black" if m in ta_methods else "none",
            linewidth=0.6,
            error_kw={"elinewidth": 0.8},
        )
    ax.set_xticks(np.arange(len(tasks)))
    ax.set_xticklabels([t.replace("_", "\n", 1) for t in tasks], fontsize=9)
    ax.set_ylabel("query macro-F1 (median, bars: seed range)")
    lo = np.nanmin(agg.f1_macro_min.to_numpy())
    ax.set_ylim(max(0.0, np.floor(lo * 10) / 10 - 0.05), 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json", nargs="+", help="JSON files written by benchmarks/run.py")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results.png"))
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods")
    parser.add_argument("--title", default="Reference -> query label transfer (issue #3)")
    args = parser.parse_args(argv)
    rows = []
    for f in args.json:
        rows += json.loads(Path(f).read_text())["rows"]
    if args.methods:
        rows = [r for r in rows if r["method"] in args.methods]
    plot(rows, args.out, args.title)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
