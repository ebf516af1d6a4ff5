"""Transfer learning: masked-value pretraining, backbone persistence, fine-tuning strategies."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from conftest import FAST_MODEL

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


def test_pretrain_without_labels_records_history(pretrained):
    model, _ = pretrained
    hist = model.history
    for key in ("pretrain_loss", "pretrain_validation_loss", "pretrain_validation_accuracy"):
        assert key in hist, sorted(hist)
    acc = hist["pretrain_validation_accuracy"].iloc[:, 0].astype(float)
    # better than guessing the bin uniformly (1 / n_bins)
    assert acc.iloc[-1] > 1.5 / model.module.config.n_bins
    assert model.is_pretrained_ and not model.is_trained_
    with pytest.raises(RuntimeError):
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


def test_from_pretrained_reports_overlap_and_is_gene_order_invariant(pretrained, ref, query, rng):
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
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert np.mean(np.asarray(model.classes_)[preds[1].argmax(1)] == truth) > 0.5


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
    pred = model.predict(q)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert np.mean(np.asarray(pred) == truth) > 0.5
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
