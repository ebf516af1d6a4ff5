"""Attribution of a model's logits to genes (the computations behind
:class:`~transanno_sc.model.MarkersMixin`).

A cell's logit for type ``c`` is the wide path's ``W[c] . x + b[c]`` plus ``deep_weight`` times
the Transformer's logit, all divided by the calibration temperature (see
:class:`~transanno_sc.module.TransAnnoModule`). The contribution of gene ``g`` to it is

- wide path: ``W[c, g] * x[g]`` (``x``: the cell's log-normalized expression), which is the
  exact (and integrated-gradients) attribution of a linear model against a cell without the
  gene;
- Transformer: the integrated gradients (Sundararajan et al. 2017, ICML) of the Transformer's logit
  along a path that fades the gene's token in, from absent (no other token can attend to it) to
  present. The fade is a bias ``log(alpha)`` added to the attention scores of every query for
  that token, ``alpha`` going from 0 to 1: at ``alpha = 0`` the cell is read as if the gene had
  not been expressed, at ``alpha = 1`` exactly as the model reads it. The contributions of a
  cell's tokens add up to its logit minus the logit of a cell without any gene token
  (completeness), so both parts share one baseline: the gene not expressed.

Logits are centered over the cell types first (softmax does not change when every type's logit
moves together, so only a gene's contribution to a type *relative to the others* can explain a
call). Scores are in units of the calibrated logit, so wide and Transformer parts add up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch

from transanno_sc.data import N_SPECIAL_GENE_TOKENS, tokenize

if TYPE_CHECKING:
    from transanno_sc.module import TransAnnoModule


AttributionMethod = Literal["integrated_gradients", "gradient"]

#: Quadrature nodes of the integrated gradients (see :func:`fade_in_path`). With 16, the
#: Transformer's attributions of a cell add up to its logit difference to within a few per cent
#: on the Zilionis reference (``benchmarks/markers.py``).
DEFAULT_N_STEPS = 16


class Attribution(NamedTuple):
    """Attributions of one batch of cells to one cell type each (all ``(n_cells, n_genes)``
    over the model's vocabulary, except ``logits``)."""

    #: The model's (calibrated) logits ``(n_cells, n_classes)``, as used for prediction.
    logits: torch.Tensor
    #: Wide path's part: ``(W[c] - mean_k W[k]) * x / temperature``.
    wide: torch.Tensor
    #: Transformer's part, times ``deep_weight / temperature``.
    transformer: torch.Tensor
    #: Log-normalized expression of the cells.
    x_log: torch.Tensor


def _gene_embeddings(module: TransAnnoModule, x_log: torch.Tensor):
    """Tokens of ``x_log`` and their input embeddings (as the backbone computes them)."""
    cfg = module.config
    tokens = tokenize(x_log, cfg.max_tokens, cfg.n_bins, cfg.value_encoding)
    bb = module.backbone
    with torch.no_grad():
        h = bb.gene_embeddings(tokens.gene_ids) + bb.value_embeddings(tokens.value_ids)
        h = bb.dropout(bb.layer_norm(h))
    return tokens, h


def _gated_deep_logits(
    module: TransAnnoModule,
    h: torch.Tensor,
    attention_mask: torch.Tensor,
    gates: torch.Tensor | None,
) -> torch.Tensor:
    """The Transformer's logits with gene token ``i`` faded by ``gates[:, i]`` (0..1).

    ``log(gate)`` is added to every query's attention score for the token (``[CLS]``: 0,
    padding: the most negative number), so gate 1 is the model's own forward pass and gate 0
    leaves the token unseen by all others.
    """
    real = attention_mask.bool()
    bias = torch.zeros(real.shape, dtype=h.dtype, device=h.device)
    if gates is not None:
        bias = bias + torch.where(real, torch.log(gates.to(h.dtype)), bias)
        bias[:, 0] = 0.0
    bias = bias.masked_fill(~real, torch.finfo(h.dtype).min)
    hidden = module.backbone.encoder(h, attention_mask=bias[:, None, None, :]).last_hidden_state
    return module.classifier(module.to_latent(hidden[:, 0]))


def _check_method(method: AttributionMethod) -> None:
    if method not in ("integrated_gradients", "gradient"):
        msg = f"method must be 'integrated_gradients' or 'gradient', got {method!r}."
        raise ValueError(msg)


def fade_in_path(
    method: AttributionMethod, n_steps: int, n_tokens: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Gate values ``t`` and quadrature weights ``dt`` (both ``(n_cells,)``) of the integral
    over the fade-in from ``t = 0`` (no gene token seen) to ``t = 1`` (the cell itself).

    The [CLS] token's attention moves from itself to the cell's ``n`` gene tokens around
    ``t = 1 / n``: over a few tenths of a decade for a trained model, so that nodes spread
    evenly in ``t`` miss it (with 8 of them a cell's attributions added up to a tenth of its
    logit difference). The gates follow ``t = u / ((1 - u) n)`` instead, ``u`` from 0 to
    ``n / (n + 1)`` with Gauss-Legendre nodes, which puts about half of the nodes on either
    side of ``t = 1 / n``. ``"gradient"``: the single point ``t = 1`` with weight 1.
    """
    ones = torch.ones_like(n_tokens, dtype=torch.float32)
    if method == "gradient":
        return [(ones, ones)]
    n = n_tokens.float().clamp_min(1.0)
    u_max = n / (n + 1)
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    path = []
    for x, w in zip(nodes, weights, strict=True):
        u = (float(x) + 1) / 2 * u_max
        t = u / ((1 - u) * n)
        dt = float(w) / 2 * u_max / (n * (1 - u) ** 2)
        path.append((t, dt))
    return path


def _deep_weight(module: TransAnnoModule) -> float:
    return float(module.deep_weight) if module.wide is not None else 1.0


def model_logits(module: TransAnnoModule, x_log: torch.Tensor) -> torch.Tensor:
    """Calibrated logits of log-normalized cells, computed as :func:`attribute` sees the model
    (equal to the module's own up to float rounding)."""
    with torch.no_grad():
        tokens, h = _gene_embeddings(module, x_log)
        logits = _gated_deep_logits(module, h, tokens.attention_mask, None)
        if module.wide is not None:
            logits = module.deep_weight * logits + module.wide(x_log)
        return logits / module.temperature


def attribute(
    module: TransAnnoModule,
    x_log: torch.Tensor,
    target: torch.Tensor | None = None,
    method: AttributionMethod = "integrated_gradients",
    n_steps: int = DEFAULT_N_STEPS,
) -> Attribution:
    """Contribution of each vocabulary gene to each cell's (centered, calibrated) logit of its
    ``target`` type (the predicted type when ``None``).

    ``method="gradient"`` takes the gradient at the cell itself (gradient x input, one
    backward pass) instead of integrating it along the fade-in (``n_steps`` passes).
    The module is put in evaluation mode; no parameter gradient is kept.
    """
    module.eval()
    _check_method(method)
    with torch.inference_mode(False), torch.enable_grad():
        x_log = x_log.detach().clone().float()
        logits = model_logits(module, x_log)
        if target is None:
            target = logits.argmax(1)
        target = target.to(x_log.device).long().reshape(-1)
        tokens, h = _gene_embeddings(module, x_log)
        n_cells, n_tokens = tokens.gene_ids.shape
        deep = torch.zeros((n_cells, n_tokens), dtype=torch.float32, device=x_log.device)
        n_genes = tokens.attention_mask[:, 1:].sum(1)
        for t, dt in fade_in_path(method, n_steps, n_genes):
            gates = t[:, None].expand(n_cells, n_tokens).clone().requires_grad_(True)
            out = _gated_deep_logits(module, h, tokens.attention_mask, gates)
            centered = out - out.mean(1, keepdim=True)
            score = centered.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, gates)
            deep += dt[:, None] * grad.float()
    # gene tokens back to vocabulary columns ([CLS] and padding dropped)
    real = tokens.attention_mask.bool()
    real[:, 0] = False
    rows, cols = real.nonzero(as_tuple=True)
    genes = tokens.gene_ids[rows, cols] - N_SPECIAL_GENE_TOKENS
    scale = 1.0 / float(module.temperature)
    transformer = torch.zeros_like(x_log)
    transformer[rows, genes] = deep[rows, cols] * (_deep_weight(module) * scale)
    if module.wide is not None:
        weight = module.wide.weight.detach().float()
        centered_w = weight - weight.mean(0, keepdim=True)
        wide = centered_w[target] * x_log * scale
    else:
        wide = torch.zeros_like(x_log)
    return Attribution(logits.detach(), wide.detach(), transformer.detach(), x_log.detach())
