"""What every ``transanno`` command shares: errors, the parser, input checks, options."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

#: Exceptions that are the user's to fix: one line on stderr and exit code 2 (unless --debug).
USER_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError)

#: Environment variable that turns ``--debug`` on for every command.
DEBUG_ENV = "TRANSANNO_DEBUG"


class CLIError(Exception):
    """A user mistake on the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors reported on one line like every other error."""

    def error(self, message: str):
        print(f"transanno: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` only where there is a default worth showing."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        if action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _progress(msg: str) -> None:
    print(f"[transanno] {msg}", flush=True)


def _error_message(e: BaseException, inputs: str = "the input") -> str:
    """``e`` on one line; the library's messages in the command's words (a
    :class:`CLIError` is in them already)."""
    text = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    return text if isinstance(e, CLIError) else cli_wording(text, inputs)


#: The library's arguments that are options of the commands (``layer=`` is ``--layer``).
_OPTIONS = (
    "layer",
    "input_scale",
    "reference_input_scale",
    "labels_key",
    "batch_key",
    "unlabeled_category",
    "unassigned_threshold",
    "max_epochs",
    "batch_size",
    "key_added",
    "save_model",
    "model_kwargs",
    "reference",
    "model",
    "random_state",
)
#: Options named otherwise on the command line.
_RENAMED = {"random_state": "seed"}
_OPTION_RE = re.compile(
    r"`?\b(" + "|".join(_OPTIONS) + r")=(?:(None)|'([^']*)'|\"([^\"]*)\"|([\w.-]+))?`?"
)
_FLAGS = {
    "match_depth=False": "--no-match-depth",
    "query_context=False": "--no-query-context",
    "pretrain=True": "--pretrain",
}
_ADATA_RE = re.compile(r"\b(adata|reference)\.(X|layers|obs|var_names|var|obsm|uns)\b")


def _option(m: re.Match) -> str:
    flag = "--" + _RENAMED.get(m[1], m[1]).replace("_", "-")
    if m[2]:  # layer=None, batch_key=None: leave the option out
        return f"no {flag}"
    value = next((v for v in m.groups()[2:] if v is not None), "")
    return f"{flag} {value}" if value else flag


def cli_wording(text: str, inputs: str = "the input") -> str:
    """A library message in the command line's words: ``layer='counts'`` becomes
    ``--layer counts``, ``input_scale=`` ``--input-scale``, ``adata.X`` "the query's X"
    (``inputs``: what the command's ``adata`` is), ``reference.obs`` "the reference's obs".
    Python code in backticks (a call, with its parentheses) is left as it is."""
    parts = re.split(r"(`[^`]*\([^`]*`)", text)
    return "".join(p if i % 2 else _cli_words(p, inputs) for i, p in enumerate(parts))


def _cli_words(text: str, inputs: str) -> str:
    text = _OPTION_RE.sub(_option, text)
    for python, flag in _FLAGS.items():
        text = re.sub(r"`?\b" + re.escape(python) + r"`?", flag, text)
    text = _ADATA_RE.sub(
        lambda m: f"{inputs if m[1] == 'adata' else 'the reference'}'s {m[2]}", text
    )
    return re.sub(r"(?<![.`\w])adata(?![.\w(`])", inputs, text)


def _debug_requested(args: argparse.Namespace) -> bool:
    """``--debug`` on the command line, or ``TRANSANNO_DEBUG`` set to 1/true/yes/on."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(getattr(args, "debug", False)) or env in {"1", "true", "yes", "on"}


def _check_input_file(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        msg = f"{what} file {path!r} not found."
        raise CLIError(msg)
    if p.is_dir():
        msg = f"{what} {path!r} is a folder, expected an .h5ad file."
        raise CLIError(msg)
    return p


def _read_h5ad(path: str, what: str, *, mudata_ok: bool = False):
    """The AnnData in ``path``; with ``mudata_ok``, a ``.h5mu`` file is read as a MuData."""
    import anndata as ad

    p = _check_input_file(path, what)
    if p.suffix.lower() == ".h5mu":
        if not mudata_ok:
            msg = (
                f"{what} {path!r} is a .h5mu file; this option reads .h5ad files. Write its RNA "
                "modality as one (`mdata.mod['rna'].write_h5ad(...)`)."
            )
            raise CLIError(msg)
        return _read_h5mu(p, what)
    try:
        adata = ad.read_h5ad(p)
    except Exception as e:  # h5py/anndata raise many types on a bad file
        msg = f"could not read {what} {path!r} as .h5ad ({type(e).__name__}: {e})."
        raise CLIError(msg) from e
    _progress(f"read {what} {path}: {adata.n_obs:,} cells x {adata.n_vars:,} genes")
    return adata


def _read_h5mu(p: Path, what: str):
    import mudata

    try:
        mdata = mudata.read_h5mu(p)
    except Exception as e:  # h5py/mudata raise many types on a bad file
        msg = f"could not read {what} {str(p)!r} as .h5mu ({type(e).__name__}: {e})."
        raise CLIError(msg) from e
    mods = ", ".join(f"{k} ({m.n_obs:,} cells x {m.n_vars:,})" for k, m in mdata.mod.items())
    _progress(f"read {what} {p}: MuData with {mods}")
    return mdata


def _check_obs_key(adata, key: str, what: str, option: str) -> None:
    if key not in adata.obs:
        msg = (
            f"{option} {key!r} is not a column of the {what}'s obs "
            f"(columns: {', '.join(map(str, adata.obs.columns)) or 'none'})."
        )
        raise CLIError(msg)


def _check_layer(adata, layer: str | None, what: str) -> None:
    if layer is not None and layer not in adata.layers:
        msg = f"--layer {layer!r} is not a layer of the {what} (layers: {list(adata.layers)})."
        raise CLIError(msg)


def _check_out_path(
    path: str,
    option: str,
    *,
    overwrite: bool,
    kind: str = "file",
    suffixes: tuple[str, ...] = (),
) -> None:
    """Refuse, before any work, an output path in a missing folder, one of another ``kind``
    (a folder where a file is written, or the converse), one without one of ``suffixes`` (the
    formats written), or one that exists unless ``overwrite``."""
    target = Path(path)
    parent = target.resolve().parent
    if not parent.is_dir():
        msg = f"{option} {path!r}: folder {str(parent)!r} does not exist."
        raise CLIError(msg)
    exists = os.path.lexists(path)
    found = "folder" if target.is_dir() else "file"
    if exists and found != kind:
        msg = f"{option} {path!r} is an existing {found}; {option} names a {kind}."
        raise CLIError(msg)
    if suffixes and target.suffix.lower() not in suffixes:
        msg = f"{option} {path!r}: expected a file name ending in {' or '.join(suffixes)}."
        raise CLIError(msg)
    if exists and not overwrite:
        msg = f"{option} {path!r}: the {found} exists; pass --overwrite to replace it."
        raise CLIError(msg)


def _add_overwrite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files or folders that exist (without it, they are an error)",
    )


@contextlib.contextmanager
def _atomic_path(path: str):
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block
    ends without an error (and is removed otherwise), so that an interrupted or failed write
    never leaves half a file, nor destroys the file it was to replace (the input, even)."""
    target = Path(path)
    # the same suffix as the target: writers may choose the format by it
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        from transanno_sc.model.base import apply_umask

        apply_umask(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _parse_json_dict(text: str | None, option: str) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"{option} is not valid JSON ({e}): {text!r}."
        raise CLIError(msg) from e
    if not isinstance(value, dict):
        msg = f"{option} must be a JSON object such as '{{\"n_layers\": 2}}', got {text!r}."
        raise CLIError(msg)
    return value


def _parse_devices(text: str) -> int | str | list[int]:
    """``auto``, ``2`` or ``0,1`` as Lightning takes them."""
    if text.strip().lstrip("-").isdigit():
        return int(text)
    if "," in text:
        try:
            return [int(d) for d in text.split(",") if d.strip()]
        except ValueError:
            pass
    return text


def _threshold(text: str) -> float | None:
    if text.strip().lower() in {"none", "off"}:
        return None
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a number in [0, 1] or 'none', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0.0 <= value <= 1.0:
        msg = f"must be in [0, 1] or 'none', got {value:g}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _accelerator(text: str) -> str:
    """``--accelerator``: a name Lightning takes, for a device this machine has."""
    name = text.strip().lower()
    if name not in {"auto", "cpu", "gpu", "cuda", "mps"}:
        msg = f"expected 'cpu', 'gpu', 'cuda', 'mps' or 'auto', got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    import torch

    if name in {"gpu", "cuda"} and not torch.cuda.is_available():
        msg = f"{text!r}: no CUDA GPU is available here (use 'cpu' or 'auto')"
        raise argparse.ArgumentTypeError(msg)
    if name == "mps" and not torch.backends.mps.is_available():
        msg = f"{text!r}: no Apple MPS device is available here (use 'cpu' or 'auto')"
        raise argparse.ArgumentTypeError(msg)
    return name


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"expected a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"expected a positive integer, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _is_secondary_rank(model=None) -> bool:
    """True on the non-zero ranks of a multi-process (DDP) run: they must not write files.

    Lightning starts the extra processes with ``LOCAL_RANK`` set (torchrun with ``RANK``), so
    this holds before training too; after it, the trainer or the process group says.
    """
    trainer = getattr(model, "trainer", None)
    if trainer is not None and hasattr(trainer, "is_global_zero"):
        return not trainer.is_global_zero
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() != 0
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) != "0"


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accelerator",
        default="auto",
        type=_accelerator,
        metavar="NAME",
        help="'cpu', 'gpu' (or 'cuda'), 'mps' or 'auto'",
    )
    p.add_argument(
        "--devices",
        default="auto",
        metavar="N",
        help="number of devices, a list such as 0,1, or 'auto'",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed")


def _add_training_options(p: argparse.ArgumentParser, data: str, what: str) -> None:
    """Options shared by ``transanno annotate``, ``transanno pretrain`` and ``transanno train``."""
    p.add_argument("--layer", metavar="LAYER", help=f"layer with the {data} (default: X)")
    p.add_argument(
        "--input-scale",
        default="auto",
        choices=["auto", "counts", "log1p", "log2(1+x)", "log10(1+x)"],
        help="what the values are: raw counts (or TPM/CPM), log-normalized (natural log; "
        "log2(1+x) or log10(1+x) for other bases, which 'log1p' and 'auto' detect), or detected",
    )
    p.add_argument(
        "--max-epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"{what} epochs (default: automatic, by the number of cells)",
    )
    p.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help='model settings as JSON, e.g. \'{"n_layers": 2, "max_tokens": 128}\'',
    )
    _add_device_options(p)


def _add_debug_option(p: argparse.ArgumentParser, *, top_level: bool) -> None:
    """``--debug`` before the command (``top_level``) or after it, where it keeps the other's."""
    p.add_argument(
        "--debug",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help=f"show the traceback behind an error (or set {DEBUG_ENV}=1)",
    )


def _trainer_options(args: argparse.Namespace) -> dict:
    """``max_epochs``, ``accelerator``, ``devices`` and the progress bar, for ``train``."""
    return {
        "max_epochs": args.max_epochs,
        "accelerator": args.accelerator,
        "devices": _parse_devices(args.devices),
        "enable_progress_bar": sys.stderr.isatty(),  # a bar on a terminal, not in log files
    }


def _report_validation(history: dict | None, key: str, what: str) -> None:
    """One progress line with the last validation value of ``history[key]``, if any."""
    history = history or {}
    if key in history and len(history[key]):
        _progress(f"{what} {float(history[key].iloc[-1, 0]):.3f}")
