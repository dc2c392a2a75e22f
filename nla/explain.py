"""``nla explain``: explain a text's activations, token by token, with a trained NLA pair.

For each chosen token of the text, the TARGET model's residual after block K is read, the AV writes
an explanation of it, the AR turns that explanation back into a vector, and the two vectors are
compared. The target is the model the pair was trained on (the AV sidecar's ``base_model``) unless
``--target`` names another with the same width, e.g. a local copy.

Default positions: every non-special token at index 1 or later (index 0 is the BOS, or for models
without one, a token with no context), the last ``DEFAULT_POSITIONS`` of them; the last token when
no other qualifies. The last tokens are the ones with the most context, the kind of position the
pair was trained on.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import asdict, dataclass

import torch
from transformers.utils import logging as hf_logging

from nla.base_model import locate_base_model
from nla.errors import ConfigError, field_scope
from nla.explain_html import check_page_path, write_page
from nla.explain_render import render_table
from nla.export import load_pair_with_meta, read_pair_meta
from nla.maths import cosine, normalized_mse
from nla.modules import adapters
from nla.modules.backbone import BackboneArgs, load_causal_lm, load_tokenizer
from nla.modules.residual import read_residual
from nla.padding import pad as pad_rows, pad_token_id

DEFAULT_POSITIONS = 32
BATCH = 16
"""Positions verbalized and reconstructed together."""


@dataclass
class ExplainedToken:
    """One row of ``nla explain``'s output."""

    position: int
    """Index of the token in the tokenized text (BOS included)."""
    token: str
    """The token as text."""
    explanation: str
    """What the AV wrote: the text between the explanation tags, or its whole answer when the
    closing tag never came (then ``parsed`` is false)."""
    parsed: bool
    """The answer held a complete ``<explanation>...</explanation>``."""
    cosine: float
    """Cosine between the AR's reconstruction and the real activation."""
    mse: float
    """Normalised MSE between them, 2(1 - cos): 0 same direction, 2 orthogonal."""
    fve: float | None
    """1 - mse / Var with the held-out rawvar the sidecar records; None when it records none."""


def recorded_variance(*trainings: dict) -> float | None:
    """The first positive ``heldout_variance`` among the sidecars' training records."""
    for training in trainings:
        value = training.get("heldout_variance")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


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


def _target_vectors(name: str, layer: int, d_model: int, text: str, positions, device):
    """(vectors [P, d] in float32, token texts, positions) of ``text`` in the target model; the
    target is freed before returning, so it never shares memory with the pair."""
    args = BackboneArgs(name)
    with field_scope("target"):
        tokenizer = load_tokenizer(args)
    # Default special tokens, as the activation cache tokenized its documents (a BOS for Llama/Gemma).
    encoded = tokenizer(text, return_special_tokens_mask=True)
    ids = encoded["input_ids"]
    special = [bool(s) or i in tokenizer.all_special_ids for s, i in zip(encoded["special_tokens_mask"], ids)]
    chosen = choose_positions(len(ids), special, positions)
    with field_scope("target"):
        model = load_causal_lm(args, keep_layers=layer + 1).eval().to(device)
    width = adapters.hidden_size(model.config)
    if width != d_model:
        raise ConfigError("target", f"'{name}' has width {width}; the pair needs {d_model}")
    input_ids = torch.tensor([ids], device=device)
    cols = torch.tensor(chosen, device=device)
    vectors = read_residual(model, layer, input_ids, torch.ones_like(input_ids), torch.zeros_like(cols), cols)
    tokens = [tokenizer.decode([ids[p]], clean_up_tokenization_spaces=False) for p in chosen]
    return vectors.float(), tokens, chosen


