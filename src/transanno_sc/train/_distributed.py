"""Multi-device (DDP) set-up of a Lightning run."""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile

import torch


def configure_distributed(
    accelerator: str, devices, trainer_kwargs: dict, datasplitter_kwargs: dict
) -> bool:
    """Pick a multi-device strategy and the distributed sampler (edits the dicts in place).

    With more than one device (or ``num_nodes`` > 1) and no ``strategy`` given, Lightning DDP
    is used: ``"ddp_find_unused_parameters_true"`` in scripts (the script is started again for
    the other ranks, also under ``torchrun``/SLURM, whose environment Lightning detects) and
    ``"ddp_notebook_find_unused_parameters_true"`` in Jupyter. Any DDP strategy (string or
    :class:`~lightning.pytorch.strategies.DDPStrategy`) turns on scvi-tools'
    ``BatchDistributedSampler`` so that each process trains on its own shard, and the history
    of rank 0 is written to a private folder, from which spawn-based strategies read it back.

    Returns whether training is distributed.
    """
    from scvi.model._utils import use_distributed_sampler

    n = n_devices(devices, accelerator)
    num_nodes = int(trainer_kwargs.get("num_nodes") or 1)
    if (n > 1 or num_nodes > 1) and trainer_kwargs.get("strategy") is None:
        trainer_kwargs["strategy"] = (
            "ddp_notebook_find_unused_parameters_true"
            if in_notebook()
            else "ddp_find_unused_parameters_true"
        )
    strategy = trainer_kwargs.get("strategy")
    distributed = strategy is not None and use_distributed_sampler(strategy)
    if distributed:
        datasplitter_kwargs.setdefault("distributed_sampler", True)
        if trainer_kwargs.get("logger") is None and not trainer_kwargs.get("log_save_dir"):
            trainer_kwargs["log_save_dir"] = _private_log_dir()
    return distributed


def in_notebook() -> bool:
    """Whether we run inside a Jupyter kernel (where DDP must fork, not start scripts)."""
    return "ipykernel" in sys.modules


def n_devices(devices, accelerator: str = "auto") -> int:
    """Number of devices (processes per node) that ``devices`` asks for.

    Raises a :class:`ValueError` when more GPUs are asked for than this machine has.
    """
    if isinstance(devices, int):
        n = devices if devices > 0 else max(torch.cuda.device_count(), 1)
    elif isinstance(devices, list | tuple):
        n = len(devices)
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        n = int(devices)
        n = n if n > 0 else max(torch.cuda.device_count(), 1)
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        n = 1
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        available = torch.cuda.device_count()
        if n > available:
            msg = (
                f"devices={devices!r} asks for {n} GPUs but this machine has {available}. "
                f"Pass devices={available} or fewer (or accelerator='cpu')."
            )
            raise ValueError(msg)
    return n


def _private_log_dir() -> str:
    """A temporary folder for the DDP history file, removed when the process exits."""
    path = tempfile.mkdtemp(prefix="transanno_ddp_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
