"""The causal splice: does the explanation carry what the model *uses*, not only what is in the vector?

For each held-out row the target reads its text up to the explained position, with the residual
after block K at that position replaced (``nla.models.patching``) by a direction rescaled to the
original norm: the original itself (clean), the AR's reconstruction from the row's explanation
(nla), the mean direction (the ablation), and the reconstruction from another row's explanation
(shuffled). Each run is scored by the cross-entropy of the real next token and the KL divergence
from the clean next-token distribution. As sparse-autoencoder work reports it, the loss recovered
is the share of the ablation's loss increase that a splice undoes:
(CE_ablate − CE_splice) / (CE_ablate − CE_clean); 100% is as good as the original, 0% as the mean.
The KL recovered is the same share of the ablation's KL from the clean run, 1 − KL_splice / KL_ablate:
it reads the whole next-token distribution, not only the probability of the token that came.

A row whose answer did not parse has no explanation, so its splice is the ablation itself (the
mean direction): it recovers nothing, in distribution, rather than patching in the round trip's
orthogonal stand-in (a basis vector at the full residual norm, which no model has seen). The
shuffled control deranges the reconstructions of rows with answers only (``splice_directions``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from nla.core.maths import derangement
from nla.evaluation.bootstrap import bootstrap_interval
from nla.models.patching import next_token_logprobs, rescaled

VARIANTS = ("clean", "nla", "mean", "shuffled")


def loss_recovered(ce_clean: np.ndarray, ce_ablate: np.ndarray, ce_splice: np.ndarray) -> float:
    """(mean CE_ablate − mean CE_splice) / (mean CE_ablate − mean CE_clean); NaN when the ablation
    costs nothing (the ratio is undefined)."""
    gap = float(np.mean(ce_ablate) - np.mean(ce_clean))
    return float((np.mean(ce_ablate) - np.mean(ce_splice)) / gap) if gap else float("nan")


def kl_recovered(kl_ablate: np.ndarray, kl_splice: np.ndarray) -> float:
    """1 − mean KL_splice / mean KL_ablate (both from the clean run); NaN when the ablation changes
    nothing."""
    ablate = float(np.mean(kl_ablate))
    return 1 - float(np.mean(kl_splice)) / ablate if ablate else float("nan")


def splice_directions(predictions: Tensor, valid: np.ndarray, mean: Tensor, seed: int) -> dict[str, Tensor]:
    """The patches of ``splice_scores`` for rows with reconstructions ``predictions [n, d]``:
    ``nla`` is each row's own, ``shuffled`` another valid row's (a seeded derangement of the valid
    rows), and a row without a valid answer takes ``mean`` (the ablation) in both."""
    valid = np.asarray(valid, dtype=bool)
    fill = mean.to(predictions.dtype).expand_as(predictions)
    mask = torch.as_tensor(valid)[:, None]
    own = torch.where(mask, predictions, fill)
    shuffled = fill.clone()
    rows = torch.as_tensor(np.flatnonzero(valid), dtype=torch.long)
    if len(rows) >= 2:
        shuffled[rows] = predictions[rows[derangement(len(rows), seed)]]
    return {"nla": own, "mean": mean, "shuffled": shuffled}


@torch.no_grad()
def splice_scores(model, layer: int, ids: list[list[int]], positions: list[int], directions: dict[str, Tensor]) -> dict:
    """``{variant: {"ce": [n], "kl": [n]}}`` (float64 arrays) for rows given by their token ``ids``
    (through at least the token after the position) and ``positions``. ``directions`` maps ``nla``,
    ``mean`` and ``shuffled`` to ``[n, d]`` vectors (``mean`` may be one ``[d]`` row); ``clean``
    patches each position with its own residual."""
    device = next(model.parameters()).device
    scores = {name: {"ce": [], "kl": []} for name in VARIANTS}
    for row, (tokens, position) in enumerate(zip(ids, positions)):
        batch = torch.tensor([tokens[: position + 1]] * len(VARIANTS), device=device)
        chosen = [directions[name][row] if directions[name].dim() == 2 else directions[name] for name in VARIANTS[1:]]

        def replace(clean: Tensor) -> Tensor:
            stacked = torch.stack([clean[0], *(vector.to(clean.device) for vector in chosen)])
            return rescaled(stacked, clean.norm(dim=-1))

        logprobs = next_token_logprobs(model, batch, layer, position, replace).double()
        clean = logprobs[0]
        for i, name in enumerate(VARIANTS):
            scores[name]["ce"].append(float(-logprobs[i, tokens[position + 1]]))
            scores[name]["kl"].append(float((clean.exp() * (clean - logprobs[i])).sum()))
    return {name: {key: np.array(values) for key, values in value.items()} for name, value in scores.items()}


def _recovered(scores: dict, name: str, rows, valid: np.ndarray | None = None) -> dict[str, float]:
    """Loss and KL recovered by the splice ``name`` over ``rows`` (those with ``valid`` only, if given)."""
    if valid is not None:
        rows = np.arange(len(valid))[rows][valid[rows]]
    ce, kl = (lambda v: scores[v]["ce"][rows]), (lambda v: scores[v]["kl"][rows])
    return {"loss_recovered": loss_recovered(ce("clean"), ce("mean"), ce(name)) if len(ce(name)) else float("nan"),
            "kl_recovered": kl_recovered(kl("mean"), kl(name)) if len(kl(name)) else float("nan")}


def summary(scores: dict, draws, valid: np.ndarray | None = None) -> dict:
    """``variants``: mean CE and KL of every variant, and the loss and KL recovered by the nla and
    shuffled splices; ``differences``: their paired difference (nla − shuffled); with ``valid`` (rows
    whose answer parsed), ``valid_only``: the nla splice's recovered shares over those rows alone.
    Each with a document-level interval."""
    keys = ("loss_recovered", "kl_recovered")
    variants: dict = {name: {key: bootstrap_interval(lambda rows, v=scores[name][key]: float(v[rows].mean()), draws)
                             for key in ("ce", "kl")} for name in VARIANTS}
    for name in ("nla", "shuffled"):
        for key in keys:
            variants[name][key] = bootstrap_interval(lambda rows, n=name, k=key: _recovered(scores, n, rows)[k], draws)
    result = {"variants": variants, "differences": {"nla - shuffled": {
        key: bootstrap_interval(lambda rows, k=key: _recovered(scores, "nla", rows)[k]
                                - _recovered(scores, "shuffled", rows)[k], draws) for key in keys}}}
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        result["valid_only"] = {key: bootstrap_interval(lambda rows, k=key: _recovered(scores, "nla", rows, valid)[k],
                                                        draws) for key in keys}
    return result
