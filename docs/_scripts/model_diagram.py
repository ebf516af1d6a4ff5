"""Draw ``docs/_static/model_diagram.png``: the TransAnno model, from a cell to its label.

Run from the repository root after changing the model: ``python docs/_scripts/model_diagram.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).parents[1] / "_static" / "model_diagram.png"

BLUE, GREEN, ORANGE, GREY, PURPLE = "#dbe8f6", "#dcefdc", "#fde5c8", "#eeeeee", "#e8def3"


def box(ax, x, y, w, h, text, color, fontsize=9, weight="normal"):
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            fc=color,
            ec="#555555",
            lw=1,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight, wrap=True)


def arrow(ax, x0, y0, x1, y1, text=None, color="#444444"):
    ax.add_patch(
        FancyArrowPatch(
            (x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, lw=1.2, color=color
        )
    )
    if text:
        ax.text(
            (x0 + x1) / 2 + 0.08, (y0 + y1) / 2, text, fontsize=7.5, color="#333333", va="center"
        )


def main() -> None:
    fig, ax = plt.subplots(figsize=(10, 7.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 7.4)
    ax.axis("off")

    box(
        ax,
        2.6,
        6.9,
        4.6,
        0.6,
        "one cell: expression over the model's genes\n(raw counts or log1p; genes matched by name)",
        GREY,
    )
    arrow(ax, 2.6, 6.58, 2.6, 6.22)
    box(ax, 2.6, 5.9, 4.6, 0.55, "counts -> normalize to 10,000 + log1p", GREY)
    arrow(ax, 2.6, 5.6, 2.6, 5.25)
    box(ax, 2.6, 4.95, 4.6, 0.55, "keep expressed genes, rank by value, cut at max_tokens", GREY)
    arrow(ax, 2.6, 4.65, 2.6, 4.3)

    # tokens
    ax.text(0.0, 3.95, "tokens", fontsize=8, style="italic", va="center")
    xs = [1.0, 1.75, 2.5, 3.25, 4.0]
    names = ["[CLS]", "Cd3e", "Nkg7", "Ccl5", "..."]
    for x, name in zip(xs, names):
        box(ax, x, 3.95, 0.62, 0.42, name, PURPLE if name == "[CLS]" else BLUE, fontsize=7.5)
    ax.text(
        2.6,
        3.38,
        "token = gene embedding + value-bin embedding\n(no positions: a cell is a set of genes)",
        ha="center",
        fontsize=7.5,
    )
    arrow(ax, 2.6, 3.2, 2.6, 2.85)
    box(
        ax,
        2.6,
        2.45,
        5.0,
        0.7,
        "Transformer encoder (transformers BertEncoder)\nn_layers x n_heads, SDPA attention, padding masked",
        ORANGE,
        weight="bold",
    )
    arrow(ax, 1.0, 2.08, 1.0, 1.65, "[CLS] state")
    box(ax, 1.6, 1.3, 2.4, 0.6, "projection -> n_latent\nobsm['X_transanno']", GREEN)
    arrow(ax, 1.6, 0.98, 3.2, 0.62)

    # wide path
    box(
        ax,
        7.6,
        4.95,
        3.6,
        0.55,
        "wide path: linear layer over the\nnormalized expression of all genes",
        BLUE,
    )
    arrow(ax, 4.9, 5.9, 7.6, 5.25)
    arrow(ax, 7.6, 4.65, 5.5, 0.62)

    box(ax, 4.6, 0.35, 3.6, 0.5, "logits -> softmax over reference types", GREEN, weight="bold")
    arrow(ax, 6.4, 0.35, 7.4, 0.35)
    box(
        ax,
        8.6,
        0.55,
        2.4,
        1.1,
        "label = argmax\nconfidence = max prob.\n< threshold: 'Unassigned'\nobs['transanno_label']",
        GREEN,
        fontsize=8,
    )
    box(
        ax,
        7.6,
        6.75,
        3.6,
        1.25,
        "training (scvi-tools + Lightning)\nstratified train/validation split\nclass-weighted cross-entropy\nAdamW, warm-up + cosine decay\nearly stopping on validation loss",
        GREY,
        fontsize=8,
    )
    fig.savefig(OUT, dpi=130, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
