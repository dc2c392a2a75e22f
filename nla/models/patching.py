"""Writing a vector into the target's residual stream after block K at one position.

``nla steer`` and the causal splice of ``nla evaluate`` both patch through ``patched_residual``: a
forward hook on decoder block K that replaces the block's output at one position, for the first
forward call only (the prefill: later decode steps hold other positions and keep the patched
position in their KV cache). What replaces it is computed from the clean residual there, so callers
can rescale to its norm or add to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import DynamicCache

from nla.models import adapters
from nla.models.residual import block_output
from nla.models.sampling import cache_keyword


def rescaled(directions: Tensor, norms: Tensor) -> Tensor:
    """``directions`` [B, d] rescaled to ``norms`` [B] (float32): a row rescaled to its own norm is
    returned bit for bit."""
    directions = directions.float()
    return directions * (norms.float() / directions.norm(dim=-1)).unsqueeze(-1)


@contextmanager
def patched_residual(model, layer: int, position: int, replace: Callable[[Tensor], Tensor]) -> Iterator[dict]:
    """Within the block, the first forward through ``model`` has the output of block ``layer`` at
    ``position`` replaced by ``replace(clean)``, where ``clean`` is that output ``[B, d]`` in float32;
    the result goes back in the model's dtype. Yields ``{"clean": ...}``, filled once patched."""
    seen: dict = {}

    def hook(_module, _args, output):
        if "clean" in seen:
            return None
        hidden = block_output(output)
        if hidden.shape[1] <= position:
            raise ValueError(f"the patched forward holds {hidden.shape[1]} positions; position {position} is outside")
        seen["clean"] = clean = hidden[:, position].float()
        hidden = hidden.clone()
        hidden[:, position] = replace(clean).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, (tuple, list)) else hidden

    handle = adapters.decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def next_token_logprobs(model, ids: Tensor, layer: int, position: int, replace: Callable[[Tensor], Tensor]) -> Tensor:
    """float32 ``[B, vocab]`` log-probabilities of the token after ``position`` for the rows of ``ids``
    ``[B, T]`` (all of one length, no padding), with the residual patched by ``replace``."""
    with torch.no_grad(), patched_residual(model, layer, position, replace):
        logits = model(input_ids=ids, use_cache=False).logits[:, position]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def greedy_continuation(model, ids: Tensor, steps: int, layer: int, position: int,
                        replace: Callable[[Tensor], Tensor] | None) -> tuple[list[int], Tensor]:
    """``steps`` greedy tokens after ``ids`` [1, T] (no stop at end-of-text: a fixed length keeps
    runs comparable) with the residual at ``position`` patched by ``replace`` during the prefill
    (``None``: the clean run); returns them and the float32 log-probabilities of the first one."""
    cache_arg = {cache_keyword(model): DynamicCache(config=model.config)}
    with patched_residual(model, layer, position, replace or (lambda clean: clean)):
        out = model(input_ids=ids, use_cache=True, **cache_arg)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    tokens = [int(first.argmax())]
    for _ in range(steps - 1):
        out = model(input_ids=torch.tensor([[tokens[-1]]], device=ids.device), use_cache=True, **cache_arg)
        tokens.append(int(out.logits[0, -1].argmax()))
    return tokens, first
