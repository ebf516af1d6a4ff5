"""What the training plans share: AdamW with per-group learning rates, warm-up, cosine decay."""

from __future__ import annotations

import math

import torch
from scvi.train import TrainingPlan


class WarmupCosineTrainingPlan(TrainingPlan):
    """AdamW with a linear warm-up and a cosine decay of the learning rate, per step.

    Weight decay is not applied to biases and normalization weights; parameters with
    ``requires_grad=False`` (frozen layers) are left out of the optimizer. Subclasses give
    parameter groups their own peak learning rate through :meth:`param_lr`.

    Parameters
    ----------
    module
        The module to train.
    lr
        Peak learning rate.
    weight_decay
        AdamW weight decay.
    warmup_fraction
        Fraction of the optimizer steps spent warming the learning rate up.
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
    ):
        super().__init__(module, optimizer="AdamW", lr=lr, weight_decay=weight_decay, eps=1e-8)
        self.warmup_fraction = warmup_fraction

    def param_lr(self, name: str) -> float:
        """Peak learning rate of the parameter called ``name`` in the module."""
        return self.lr

    def configure_optimizers(self):
        groups: dict[tuple[float, float], list] = {}
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            wd = 0.0 if p.ndim < 2 or "norm" in name else self.weight_decay
            groups.setdefault((self.param_lr(name), wd), []).append(p)
        if not groups:
            msg = "Every parameter is frozen: there is nothing to train."
            raise ValueError(msg)
        params = [p for ps in groups.values() for p in ps]
        optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
            lr=self.lr,
            eps=self.eps,
            # one kernel for the whole update on CUDA (a small model's step is launch-bound)
            fused=all(p.is_cuda for p in params) or None,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(total * self.warmup_fraction), 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
