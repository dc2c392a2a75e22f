"""Read the residual stream after block K without running the blocks above it."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from nla.models import adapters


class _StopForward(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def block_output(output) -> torch.Tensor:
    """Decoder blocks return a tensor in some families and a tuple in others; the residual comes first."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def read_residual(
    model: PreTrainedModel,
    layer: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """Residual after block ``layer`` (HF ``hidden_states[layer + 1]``) at the token ``(rows[i], cols[i])``.

    Returns ``[len(rows), d]`` in the model's dtype. Batches must be right-padded: several families
    derive position ids from the sequence index, not the attention mask, so left padding would shift
    them. A forward hook on block ``layer`` raises as soon as that block is done, so the blocks above
    it, the final norm and the LM head never run.
    """
    adapters.check_layer(model.config, layer)
    if bool((attention_mask[:, 0] == 0).any()):
        raise ValueError("read_residual needs right-padded batches (found padding on the left)")

    def stop(_module, _args, output):
        raise _StopForward(block_output(output))

    handle = adapters.decoder_layers(model)[layer].register_forward_hook(stop)
    try:
        adapters.decoder(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward as done:
        return done.hidden[rows, cols]
    finally:
        handle.remove()
    raise RuntimeError(f"block {layer} never ran; the adapter's layer path is wrong for this model")
