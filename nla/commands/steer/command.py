"""``nla steer``: explain one position of a text, edit the explanation, and patch the reconstruction
of the edit into the target's residual stream after block K at that position.

Runs, all greedy and of the same fixed length:

- clean: the target alone;
- original (``replace`` mode): the residual replaced by the AR's reconstruction of the unedited
  explanation, rescaled to the original norm: what the round trip alone does;
- steered: ``replace``: the reconstruction of the edited explanation, rescaled to the original norm;
  ``add``: the original residual plus the difference of the two reconstructions, each rescaled to
  the original norm first (an empty edit adds exactly nothing).

The edit's effect is steered against the run it differs from by the edit alone: the original run in
``replace`` mode, the clean run in ``add`` mode. Watched words are scored by the probability of
their first token (with a leading space) as the first token of the continuation.
"""

from __future__ import annotations

import json as jsonlib

import torch
from transformers.utils import logging as hf_logging

from nla.core.errors import ConfigError
from nla.models.pair_loading import load_pair, pair_bases, pair_directories, read_pair_sidecars
from nla.core.maths import normalized_mse
from nla.models.patching import greedy_continuation, rescaled
from nla.models.target import choose_positions, load_target, residuals, target_tokenizer, tokenize
from nla.commands.steer.edits import MODES, apply_edits, parse_replacements, watched_words


def _replacements(h_norm: torch.Tensor, original: torch.Tensor, edited: torch.Tensor, mode: str) -> dict:
    """The patch of each run, as functions of the clean residual [1, d]."""
    if mode == "add":
        shift = rescaled(edited, h_norm) - rescaled(original, h_norm)
        return {"clean": None, "steered": lambda clean: clean + shift.to(clean.device)}
    return {"clean": None,
            "original": lambda clean: rescaled(original.to(clean.device), clean.norm(dim=-1)),
            "steered": lambda clean: rescaled(edited.to(clean.device), clean.norm(dim=-1))}


def steer_text(av: str, ar: str, text: str, position: int = -1, replace: list[str] | None = None,
               explanation: str | None = None, mode: str = "replace", tokens: int = 20, watch: str | None = None,
               target: str | None = None, max_new_tokens: int = 150, base: str | None = None,
               layer: int | None = None) -> dict:
    """Everything ``nla steer`` prints, as a JSON-ready mapping."""
    if not text.strip():
        raise ConfigError("text", "is empty; give the text to steer")
    if mode not in MODES:
        raise ConfigError("mode", f"is {mode!r}; use one of {', '.join(MODES)}")
    if replace and explanation is not None:
        raise ConfigError("explanation", "replaces the whole explanation; give it or --replace, not both")
    if tokens < 1 or max_new_tokens < 1:
        raise ConfigError("tokens" if tokens < 1 else "max_new_tokens", "must be at least 1")
    if explanation is not None and not explanation.strip():
        raise ConfigError("explanation", "is empty; give the edited explanation's text")
    edits = parse_replacements(replace)
    words = watched_words(watch)
    av_sidecar, ar_sidecar = read_pair_sidecars(av, ar, layer)
    # A released adapter's base is the target too; one that is not here asks for --base at once.
    av_base, ar_base = pair_bases(av, ar, av_sidecar, ar_sidecar, base)
    target = target or base or av_sidecar.base_model or ar_sidecar.base_model or av_base or ar_base
    if not target:
        raise ConfigError("target", "the sidecars name no base_model; pass --target with the model the pair explains")
    layer, device = av_sidecar.extraction_layer_index, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = target_tokenizer(target)
    tokenized = tokenize(tokenizer, text)
    at = choose_positions(len(tokenized.ids), tokenized.special, [position])[0]
    model = load_target(target, av_sidecar.d_model, device, base=(av_sidecar.base_model, av_sidecar.base_model_fingerprint))
    h = residuals(model, layer, tokenized.ids, [at])
    pair = load_pair(av, ar, base=base, layer=layer).to(device)
    answers = pair.explain(h, max_new_tokens=max_new_tokens)
    original = answers.shown[0]
    edited = explanation if explanation is not None else apply_edits(original, edits)
    # Each read alone: an empty edit then reproduces the original reconstruction bit for bit.
    read = pair.reconstruct([original, edited], batch_size=1)
    variance = pair.heldout_variance
    del pair
    mse = normalized_mse(read, h.expand_as(read)).tolist()
    ids = torch.tensor([tokenized.ids], device=device)
    runs = {name: greedy_continuation(model, ids, tokens, layer, at, patch)
            for name, patch in _replacements(h.norm(dim=-1), read[:1], read[1:], mode).items()}
    before = "original" if mode == "replace" else "clean"
    watched = []
    for word in words:
        first = tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]
        probabilities = {name: float(run[1][first].exp()) for name, run in runs.items()}
        watched.append({"word": word, "token": tokenizer.decode([first]), "token_id": first, **probabilities,
                        "before": probabilities[before]})
    first_before, first_steered = runs[before][1], runs["steered"][1]
    return {
        "text": text, "target": target, "layer": layer, "position": at, "token": tokenized.tokens[at],
        "mode": mode, "explanation": original, "parsed": answers.explanations[0] is not None,
        "edits": [list(edit) for edit in edits], "edited_explanation": edited,
        "reconstruction": {name: {"mse": m, "fve": None if variance is None else 1 - m / variance}
                           for name, m in zip(("original", "edited"), mse)},
        "tokens": tokens, "before": before,
        "continuations": {name: tokenizer.decode(run[0]) for name, run in runs.items()},
        "next_token_kl": float((first_before.exp() * (first_before - first_steered)).sum()),
        "watch": watched,
    }


