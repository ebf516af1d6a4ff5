"""Lightning training plan for self-supervised masked-value pretraining."""

from __future__ import annotations

from ._base import WarmupCosineTrainingPlan


class PretrainingPlan(WarmupCosineTrainingPlan):
    """Pretrain the backbone by masked value modelling :cite:p:`Devlin2019`.

    In every cell, about ``mask_prob`` of the expressed-gene tokens keep their gene identity
    but have their value replaced by a ``[MASK]`` value; the backbone and a small head predict
    the value bin of those tokens (as BERT predicts masked words, and scBERT masked
    expression). Labels are not used. Logged per epoch: ``pretrain_loss`` (training),
    ``pretrain_validation_loss`` and ``pretrain_validation_accuracy`` (the fraction of masked
    tokens whose bin is predicted exactly).

    Parameters
    ----------
    module
        A :class:`~transanno_sc.module.TransAnnoModule`.
    lr
        Peak learning rate.
    weight_decay
        AdamW weight decay.
    warmup_fraction
        Fraction of the optimizer steps spent warming the learning rate up.
    mask_prob
        Fraction of each cell's expressed-gene tokens that is masked.
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        mask_prob: float = 0.15,
    ):
        super().__init__(module, lr=lr, weight_decay=weight_decay, warmup_fraction=warmup_fraction)
        if not 0.0 < mask_prob < 1.0:
            msg = f"mask_prob must be in (0, 1), got {mask_prob}."
            raise ValueError(msg)
        self.mask_prob = mask_prob

    def _step(self, batch):
        inputs = self.module._get_inference_input(batch)
        return self.module.masked_value_loss(**inputs, mask_prob=self.mask_prob)

    def training_step(self, batch, batch_idx):
        loss, _, n_masked = self._step(batch)
        self.log(
            "pretrain_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=max(n_masked, 1),
            sync_dist=self.use_sync_dist,
        )
        return loss

    def validation_step(self, batch, batch_idx):
        loss, accuracy, n_masked = self._step(batch)
        n = max(n_masked, 1)
        self.log(
            "pretrain_validation_loss",
            loss,
            on_epoch=True,
            batch_size=n,
            sync_dist=self.use_sync_dist,
        )
        self.log(
            "pretrain_validation_accuracy",
            accuracy,
            on_epoch=True,
            batch_size=n,
            sync_dist=self.use_sync_dist,
        )

    def on_validation_epoch_end(self) -> None:
        return None
