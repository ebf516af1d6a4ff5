"""Saving and loading models: the on-disk format (``transanno.json``, ``model.safetensors``,
``vocabulary.json``), written crash-safely."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Self

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from safetensors.torch import load_file, save_file
from scvi.model.base import BaseModelClass
from scvi.utils._docstrings import devices_dsp

from transanno_sc.model._gene_selection import check_vocabulary

logger = logging.getLogger(__name__)


CONFIG_FILE = "transanno.json"

VOCAB_FILE = "vocabulary.json"

WEIGHTS_FILE = "model.safetensors"

FORMAT_VERSION = 1


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transanno-sc")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_folder(dir_path: str, keep=lambda name: True):
    """Write a folder crash-safely: yield a temporary folder beside ``dir_path`` to write into;
    on success it replaces ``dir_path`` by renames (the files of an existing ``dir_path`` for
    which ``keep(name)`` is true are carried over, as hard links where possible). An
    interrupted write leaves ``dir_path`` as it was and at most a hidden temporary folder."""
    dir_path = os.path.abspath(dir_path)
    parent, name = os.path.split(dir_path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.saving-", dir=parent)
    try:
        yield tmp
        _modes_by_umask(tmp)
        if os.path.isdir(dir_path):
            for entry in os.listdir(dir_path):
                src = os.path.join(dir_path, entry)
                if keep(entry) and not os.path.exists(os.path.join(tmp, entry)):
                    if os.path.isdir(src):
                        shutil.copytree(src, os.path.join(tmp, entry))
                    else:
                        try:
                            os.link(src, os.path.join(tmp, entry))
                        except OSError:
                            shutil.copy2(src, os.path.join(tmp, entry))
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rmdir(old)
            os.rename(dir_path, old)
            os.rename(tmp, dir_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dir_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply_umask(path: str, *, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open`` (``folder``: ``mkdir``) would, ``0o666``
    (``0o777``) less the umask: ``mkstemp`` and ``mkdtemp``, through which outputs are
    written atomically, make them owner-only, and models and results are often shared."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)


def _modes_by_umask(folder: str) -> None:
    """:func:`apply_umask` on ``folder`` and the files written into it."""
    apply_umask(folder, folder=True)
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            apply_umask(entry.path)


def read_vocabulary(backbone_dir: str) -> list[str]:
    path = os.path.join(backbone_dir, VOCAB_FILE)
    if not os.path.exists(path):
        msg = f"{path} not found: {backbone_dir!r} was not written by `TransAnno.save_backbone`."
        raise FileNotFoundError(msg)
    try:
        with open(path) as f:
            vocab = json.load(f)
        genes = vocab["genes"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        msg = f"{path} is not a valid vocabulary file ({e!r})."
        raise ValueError(msg) from e
    return check_vocabulary(genes)


def read_config(path: str) -> dict:
    if not os.path.exists(path):
        msg = f"{path} not found: the folder was not written by `TransAnno.save`."
        raise FileNotFoundError(msg)
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path} is not valid JSON ({e}): the model folder is corrupt."
        raise ValueError(msg) from e
    required = {"init_params", "setup_args", "classes", "var_names", "input_scale", "is_trained"}
    if not isinstance(config, dict) or not required <= set(config):
        missing = sorted(required - set(config)) if isinstance(config, dict) else sorted(required)
        msg = f"{path} lacks {missing}: the model folder is corrupt or from another tool."
        raise ValueError(msg)
    if config.get("format_version", 0) > FORMAT_VERSION:
        msg = (
            f"{path} was written by a newer transanno-sc "
            f"({config.get('transanno_sc_version')}); upgrade with `pip install -U transanno-sc`."
        )
        raise ValueError(msg)
    return config


def history_to_json(history: dict[str, pd.DataFrame] | None) -> dict:
    """Serialize ``model.history`` (dict of one-column DataFrames) to plain lists."""
    if not history:
        return {}
    return {
        k: {"index": [int(i) for i in v.index], "values": v.iloc[:, 0].astype(float).tolist()}
        for k, v in history.items()
    }


def history_from_json(data: dict) -> dict[str, pd.DataFrame]:
    """Inverse of :func:`history_to_json`."""
    return {
        k: pd.DataFrame({k: v["values"]}, index=pd.Index(v["index"], name="epoch"))
        for k, v in data.items()
    }


#: Key of the reference's per-type gene detection (``type_detection_``) in the weights file;
#: its genes are in the JSON. Folders saved before it existed load without it.
TYPE_DETECTION_KEY = "__type_detection__"


class SaveLoadMixin:
    """Saving a model to a folder and loading it back (JSON and safetensors only).

    Needs from the model class: ``module``, ``init_params_``, ``registry_``, the fitted
    attributes (``classes_``, ``var_names_``, ``input_scale_``, ``calibration_``,
    ``gene_count_selection_``, ``is_pretrained_``, ``history_``), ``_build_module`` and
    ``_set_training_genes``.
    """

    @classmethod
    def view_setup_args(cls, dir_path: str, prefix: str | None = None) -> None:
        """Print the ``setup_anndata`` arguments a saved model was trained with (scvi-tools'
        method reads its own file format, not this one)."""
        config = read_config(os.path.join(dir_path, f"{prefix or ''}{CONFIG_FILE}"))
        args = config.get("setup_args", {})
        width = max((len(k) for k in args), default=0)
        print(f"setup_anndata arguments of {dir_path}:")
        for key, value in args.items():
            print(f"  {key.ljust(width)}  {value!r}")

    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to ``dir_path``.

        Weights go to ``model.safetensors`` (no pickle), everything else (hyperparameters,
        gene vocabulary, cell types, setup arguments, training history) to ``transanno.json``.

        Parameters
        ----------
        dir_path
            Folder to write.
        prefix
            Prefix of the file names.
        overwrite
            Overwrite an existing folder's model files.
        save_anndata
            Also write the registered AnnData as ``adata.h5ad``.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad`.
        """
        prefix = prefix or ""
        config_path = os.path.join(dir_path, f"{prefix}{CONFIG_FILE}")
        if os.path.exists(config_path) and not overwrite:
            msg = f"{config_path} already exists. Pass `overwrite=True` to replace it."
            raise ValueError(msg)
        ours = {f"{prefix}{name}" for name in (CONFIG_FILE, WEIGHTS_FILE, "adata.h5ad")}
        with staged_folder(dir_path, keep=lambda name: name not in ours) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
            detection = self.type_detection_
            if detection is not None:
                state[TYPE_DETECTION_KEY] = torch.from_numpy(np.ascontiguousarray(detection[1]))
            weights_path = os.path.join(tmp, f"{prefix}{WEIGHTS_FILE}")
            save_file(state, weights_path)
            config = {
                "format_version": FORMAT_VERSION,
                "transanno_sc_version": package_version(),
                "model_class": type(self).__name__,
                "init_params": self.init_params_,
                "setup_args": dict(self.registry_["setup_args"]),
                "classes": list(self.classes_),
                "var_names": list(self.var_names_),
                "input_scale": self.input_scale_,
                "is_trained": bool(self.is_trained_),
                "calibration": self.calibration_,
                "type_detection_genes": None if detection is None else list(detection[0]),
                "gene_count_selection": self.gene_count_selection_,
                "is_pretrained": bool(self.is_pretrained_),
                "history": history_to_json(
                    self.history_ if isinstance(self.history_, dict) else None
                ),
                "weights_sha256": sha256(weights_path),
            }
            with open(os.path.join(tmp, f"{prefix}{CONFIG_FILE}"), "w") as f:
                json.dump(config, f, indent=1)
            if save_anndata and self.adata is not None:
                self.adata.write_h5ad(
                    os.path.join(tmp, f"{prefix}adata.h5ad"), **anndata_write_kwargs
                )

    @classmethod
    @devices_dsp.dedent
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ) -> Self:
        """Load a model saved with :meth:`~transanno_sc.model.TransAnno.save`.

        Only JSON and safetensors are read: loading never executes code from the folder.
        Without ``adata`` the model can predict on any AnnData (and holds the AnnData saved
        with it by ``save(save_anndata=True)``, as scvi-tools' ``load`` does); with ``adata``
        (set up with the saved arguments when it is not yet) it can also be trained further.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`~transanno_sc.model.TransAnno.save`.
        adata
            Optional AnnData to attach.
        %(param_accelerator)s
        device
            Device index or ``"auto"``.
        prefix
            Prefix of the file names.
        """
        from scvi.model._utils import parse_device_args

        prefix = prefix or ""
        config = read_config(os.path.join(dir_path, f"{prefix}{CONFIG_FILE}"))
        if config.get("model_class") != cls.__name__:
            msg = f"{dir_path} holds a {config.get('model_class')!r} model, not {cls.__name__!r}."
            raise ValueError(msg)
        weights_path = os.path.join(dir_path, f"{prefix}{WEIGHTS_FILE}")
        if not os.path.exists(weights_path):
            msg = f"{weights_path} is missing: {dir_path} is not a complete TransAnno model."
            raise FileNotFoundError(msg)
        expected = config.get("weights_sha256")  # folders saved before 0.2 have none
        if expected is not None and sha256(weights_path) != expected:
            msg = (
                f"{weights_path} does not match the SHA-256 recorded in {CONFIG_FILE}: the "
                "folder is corrupt or its files come from different saves. Save the model again."
            )
            raise ValueError(msg)
        try:
            state = load_file(weights_path)
        except Exception as e:
            msg = f"Could not read {weights_path} as safetensors ({e}). The file is corrupt."
            raise ValueError(msg) from e

        model = cls.__new__(cls)
        registry = {
            "setup_args": config["setup_args"],
            "setup_method_name": "setup_anndata",
            "model_name": cls.__name__,
            "field_registries": {},
        }
        BaseModelClass.__init__(model, registry=registry)
        model.init_params_ = config["init_params"]
        model.classes_ = list(config["classes"])
        model.var_names_ = list(config["var_names"])
        model.input_scale_ = config["input_scale"]
        model._build_module()
        detection = state.pop(TYPE_DETECTION_KEY, None)
        genes = config.get("type_detection_genes")
        model.type_detection_ = (
            None if detection is None or genes is None else (list(genes), detection.numpy())
        )
        model.module.resize_fitted_buffers(state)
        # model folders written before the weight existed: the Transformer at full weight
        state.setdefault("deep_weight", torch.ones(()))
        # saved before log1p inputs were normalized back from their expm1: taken as they are
        state.setdefault("renormalize_log1p", torch.zeros(()))
        try:
            model.module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = f"The weights in {weights_path} do not match {CONFIG_FILE}: {e}"
            raise ValueError(msg) from e
        model.is_trained_ = bool(config["is_trained"])
        model.calibration_ = config.get("calibration")
        selection = config.get("gene_count_selection")
        if selection is not None:  # JSON keys are strings
            selection["scores"] = {int(k): v for k, v in selection["scores"].items()}
        model.gene_count_selection_ = selection
        model.is_pretrained_ = bool(config.get("is_pretrained", False))
        model.pretrain_history_ = None
        model.gene_overlap_ = None
        model.history_ = history_from_json(config.get("history", {}))
        model.module.eval()
        saved = os.path.join(dir_path, f"{prefix}adata.h5ad")
        if adata is None and os.path.exists(saved):
            import anndata

            adata = anndata.read_h5ad(saved)
            # set up afresh with the saved arguments (its scvi-tools ids name the managers of
            # the AnnData it was written from, which may live in this process)
            for key in ("_scvi_uuid", "_scvi_manager_uuid"):
                adata.uns.pop(key, None)
        if adata is not None:
            if cls._get_most_recent_anndata_manager(adata) is None:
                labels_key = config["setup_args"].get("labels_key")
                if labels_key is not None and labels_key not in adata.obs:
                    msg = (
                        f"The model was trained with labels_key={labels_key!r}, which is not a "
                        "column of `adata.obs`: `adata=` attaches data to train further on. To "
                        f"annotate an unlabeled AnnData, load without it "
                        f"(`{cls.__name__}.load(dir_path)`) and call `predict(adata)`, or "
                        "`tl.transanno_annotate(adata, model=model)`."
                    )
                    raise KeyError(msg)
                cls.setup_anndata(adata, **config["setup_args"])
            model._adata = adata
            model._adata_manager = cls._get_most_recent_anndata_manager(adata, required=True)
            model._register_manager_for_instance(model._adata_manager)
            model.registry_ = model._adata_manager.registry
            model._set_training_genes(adata)
        _, _, torch_device = parse_device_args(
            accelerator=accelerator, devices=device, return_device="torch"
        )
        model.to_device(torch_device)
        return model
