"""The target model as ``nla explain``, ``nla evaluate`` and ``nla steer`` read it: a text tokenized
the way the activation cache tokenizes documents (default special tokens, so a BOS for Llama/Gemma),
the positions to read, and the residual after block K at those positions.

Default positions: every non-special token at index 1 or later (index 0 is the BOS, or for models
without one, a token with no context), the last ``DEFAULT_POSITIONS`` of them; the last token when
no other qualifies. The last tokens are the ones with the most context, the kind of position a pair
is trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nla.core.errors import ConfigError, field_scope
from nla.models import adapters
from nla.models.fingerprint import check_same_base, model_fingerprint
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.residual import read_residual

DEFAULT_POSITIONS = 32


@dataclass
class TokenizedText:
    """One text in the target's tokens."""

    text: str
    """The text as given."""
    ids: list[int]
    """Token ids with the tokenizer's default special tokens."""
    special: list[bool]
    """True where the token is a special token (added or typed in the text)."""
    tokens: list[str]
    """Each token decoded on its own."""
    ends: list[int]
    """Character index in ``text`` where each token ends (0 for added special tokens)."""

    def context(self, position: int) -> str:
        """The text read once the token at ``position`` is consumed."""
        return self.text[: max(self.ends[: position + 1])]


def tokenize(tokenizer, text: str) -> TokenizedText:
    encoded = tokenizer(text, return_special_tokens_mask=True, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    special = [bool(s) or i in tokenizer.all_special_ids for s, i in zip(encoded["special_tokens_mask"], ids)]
    tokens = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    return TokenizedText(text, ids, special, tokens, [int(end) for _, end in encoded["offset_mapping"]])


def choose_positions(length: int, special: list[bool], positions: list[int] | None) -> list[int]:
    """The positions to explain in a text of ``length`` tokens (negative ones count from the end)."""
    if positions is None:
        chosen = [i for i in range(1, length) if not special[i]]
        return chosen[-DEFAULT_POSITIONS:] or [length - 1]
    if not positions:
        raise ConfigError("positions", "is empty; give at least one position or leave it out")
    resolved = []
    for position in positions:
        if not -length <= position < length:
            raise ConfigError("positions", f"{position} is out of range for a text of {length} tokens; "
                              f"use 0 to {length - 1} (or -{length} to -1 from the end)")
        resolved.append(position % length)
    return resolved


def target_tokenizer(name: str):
    with field_scope("target"):
        return load_tokenizer(ModelArgs(name))


def load_target(name: str, d_model: int, device, keep_layers: int | None = None,
                base: tuple[str | None, str | None] = (None, None)):
    """The target causal LM in eval mode on ``device`` (the first ``keep_layers`` blocks only when
    given), checked to be the pair's base model (``base``: its name and fingerprint, as the sidecars
    record them) before it loads, and to have the pair's width."""
    with field_scope("target"):
        now = model_fingerprint(ModelArgs(name))
    check_same_base("target", ("the pair", *base), ("the target", name, now),
                    "pass --target with the model the pair was trained on")
    with field_scope("target"):
        model = load_causal_lm(ModelArgs(name), keep_layers=keep_layers).eval().to(device)
    width = adapters.hidden_size(model.config)
    if width != d_model:
        raise ConfigError("target", f"'{name}' has width {width}; the pair needs {d_model}")
    return model


@torch.no_grad()
def residuals(model, layer: int, ids: list[int], positions: list[int]) -> Tensor:
    """float32 ``[len(positions), d]``: the residual after block ``layer`` at ``positions`` of one text."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    cols = torch.tensor(positions, device=device)
    return read_residual(model, layer, input_ids, torch.ones_like(input_ids), torch.zeros_like(cols), cols).float()