def explain_text(
    av: str,
    ar: str,
    text: str,
    positions: list[int] | None = None,
    target: str | None = None,
    max_new_tokens: int = 150,
    seed: int = 0,
    temperature: float = 0.0,
) -> tuple[list[ExplainedToken], float | None, str]:
    """The rows ``nla explain`` prints, the FVE baseline it used (None when none is recorded) and
    the target model it read."""
    if not text.strip():
        raise ConfigError("text", "is empty; give the text whose activations to explain")
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens", f"is {max_new_tokens}; it must be at least 1")
    if temperature < 0:
        raise ConfigError("temperature", f"is {temperature}; use 0 for greedy decoding or a positive value")
    (_, av_meta), (_, ar_meta) = read_pair_meta(av, ar)
    given = target
    target = target or locate_base_model(av_meta.base_model, av_meta.base_model_source) or ar_meta.base_model
    if not target:
        raise ConfigError("target", "the sidecars name no base_model; pass --target with the model the pair explains")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layer = av_meta.extraction_layer_index
    try:
        vectors, tokens, chosen = _target_vectors(target, layer, av_meta.d_model, text, positions, device)
    except ConfigError as error:
        if given is not None or not error.field.startswith("target"):
            raise
        raise ConfigError("target", f"the base model the sidecar names cannot be loaded ({error.detail}); pass "
                          "--target with the model the pair was trained on (a local copy)") from None
    verbalizer, reconstructor, prompts, _, _ = load_pair_with_meta(av, ar)
    verbalizer.to(device)
    reconstructor.to(device)
    variance = recorded_variance(ar_meta.training, av_meta.training)
    pad = pad_token_id(prompts.tokenizer)
    rows: list[ExplainedToken] = []
    for start in range(0, len(chosen), BATCH):
        batch = vectors[start : start + BATCH]
        samples = verbalizer.sample(
            batch, [prompts.av_prompt_ids] * len(batch), max_new_tokens=max_new_tokens,
            temperature=temperature or 1.0, greedy=temperature == 0, seed=seed + start,
        )
        explanations = [p if p is not None else t.strip() for p, t in zip(samples.parsed, samples.texts)]
        with torch.no_grad():
            ids, mask = pad_rows([prompts.ar_ids(e) for e in explanations], pad, "right")
            predicted = reconstructor(ids.to(device), mask.to(device))
        cos, mse = cosine(predicted, batch).tolist(), normalized_mse(predicted, batch).tolist()
        for i, explanation in enumerate(explanations):
            rows.append(ExplainedToken(
                position=chosen[start + i], token=tokens[start + i], explanation=explanation,
                parsed=samples.parsed[i] is not None, cosine=cos[i], mse=mse[i],
                fve=None if variance is None else 1 - mse[i] / variance,
            ))
    return rows, variance, target


def explain(
    av: str,
    ar: str,
    text: str,
    positions: list[int] | None = None,
    target: str | None = None,
    json: bool = False,
    max_new_tokens: int = 150,
    seed: int = 0,
    temperature: float = 0.0,
    html: str | None = None,
) -> None:
    """Explain the activations of TEXT token by token with an NLA pair: for each position, the AV's
    explanation of the target model's layer-K residual, and how well the AR rebuilds the residual from
    it (cosine, normalised MSE, and FVE when the AR sidecar records the held-out baseline).

    Args:
        av: Directory of the verbalizer (an ``nla`` export or a released ``-av`` checkpoint).
        ar: Directory of the reconstructor that pairs with it.
        text: The text whose activations to explain.
        positions: Token indices to explain (BOS included in the count; negative counts from the end).
            Default: the last 32 non-special tokens at index 1 or later.
        target: The model whose activations are read; default the AV sidecar's ``base_model``.
        json: Print a JSON list of rows instead of a table.
        max_new_tokens: Cap on each explanation's length in tokens.
        seed: Seed of sampling when ``temperature`` is positive.
        temperature: 0 decodes greedily (the default); a positive value samples at that temperature.
        html: Also write the round-trip explorer to this file: one self-contained page showing every
            token, coloured by FVE or cosine, each explained one clickable for its explanation.
    """
    if html is not None:
        check_page_path(html)
    # Three models load per call; their progress bars would bury the table on the terminal.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        rows, variance, target = explain_text(av, ar, text, positions, target, max_new_tokens, seed, temperature)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if json:
        print(jsonlib.dumps([asdict(row) for row in rows], ensure_ascii=False, indent=1))
    else:
        print(render_table(rows, variance, target))
    if html is not None:
        page = write_page(html, av, ar, text, rows, variance, target)
        if not json:
            print(f"page: {page}")
