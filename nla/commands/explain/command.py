"""``nla explain``: explain a text's activations, token by token, with a trained NLA pair.

For each chosen token of the text, the TARGET model's residual after block K is read, the AV writes
an explanation of it, the AR turns that explanation back into a vector, and the two vectors are
compared; the AR also reads the explanation's first tokens alone (the detail curve). The target is
the model the pair was trained on (the AV sidecar's ``base_model``) unless ``--target`` names another
with the same width, e.g. a local copy. Positions: ``nla.models.target.choose_positions``.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import asdict, dataclass, field

import torch
from transformers.utils import logging as hf_logging

from nla.models.base_model import locate_base_model
from nla.core.errors import ConfigError
from nla.evaluation.detail import prefix, spread_points, token_ends
from nla.commands.explain.flags import final_token_contradiction
from nla.commands.explain.page import check_page_path, read_steering, write_page
from nla.commands.explain.table import render_table
from nla.models.fingerprint import BaseModelMismatch
from nla.models.pair_loading import load_pair, pair_bases, read_pair_sidecars
from nla.core.maths import cosine, normalized_mse
from nla.models.target import choose_positions, load_target, residuals, target_tokenizer, tokenize

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
    detail: list[dict] = field(default_factory=list)
    """The detail curve: ``{"tokens": n, "chars": c, "cosine", "mse", "fve"}`` for the AR reading only
    the first n tokens (the first c characters) of the explanation; the last point is the whole."""
    flag: str | None = None
    """The final token the explanation quotes, when it contradicts the real one
    (``nla.commands.explain.flags``); None when it agrees or quotes none."""


def explain_text(
    av: str,
    ar: str,
    text: str,
    positions: list[int] | None = None,
    target: str | None = None,
    max_new_tokens: int = 150,
    seed: int = 0,
    temperature: float = 0.0,
    detail_points: int = 8,
    base: str | None = None,
    layer: int | None = None,
) -> tuple[list[ExplainedToken], float | None, str]:
    """The rows ``nla explain`` prints, the FVE baseline it used (None when none is recorded) and
    the target model it read."""
    if not text.strip():
        raise ConfigError("text", "is empty; give the text whose activations to explain")
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens", f"is {max_new_tokens}; it must be at least 1")
    if temperature < 0:
        raise ConfigError("temperature", f"is {temperature}; use 0 for greedy decoding or a positive value")
    if detail_points < 0:
        raise ConfigError("detail_points", f"is {detail_points}; use 0 for no detail curve or a positive count")
    av_sidecar, ar_sidecar = read_pair_sidecars(av, ar, layer)
    # A released adapter's base is the target too; one that is not here asks for --base at once.
    av_base, ar_base = pair_bases(av, ar, av_sidecar, ar_sidecar, base)
    given = target or base
    target = (given or locate_base_model(av_sidecar.base_model, av_sidecar.base_model_source)
              or ar_sidecar.base_model or av_base or ar_base)
    if not target:
        raise ConfigError("target", "the sidecars name no base_model; pass --target with the model the pair explains")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layer = av_sidecar.extraction_layer_index
    try:
        tokenized = tokenize(target_tokenizer(target), text)
        chosen = choose_positions(len(tokenized.ids), tokenized.special, positions)
        # The target is freed before the pair loads, so the two never share memory.
        recorded = (av_sidecar.base_model, av_sidecar.base_model_fingerprint)
        vectors = residuals(load_target(target, av_sidecar.d_model, device, keep_layers=layer + 1, base=recorded),
                            layer, tokenized.ids, chosen)
    except ConfigError as error:
        if given is not None or not error.field.startswith("target") or isinstance(error, BaseModelMismatch):
            raise
        raise ConfigError("target", f"the base model the sidecar names cannot be loaded ({error.detail}); pass "
                          "--target with the model the pair was trained on (a local copy)") from None
    pair = load_pair(av, ar, base=base, layer=layer).to(device)
    variance = pair.heldout_variance

    def scores(predicted: torch.Tensor, wanted: torch.Tensor) -> list[dict]:
        cos, mse = cosine(predicted, wanted).tolist(), normalized_mse(predicted, wanted).tolist()
        return [{"cosine": c, "mse": m, "fve": None if variance is None else 1 - m / variance} for c, m in zip(cos, mse)]

    answers = pair.explain(vectors, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           batch_size=BATCH)
    explanations = answers.shown
    rows: list[ExplainedToken] = []
    for position, explanation, parsed, score in zip(chosen, explanations, answers.explanations,
                                                    scores(pair.reconstruct(explanations, batch_size=BATCH), vectors)):
        token, context = tokenized.tokens[position], tokenized.context(position)
        rows.append(ExplainedToken(position=position, token=token, explanation=explanation, parsed=parsed is not None,
                                   **score, flag=final_token_contradiction(explanation, token, context)))
    if detail_points:
        for row, vector in zip(rows, vectors):
            ends = token_ends(pair.prompts.tokenizer, row.explanation)
            points = spread_points(len(ends), detail_points)
            texts = [prefix(row.explanation, ends, n) for n in points]
            curve = scores(pair.reconstruct(texts, batch_size=BATCH), vector.expand(len(texts), -1))
            row.detail = [{"tokens": n, "chars": len(t), **score} for n, t, score in zip(points, texts, curve)]
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
    steering: str | None = None,
    detail_points: int = 8,
    base: str | None = None,
    layer: int | None = None,
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
            token, coloured by FVE or cosine, each explained one clickable for its explanation and
            its detail curve.
        steering: A JSON file written by ``nla steer --json`` on the same text: the page then shows
            its original and steered continuations (needs ``html``).
        detail_points: Prefixes of each explanation the AR also reads alone (the detail curve, shown
            on the page and in ``--json``); 0 skips it.
        base: The base model a released pair's adapters (or truncated AR) go on, when the path their
            files name is not on this machine; also the default target.
        layer: The layer to explain with a pair that serves several (one AR head per layer).
    """
    if steering is not None and html is None:
        raise ConfigError("steering", "is shown on the explorer page only; pass --html too")
    panel = None
    if html is not None:
        check_page_path(html)
        panel = None if steering is None else read_steering(steering, text)
    # Three models load per call; their progress bars would bury the table on the terminal.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        rows, variance, target = explain_text(av, ar, text, positions, target, max_new_tokens, seed, temperature,
                                              detail_points, base, layer)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if json:
        print(jsonlib.dumps([asdict(row) for row in rows], ensure_ascii=False, indent=1))
    else:
        print(render_table(rows, variance, target))
    if html is not None:
        page = write_page(html, av, ar, text, rows, variance, target, panel, layer)
        if not json:
            print(f"page: {page}")
