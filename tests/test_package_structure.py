"""API conventions shared with scanpy (after scanpy's tests/test_package_structure.py)."""

from __future__ import annotations

import inspect

import pytest

import transanno_sc as ta

PUBLIC = [
    ta.tl.transanno_annotate,
    ta.tl.evaluate,
    ta.pl.confusion_matrix,
    ta.pl.confidence,
    ta.pl.training_history,
    ta.pp.gene_overlap,
    ta.pp.merge,
    ta.pp.preprocess,
]


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f.__name__)
def test_signature_conventions(func):
    sig = inspect.signature(func)
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    assert len(positional) <= 3, positional
    for p in positional:
        assert not isinstance(p.default, bool), f"positional boolean {p.name}"
    assert func.__doc__ and "Examples" in func.__doc__


@pytest.mark.parametrize("func", [ta.tl.transanno_annotate, ta.pp.preprocess])
def test_copy_functions_return_anndata_or_none(func):
    ann = inspect.signature(func).return_annotation
    assert "None" in str(ann) and "AnnData" in str(ann)
    assert inspect.signature(func).parameters["copy"].kind is inspect.Parameter.KEYWORD_ONLY


def test_no_unfilled_docstring_templates():
    for obj in (ta.model.TransAnno, *PUBLIC):
        members = (
            [obj, *(m for _, m in inspect.getmembers(obj, callable))]
            if inspect.isclass(obj)
            else [obj]
        )
        for m in members:
            doc = getattr(m, "__doc__", None) or ""
            assert "%(" not in doc, m


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE constants, then CamelCase classes, then the rest."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


def test_all_is_sorted():
    for mod in (ta, ta.tl, ta.pl, ta.pp, ta.model, ta.data, ta.datasets):
        assert list(mod.__all__) == sorted(mod.__all__, key=_isort_key), mod.__name__


def test_transanno_keeps_its_public_methods_after_the_mixin_split():
    """Every public method of the model, wherever its mixin defines it, and the API page lists
    them all (docs/conf.py collects them from transanno_sc classes of the MRO)."""
    import importlib.util
    from pathlib import Path

    expected = {
        "setup_anndata",
        "train",
        "pretrain",
        "save_backbone",
        "from_pretrained",
        "predict",
        "predict_confidence",
        "get_latent_representation",
        "compile",
        "save",
        "load",
        "marker_genes",
        "cell_attributions",
    }
    model = ta.model.TransAnno
    for name in expected:
        owner = next(k for k in model.__mro__ if name in vars(k))
        assert owner.__module__.startswith("transanno_sc."), (name, owner)
    conf = Path(__file__).resolve().parents[1] / "docs" / "conf.py"
    if not conf.exists():  # an installed package without the source tree
        pytest.skip("docs/conf.py is not here")
    spec = importlib.util.spec_from_file_location("_docs_conf", conf)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert expected <= set(module._own_methods(model))


#: Which subpackages each subpackage may import (#16: cli -> tl/pp/pl -> model ->
#: module/train/nn -> data); ``_constants`` is shared by all.
ALLOWED_IMPORTS = {
    "data": set(),
    "nn": {"data"},
    "module": {"nn", "data"},
    "train": {"module", "nn", "data"},
    "model": {"module", "train", "nn", "data"},
    "tl": {"model", "module", "train", "nn", "data"},
    "pp": {"model", "data"},
    "pl": {"tl", "model", "data"},
    "datasets": {"data"},
    "cli": {"tl", "pp", "pl", "model", "data", "datasets", "__init__"},
}


def test_imports_flow_one_way_without_private_names():
    """No subpackage imports one above it, and none imports another's underscore names."""
    import ast
    from pathlib import Path

    root = Path(ta.__file__).parent
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if len(parts) == 1:
            continue  # the top-level modules (__init__, _constants)
        package = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            names = node.module.split(".")
            if names[0] != "transanno_sc":
                continue
            target = names[1] if len(names) > 1 else "__init__"
            if target in (package, "_constants"):
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            assert target in ALLOWED_IMPORTS[package], f"{where} imports {node.module}"
            private = [a.name for a in node.names if a.name.startswith("_") and a.name[1] != "_"]
            assert not private, f"{where} imports private {private} from {node.module}"