def render(result: dict) -> str:
    """The plain-text report of ``steer_text``'s result."""
    def line(text: str) -> str:
        return " / ".join(part.strip() for part in text.splitlines() if part.strip())

    lines = [f"target: {result['target']}  layer {result['layer']}  position {result['position']} "
             f"(token {result['token']!r})  mode: {result['mode']}",
             f"explanation: {line(result['explanation'])}", f"edited:      {line(result['edited_explanation'])}",
             "reconstruction MSE (0 same direction, 2 orthogonal): original "
             f"{result['reconstruction']['original']['mse']:.4f}, "
             f"edited {result['reconstruction']['edited']['mse']:.4f}",
             ""]
    labels = {"clean": "clean run", "original": "original explanation", "steered": "steered (edited)"}
    for name, text in result["continuations"].items():
        lines.append(f"{labels[name]:<22} {text!r}")
    lines.append(f"\nnext-token KL({result['before']} || steered): {result['next_token_kl']:.4g} nats")
    if result["watch"]:
        runs = list(result["continuations"])
        lines.append(f"{'watch':<12} {'first token':<14} " + " ".join(f"p {name:<10}" for name in runs) + " change")
        for item in result["watch"]:
            cells = " ".join(f"{item[name]:<12.4g}" for name in runs)
            lines.append(f"{item['word']:<12} {item['token']!r:<14} {cells} {item['steered'] - item['before']:+.4g}")
    return "\n".join(lines)


def steer(text: str, av: str | None = None, ar: str | None = None, pair: str | None = None, position: int = -1,
          replace: list[str] | None = None, explanation: str | None = None, mode: str = "replace", tokens: int = 20,
          watch: str | None = None, target: str | None = None, max_new_tokens: int = 150, json: bool = False,
          base: str | None = None, layer: int | None = None) -> None:
    """Edit what an explanation says and see what the target does differently: explain POSITION of
    TEXT, apply the edit, patch the edited explanation's reconstruction into the target's residual
    after block K at that position, and print the clean, original and steered continuations.

    Args:
        text: The text to steer; the continuation follows its end.
        av: Directory of the verbalizer (an ``nla`` export or a released ``-av`` checkpoint).
        ar: Directory of the reconstructor that pairs with it.
        pair: An export directory holding ``av/`` and ``ar/``, instead of ``av`` and ``ar``.
        position: The token whose activation is explained and patched (BOS included in the count;
            negative counts from the end). Default: the last token.
        replace: Edits of the explanation, ``OLD=NEW`` (repeatable); each OLD must occur in it. With
            neither this nor ``explanation`` the edit is empty (a control: nothing should change).
        explanation: The edited explanation as a whole text, instead of ``replace``.
        mode: ``replace``: the residual becomes the edited explanation's reconstruction, rescaled to
            the original norm; ``add``: the original residual plus the difference of the edited and
            the original reconstructions (each rescaled to the original norm).
        tokens: Length of every continuation, in greedy tokens.
        watch: Comma-separated words whose first-token probability to compare, e.g. ``rabbit,mouse``.
        target: The model to steer; default the AV sidecar's ``base_model``.
        max_new_tokens: Cap on the explanation's length in tokens.
        json: Print the result as JSON (``nla explain --steering FILE`` shows it on the explorer page).
        base: The base model a released pair's adapters (or truncated AR) go on, when the path their
            files name is not on this machine; also the default target.
        layer: The layer to steer with a pair that serves several (one AR head per layer).
    """
    av, ar = pair_directories(av, ar, pair)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        result = steer_text(av, ar, text, position, replace, explanation, mode, tokens, watch, target, max_new_tokens,
                            base, layer)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    print(jsonlib.dumps(result, ensure_ascii=False, indent=1) if json else render(result))
