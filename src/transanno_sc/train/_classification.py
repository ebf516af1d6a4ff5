"""Lightning training plan for cell-type classification."""

from __future__ import annotations

import torch

from ._base import WarmupCosineTrainingPlan


def macro_f1(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Macro-averaged F1 over the classes that occur in ``true`` or ``pred``."""
    conf = torch.bincount(true * n_classes + pred, minlength=n_classes * n_classes)
    conf = conf.reshape(n_classes, n_classes).double()
    tp = conf.diag()
    support = conf.sum(1)
    predicted = conf.sum(0)
    denom = support + predicted
    present = denom > 0
    f1 = torch.where(present, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return f1[present].mean() if present.any() else torch.tensor(0.0, dtype=torch.float64)


class ClassificationTrainingPlan(WarmupCosineTrainingPlan):
    """Fine-tune :class:`~transanno_sc.module.TransAnnoModule` on labeled cells.

    AdamW with a linear warm-up and a cosine decay of the learning rate, class-weighted
    cross-entropy (weights computed by the model from the training split only), and validation
    loss, accuracy and macro-F1 logged once per epoch as ``validation_loss``,
    ``validation_accuracy`` and ``validation_f1_macro``.

    Parameters
    ----------
    module
        The module to train.
    lr
        Peak learning rate of the Transformer and its heads.
    backbone_lr
        Peak learning rate of the Transformer backbone; ``lr`` when ``None`` (a smaller one
        keeps more of a pretrained backbone).
    wide_lr
        Peak learning rate of the linear "wide" path (a linear model needs larger
        steps; ``benchmarks/README.md``).
    weight_decay
        AdamW weight decay (not applied to biases and normalization weights).
    warmup_fraction
        Fraction of the optimizer steps spent warming the learning rate up.
    class_weights
        Per-class weights of the cross-entropy.
    label_map
        Maps registered label codes to class indices (-100 for unlabeled cells).
    label_smoothing
        Label smoothing of the training cross-entropy (the validation loss that early stopping
        watches is not smoothed). 0.1 helps the single-batch benchmark tasks and leaves the
        others as they were (``benchmarks/README.md``).
    deep_loss_weight
        Weight of the extra cross-entropy of the Transformer's logits alone (without the wide
        path); it makes the cell embedding separate the cell types.
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        wide_lr: float = 1e-2,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        class_weights: torch.Tensor | None = None,
        label_map: torch.Tensor | None = None,
        label_smoothing: float = 0.1,
        deep_loss_weight: float = 1.0,
    ):
        super().__init__(module, lr=lr, weight_decay=weight_decay, warmup_fraction=warmup_fraction)
        self.backbone_lr = backbone_lr
        self.wide_lr = wide_lr
        self.loss_kwargs.update(
            {
                "class_weights": class_weights,
                "label_map": label_map,
                "label_smoothing": label_smoothing,
                "deep_loss_weight": deep_loss_weight,
            }
        )
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self) -> None:
        for key in ("class_weights", "label_map"):
            if self.loss_kwargs.get(key) is not None:
                self.loss_kwargs[key] = self.loss_kwargs[key].to(self.device)

    def training_step(self, batch, batch_idx):
        _, _, out = self.forward(batch, loss_kwargs=self.loss_kwargs)
        n = max(out.n_obs_minibatch or 0, 1)
        self.log(
            "train_loss",
            out.loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=n,
            sync_dist=self.use_sync_dist,
        )
        return out.loss

    def validation_step(self, batch, batch_idx):
        _, _, out = self.forward(batch, loss_kwargs=self.loss_kwargs)
        y = out.true_labels
        keep = y >= 0
        logits = out.logits[keep].detach().float()
        per_cell = torch.nn.functional.cross_entropy(logits, y[keep], reduction="none")
        self._val_outputs.append((logits.argmax(1), y[keep], per_cell))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        pred = torch.cat([o[0] for o in self._val_outputs])
        true = torch.cat([o[1] for o in self._val_outputs])
        loss = torch.cat([o[2] for o in self._val_outputs])
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            pred, true, loss = (self._gather(t) for t in (pred, true, loss))
        n_classes = self.module.n_classes
        metrics = {
            "validation_loss": loss.mean() if loss.numel() else torch.tensor(float("nan")),
            "validation_accuracy": (pred == true).float().mean(),
            "validation_f1_macro": macro_f1(pred, true, n_classes).float(),
        }
        self.log_dict({k: v.detach().cpu() for k, v in metrics.items()}, prog_bar=False)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D tensor of varying length across processes."""
        n = torch.tensor([t.numel()], device=t.device)
        sizes = self.all_gather(n).reshape(-1)
        padded = torch.zeros(int(sizes.max()), dtype=t.dtype, device=t.device)
        padded[: t.numel()] = t
        gathered = self.all_gather(padded).reshape(len(sizes), -1)
        return torch.cat([gathered[i, : int(s)] for i, s in enumerate(sizes)])

    def param_lr(self, name: str) -> float:
        if name.startswith("wide."):
            return self.wide_lr
        if name.startswith("backbone.") and self.backbone_lr is not None:
            return self.backbone_lr
        return self.lr
