"""Transfer learning: masked-value pretraining, backbone persistence, fine-tuning strategies."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from conftest import FAST_MODEL, linear_baseline, log_cp10k, scores
from safetensors.torch import load_file, save_file

from transanno_sc.data import N_SPECIAL_GENE_TOKENS, tokenize
from transanno_sc.model import TransAnno
from transanno_sc.nn import TransAnnoBackbone

PRETRAIN = {"max_epochs": 2, "enable_progress_bar": False}
FINETUNE = {"max_epochs": 4, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def pretrained(lung, tmp_path_factory):
    """A backbone pretrained on all 800 cells with no labels at all, saved to a folder."""
    scvi.settings.seed = 0
    corpus = lung.copy()
    corpus.obs = corpus.obs[[]]  # no labels anywhere
    TransAnno.setup_anndata(corpus)
    model = TransAnno(corpus, **FAST_MODEL)
    model.pretrain(**PRETRAIN)
    folder = tmp_path_factory.mktemp("backbone")
    model.save_backbone(str(folder))
    return model, folder


def _gene_prior_accuracy(model, adata) -> float:
    """Accuracy of predicting each token's value bin as the commonest bin of its gene (over all
    of ``adata``'s tokens, in-sample): what a masked-value model that learned nothing from the
    other genes of the cell could reach."""
    config = model.module.config
    x = torch.as_tensor(log_cp10k(adata, model.var_names_), dtype=torch.float32)
    tokens = tokenize(x, config.max_tokens, config.n_bins, config.value_encoding)
    real = tokens.attention_mask.bool()
    real[:, 0] = False  # [CLS]
    df = pd.DataFrame(
        {"gene": tokens.gene_ids[real].numpy(), "bin": tokens.value_ids[real].numpy()}
    )
    hits = df.groupby("gene")["bin"].agg(lambda b: np.bincount(b).max()).sum()
    return float(hits / len(df))


def test_pretrain_without_labels_records_history(pretrained, lung):
    model, _ = pretrained
    hist = model.history
    for key in ("pretrain_loss", "pretrain_validation_loss", "pretrain_validation_accuracy"):
        assert key in hist, sorted(hist)
    acc = hist["pretrain_validation_accuracy"].iloc[:, 0].astype(float)
    # held-out masked bins are predicted better than from the gene alone (its commonest bin:
    # 0.33 here; the commonest bin overall: 0.27); measured 0.39 after 2 epochs
    assert acc.iloc[-1] > _gene_prior_accuracy(model, lung), acc.tolist()
    assert model.is_pretrained_ and not model.is_trained_
    with pytest.raises(RuntimeError, match="train the model first"):
        model.predict(model.adata)


def test_saved_backbone_gives_identical_encodings(pretrained, query):
    model, folder = pretrained
    loaded = TransAnnoBackbone.from_pretrained(str(folder))
    loaded.eval()
    model.module.eval()
    gene_ids = torch.tensor([[1, 5, 9, 30, 0]])
    value_ids = torch.tensor([[0, 3, 1, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.inference_mode():
        a = model.module.backbone(gene_ids, value_ids, mask)
        b = loaded(gene_ids, value_ids, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_from_pretrained_reports_overlap_and_is_gene_order_invariant(
    pretrained, ref, query, rng, tmp_path
):
    _, folder = pretrained
    preds = []
    for shuffle in (False, True):
        r = ref.copy()
        if shuffle:
            r = r[:, rng.permutation(r.n_vars)].copy()
        TransAnno.setup_anndata(r, labels_key="cell_type")
        scvi.settings.seed = 0
        model = TransAnno.from_pretrained(r, str(folder))
        assert r.uns["transanno_backbone"]["fraction"] == 1.0
        vocab = pretrained[0].var_names_
        added = model.var_names_[len(vocab) :]
        assert model.var_names_[: len(vocab)] == vocab
        assert added == sorted(added) and not set(added) & set(vocab)
        assert r.uns["transanno_backbone"]["n_added_genes"] == len(added)
        model.train(**FINETUNE, finetune="partial")
        preds.append(model.predict(query, soft=True).to_numpy())
    np.testing.assert_allclose(preds[0], preds[1], atol=1e-5)
    got = scores(query.obs["cell_type"], np.asarray(model.classes_)[preds[1].argmax(1)])
    base = linear_baseline(ref, query, model.var_names_)
    assert got["f1_macro"] >= base["f1_macro"] - 0.03, (got, base)
    # a pretrained-then-fine-tuned model saves and loads like any other: same predictions
    model.save(str(tmp_path / "finetuned"))
    loaded = TransAnno.load(str(tmp_path / "finetuned"))
    assert loaded.is_pretrained_
    np.testing.assert_array_equal(loaded.predict(query, soft=True).to_numpy(), preds[1])
    np.testing.assert_array_equal(
        loaded.get_latent_representation(query), model.get_latent_representation(query)
    )


def test_from_pretrained_adds_the_reference_genes_the_backbone_lacks(pretrained, ref, query):
    """A backbone from another panel: the reference's own variable genes join the vocabulary."""
    model0, folder = pretrained
    vocab = model0.var_names_
    # 40 % of the backbone's genes carry other names in this reference (as if from another
    # tissue or panel): they are missing for the backbone, and their new names are new genes
    renamed = set(vocab[::5]) | set(vocab[1::5])
    r = ref.copy()
    r.var_names = [f"{g}-other" if g in renamed else g for g in r.var_names]
    TransAnno.setup_anndata(r, labels_key="cell_type")
    kept = TransAnno.from_pretrained(r, str(folder), reference_genes=0)
    assert kept.var_names_ == vocab
    assert r.uns["transanno_backbone"]["n_added_genes"] == 0
    scvi.settings.seed = 0
    model = TransAnno.from_pretrained(r, str(folder))
    info = r.uns["transanno_backbone"]
    assert info["fraction"] == pytest.approx(1 - len(renamed) / len(vocab))
    added = model.var_names_[len(vocab) :]
    assert info["n_added_genes"] == len(added) > 0
    # about half of the renamed genes are among the reference's 2000 most variable ones
    assert sum(g.endswith("-other") for g in added) > 0.4 * len(renamed)
    # the pretrained gene embeddings are kept, the added genes get new ones of similar length
    emb = model.module.backbone.gene_embeddings.weight.detach()
    old = model0.module.backbone.gene_embeddings.weight.detach()
    torch.testing.assert_close(emb[: old.shape[0]], old, rtol=0, atol=0)
    ratio = emb[old.shape[0] :].norm(dim=1).mean() / old[3:].norm(dim=1).mean()
    assert 0.9 < float(ratio) < 1.1
    model.train(**FINETUNE)
    # the wide path reads the added genes
    weight = model.module.wide.weight.detach().abs()
    assert weight[:, len(vocab) :].sum() > 0.1 * weight.sum()
    q = query.copy()
    q.var_names = r.var_names
    got = scores(q.obs["cell_type"], model.predict(q))
    base = linear_baseline(r, q, model.var_names_)
    assert got["f1_macro"] >= base["f1_macro"] - 0.03, (got, base)
    with pytest.raises(ValueError, match="reference_genes"):
        TransAnno.from_pretrained(r, str(folder), reference_genes=-1)


