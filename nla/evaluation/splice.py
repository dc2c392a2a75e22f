"""The causal splice: does the explanation carry what the model *uses*, not only what is in the vector?

For each held-out row the target reads its text up to the explained position, with the residual
after block K at that position replaced (``nla.models.patching``) by a direction rescaled to the
original norm: the original itself (clean), the AR's reconstruction from the row's explanation
(nla), the mean direction (the ablation), and the reconstruction from another row's explanation
(shuffled). Each run is scored by the cross-entropy of the real next token and the KL divergence
from the clean next-token distribution. As sparse-autoencoder work reports it, the loss recovered
is the share of the ablation's loss increase that a splice undoes:
(CE_ablate − CE_splice) / (CE_ablate − CE_clean); 100% is as good as the original, 0% as the mean.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from nla.evaluation.bootstrap import bootstrap_interval
from nla.models.patching import next_token_logprobs, rescaled

VARIANTS = ("clean", "nla", "mean", "shuffled")


def loss_recovered(ce_clean: np.ndarray, ce_ablate: np.ndarray, ce_splice: np.ndarray) -> float:
    """(mean CE_ablate − mean CE_splice) / (mean CE_ablate − mean CE_clean); NaN when the ablation
    costs nothing (the ratio is undefined)."""
    gap = float(np.mean(ce_ablate) - np.mean(ce_clean))
    return float((np.mean(ce_ablate) - np.mean(ce_splice)) / gap) if gap else float("nan")


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


def summary(scores: dict, draws) -> dict:
    """Mean CE and KL of every variant and the loss recovered by the nla and shuffled splices, each
    with a document-level interval."""
    ce = {name: scores[name]["ce"] for name in VARIANTS}
    result = {name: {"ce": bootstrap_interval(lambda rows, v=ce[name]: float(v[rows].mean()), draws),
                     "kl": bootstrap_interval(lambda rows, v=scores[name]["kl"]: float(v[rows].mean()), draws)}
              for name in VARIANTS}
    for name in ("nla", "shuffled"):
        result[name]["loss_recovered"] = bootstrap_interval(
            lambda rows, v=ce[name]: loss_recovered(ce["clean"][rows], ce["mean"][rows], v[rows]), draws)
    return result