@pytest.mark.parametrize("finetune", ["head", "partial"])
def test_finetune_strategies_freeze_the_backbone(pretrained, ref, finetune):
    _, folder = pretrained
    TransAnno.setup_anndata(ref, labels_key="cell_type")
    model = TransAnno.from_pretrained(ref, str(folder))
    before = {k: v.clone() for k, v in model.module.backbone.state_dict().items()}
    model.train(max_epochs=1, enable_progress_bar=False, finetune=finetune, trainable_layers=1)
    after = model.module.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("gene_embeddings") for k in changed)
    top = f"encoder.layer.{len(model.module.backbone.encoder.layer) - 1}."
    if finetune == "head":
        assert not changed
    else:
        assert changed and all(k.startswith(top) for k in changed), sorted(changed)
    # every parameter is trainable again afterwards
    assert all(p.requires_grad for p in model.module.parameters())


def test_a_mismatched_backbone_is_caught_by_accuracy(trained, ref, query, tmp_path):
    """A backbone folder that loads without any error but whose weights do not belong to its
    vocabulary (the gene embeddings shuffled between genes, as when weights and
    vocabulary.json come from different saves) gives a Transformer near chance where the
    real one classifies well: each fine-tuned head-only (frozen backbone) without the wide
    path, so that only the backbone's features can classify."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    trained.save_backbone(str(good))
    shutil.copytree(good, bad)
    weights = load_file(bad / "model.safetensors")
    emb = weights["gene_embeddings.weight"]
    n = N_SPECIAL_GENE_TOKENS
    perm = torch.randperm(emb.shape[0] - n, generator=torch.Generator().manual_seed(0)) + n
    weights["gene_embeddings.weight"] = torch.cat([emb[:n], emb[perm]])
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    f1 = {}
    for name, folder in (("good", good), ("bad", bad)):
        r = ref.copy()
        TransAnno.setup_anndata(r, labels_key="cell_type")
        scvi.settings.seed = 0
        model = TransAnno.from_pretrained(r, str(folder), reference_genes=0, wide=False)
        assert r.uns["transanno_backbone"]["fraction"] == 1.0  # nothing looks wrong
        model.train(max_epochs=3, finetune="head", enable_progress_bar=False)
        f1[name] = scores(query.obs["cell_type"], model.predict(query))["f1_macro"]
    # measured 0.87 and 0.28 (chance: 0.25)
    assert f1["good"] >= 0.75, f1
    assert f1["bad"] < f1["good"] - 0.3, f1


def test_from_pretrained_refuses_tiny_overlap_and_bad_folders(pretrained, ref, tmp_path):
    _, folder = pretrained
    r = ref.copy()
    r.var_names = [f"OTHER{i}" for i in range(r.n_vars)]
    TransAnno.setup_anndata(r, labels_key="cell_type")
    with pytest.raises(ValueError, match="at least 10%"):
        TransAnno.from_pretrained(r, str(folder))
    with pytest.raises(FileNotFoundError, match="save_backbone"):
        TransAnno.from_pretrained(r, str(tmp_path))
    with pytest.raises(TypeError, match="n_hidden"):
        TransAnno.from_pretrained(r, str(folder), n_hidden=32)


def test_finetune_argument_errors(trained):
    with pytest.raises(ValueError, match="finetune"):
        trained.train(max_epochs=1, finetune="most")
    with pytest.raises(ValueError, match="trainable_layers"):
        trained.train(max_epochs=1, finetune="partial", trainable_layers=99)
    assert all(p.requires_grad for p in trained.module.parameters())
