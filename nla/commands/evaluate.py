"""``nla evaluate``: every check of ``nla.evaluation`` on one pair and one set of held-out rows.

Cheap checks first (arguments, sidecars, the data's shape, the teachers), then the pair runs once
over the rows (the greedy round trip), and the other checks reuse its explanations and
reconstructions; the causal splice loads the full target last, after the pair is freed.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from nla.data.teachers import TeacherArgs, chat_teacher
from nla.core.errors import ConfigError
from nla.evaluation import claims as claim_check
from nla.evaluation import detail as detail_check
from nla.evaluation import splice as splice_check
from nla.evaluation import transforms as transform_check
from nla.evaluation.bootstrap import RowVariance, difference_interval, document_resamples, fve_interval
from nla.evaluation.heldout import HeldoutRows, cache_rows, splice_inputs, text_rows
from nla.evaluation.report import markdown, write_report
from nla.evaluation.round_trip import mean_predictor_mse, row_mse, shuffled_mse
from nla.models.pair_loading import load_pair, load_reader, pair_directories, read_pair_sidecars
from nla.core.maths import ORTHOGONAL_MSE, orthogonal_to
from nla.models.sidecar import generation_settings
from nla.models.target import load_target, target_tokenizer

CHECKS = ("round_trip", "transforms", "detail", "splice", "claims")


def _stage(message: str) -> None:
    # Progress on stderr: stdout carries the report only.
    print(f"nla evaluate: {message}", file=sys.stderr, flush=True)


def _settings(checks, transforms, rewriter, cache, texts, rows, resamples, window, threshold, recurring_at):
    """The checks and transforms to run, after every argument check that needs no model."""
    checks = list(CHECKS if checks is None else checks)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown or not checks:
        raise ConfigError("checks", f"unknown {unknown}; choose from {', '.join(CHECKS)}" if unknown else "is empty")
    known = {**{name: kind for name, (kind, _) in transform_check.LOCAL.items()}, **transform_check.REWRITES}
    if transforms is None:
        names = list(transform_check.LOCAL) + (list(transform_check.REWRITES) if rewriter else [])
    else:
        names = list(transforms)
    for name in names:
        if name not in known:
            raise ConfigError("transforms", f"unknown transform '{name}'; choose from {', '.join(known)}")
        if name in transform_check.REWRITES and rewriter is None:
            raise ConfigError("rewriter", f"the '{name}' transform is written by a chat model; configure "
                              "--rewriter.provider and --rewriter.model")
    if (cache is None) == (texts is None):
        raise ConfigError("cache", "give the held-out data either as --cache (with --split) or as --texts, not both"
                          if cache is not None else "no data: give --cache DIR (its held-out split) or --texts")
    for field, value, low in (("rows", rows, 2), ("resamples", resamples, 1), ("claim_window", window, 1)):
        if value < low:
            raise ConfigError(field, f"is {value}; it must be at least {low}")
    for field, value in (("claim_threshold", threshold), ("recurring_at", recurring_at)):
        if not 0 < value <= 1:
            raise ConfigError(field, f"is {value}; it must be in (0, 1]")
    return checks, {name: known[name] for name in names}


def evaluate(
    out: str,
    av: str | None = None,
    ar: str | None = None,
    pair: str | None = None,
    reconstructor: str | None = None,
    cache: str | None = None,
    split: str = "test",
    rows: int = 192,
    texts: list[str] | None = None,
    positions: list[int] | None = None,
    target: str | None = None,
    checks: list[str] | None = None,
    transforms: list[str] | None = None,
    rewriter: TeacherArgs | None = None,
    language: str = "French",
    judge: TeacherArgs | None = None,
    claim_window: int = 5,
    claim_threshold: float = 0.5,
    recurring_at: float = 0.5,
    max_new_tokens: int | None = None,
    micro_batch_size: int = 16,
    resamples: int = 2000,
    seed: int = 0,
    base: str | None = None,
    layer: int | None = None,
) -> None:
    """The paper's checks of an NLA pair on held-out data, with document-level bootstrap intervals:
    the round trip and its controls, transform robustness, the detail curve, the causal splice and
    claim consistency. Writes OUT/report.json, OUT/report.md, SVG figures and TensorBoard scalars.

    Args:
        out: Directory for the report (created; files of an earlier report there are replaced).
        av: Directory of the verbalizer (an ``nla`` export or a released ``-av`` checkpoint).
        ar: Directory of the reconstructor that pairs with it.
        pair: An export directory holding ``av/`` and ``ar/``, instead of ``av`` and ``ar``.
        reconstructor: An AR directory that was not trained with this AV (the SFT stage's ``ar/``, or
            one trained on teacher text only): it reads the same explanations, and the report puts its
            FVE beside the co-trained AR's. A gain that only the co-adapted AR can read shows as a gap.
        cache: An activation cache (``nla cache``) at the pair's layer: its ``split`` is scored.
        split: What of the cache to score: ``test`` (the held-out half no training choice saw, the
            default), ``validation`` (the half training evaluated on), ``heldout`` (both) or another
            cache split.
        rows: The first ROWS rows of the split, in the order training and the quickstart read them.
        texts: Instead of a cache: texts whose activations the target gives (each its own document).
        positions: Token positions of every text (negative from the end); default: its last 32 tokens.
        target: The model the pair explains; default the AV sidecar's ``base_model``. Texts are read and
            the causal splice runs through it.
        checks: Which checks to run; default all of round_trip, transforms, detail, splice, claims.
        transforms: Which transforms; default every local one, plus paraphrase and back_translation
            when ``rewriter`` is set.
        rewriter: A chat model (provider hf, openai or anthropic, as a teacher) that paraphrases and
            translates explanations.
        language: The language back-translation goes through.
        judge: A chat model that says whether the text supports each claim (temperature 0 advised).
        claim_window: Neighbouring explained positions on each side that a claim may recur at.
        claim_threshold: Content-word Jaccard overlap at which two claims count as the same.
        recurring_at: Share of neighbours repeating a claim at which it counts as recurring.
        max_new_tokens: Cap on each explanation's length; default the cap the sidecar records for
            its round trip, else 150 (the reference's).
        micro_batch_size: Rows per AV and AR forward pass.
        resamples: Bootstrap draws over documents for every interval.
        seed: Seed of the bootstrap, the shuffled pairing and the local transforms.
        base: The base model a released pair's adapters (or truncated AR) go on, when the path their
            files name is not on this machine; also the default target.
        layer: The layer to evaluate with a pair that serves several (one AR head per layer).
    """
    av, ar = pair_directories(av, ar, pair)
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError("out", f"'{out}' is a file; give a directory for the report")
    checks, transform_kinds = _settings(checks, transforms, rewriter, cache, texts, rows, resamples, claim_window,
                                        claim_threshold, recurring_at)
    av_meta, ar_meta = read_pair_sidecars(av, ar, layer)
    if reconstructor is not None:
        _check_frozen(av, reconstructor)
    layer, d = av_meta.extraction_layer_index, av_meta.d_model
    recorded = generation_settings(ar_meta.training) or generation_settings(av_meta.training)
    cap = max_new_tokens or (recorded or {}).get("max_new_tokens") or 150
    if cap < 1 or micro_batch_size < 1:
        raise ConfigError("max_new_tokens" if cap < 1 else "micro_batch_size", "must be at least 1")
    target = target or base or av_meta.base_model or ar_meta.base_model
    if not target and (texts is not None or "splice" in checks):
        raise ConfigError("target", "the sidecars name no base_model; pass --target with the model the pair explains")
    teachers = {"rewriter": chat_teacher(rewriter, "rewriter"), "judge": chat_teacher(judge, "judge")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = None
        if cache is not None:
            held = cache_rows(cache, split, rows, layer, d, (av_meta.base_model, av_meta.base_model_fingerprint))
        else:
            model = load_target(target, d, device, keep_layers=None if "splice" in checks else layer + 1,
                                base=(av_meta.base_model, av_meta.base_model_fingerprint))
            held = text_rows(model, target_tokenizer(target), layer, texts, positions)
        report = run_checks(av, ar, held, checks, transform_kinds, teachers, language, cap, micro_batch_size,
                            resamples, seed, (claim_window, claim_threshold, recurring_at), target, model, device,
                            reconstructor, base_model=base, layer=layer)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    report["pair"] = {"av": av, "ar": ar, "stage": av_meta.stage, "base_model": av_meta.base_model, "layer": layer,
                      "d_model": d, "frozen_reconstructor": reconstructor}
    report["settings"].update(target=target, checks=checks, recorded_generation=recorded)
    write_report(report, out)
    print(markdown(report))
    print(f"\nreport: {Path(out) / 'report.md'} (and report.json, *.svg, tensorboard/)")


def _check_frozen(av: str, directory: str) -> None:
    """The frozen AR must read what this AV writes (same layer, width, AR prompt and base model)."""
    try:
        read_pair_sidecars(av, directory)
    except ConfigError as error:
        raise ConfigError("reconstructor", f"{directory} cannot score this AV's explanations: {error.field} "
                          f"{error.detail}") from None


def _frozen_mse(av: str, directory: str, explanations: list, valid: np.ndarray, vectors: torch.Tensor,
                micro: int, device) -> np.ndarray:
    """Per-row MSE of the explanations read by the AR in ``directory`` (rows without an answer stay
    orthogonal, MSE 2, as in the round trip)."""
    frozen = load_reader(av, directory).to(device)
    predictions = orthogonal_to(vectors)
    kept = np.flatnonzero(valid)
    if len(kept):
        predictions[kept] = frozen.reconstruct([explanations[i] for i in kept], batch_size=micro).cpu().float()
    return row_mse(predictions, vectors)


def run_checks(av: str, ar: str, held: HeldoutRows, checks: list[str], transform_kinds: dict, teachers: dict,
               language: str, cap: int, micro: int, resamples: int, seed: int, claim_args: tuple, target: str | None,
               model, device, frozen: str | None = None, base_model: str | None = None,
               layer: int | None = None) -> dict:
    """The report's mapping: data, settings and one entry per check."""
    vectors = held.vectors.float()
    # Each bootstrap draw divides by the variance of the rows it drew.
    variance = RowVariance(vectors)
    draws = document_resamples(held.documents, resamples, seed)
    pair = load_pair(av, ar, base=base_model, layer=layer).to(device)
    _stage(f"round trip on {len(held)} rows (greedy, at most {cap} new tokens)")
    trip = pair.round_trip(vectors, max_new_tokens=cap, batch_size=micro)
    predictions, explanations = trip.predictions.cpu(), trip.explanations
    mse = row_mse(predictions, vectors)
    valid = np.array(trip.valid)

    def score(texts: list[str], wanted: torch.Tensor) -> np.ndarray:
        return row_mse(pair.reconstruct(texts, batch_size=micro).cpu(), wanted)

    frozen_mse = None
    if frozen is not None and "round_trip" in checks:
        _stage(f"the same explanations read by the frozen reconstructor {frozen}")
        frozen_mse = _frozen_mse(av, frozen, explanations, valid, vectors, micro, device)
    report = {"data": {"rows": len(held), "documents": len(set(held.documents.tolist())), "variance": variance(),
                       "source": held.source},
              "settings": {"max_new_tokens": cap, "decoding": "greedy", "micro_batch_size": micro,
                           "resamples": resamples, "seed": seed, "invalid_answer": "orthogonal prediction, MSE 2"},
              "round_trip": _round_trip(mse, valid, predictions, vectors, held, variance, draws, seed, frozen_mse)}
    if "transforms" in checks and valid.any():
        _stage(f"transforms: {', '.join(transform_kinds)}")
        report["transforms"] = _transforms(transform_kinds, explanations, valid, mse, vectors, held, variance,
                                           score, teachers["rewriter"], language, resamples, seed)
    if "detail" in checks:
        _stage("detail curve")
        report["detail"] = _detail(explanations, valid, vectors, variance, draws, score, pair.prompts.tokenizer)
    if "claims" in checks:
        _stage("claims" + (" (asking the judge)" if teachers["judge"] is not None else ""))
        report["claims"] = _claims(explanations, held, draws, teachers["judge"], *claim_args)
    if "round_trip" not in checks:
        report.pop("round_trip")
    base = (pair.base_model, pair.base_fingerprint)
    pair = None  # freed before the splice loads the whole target
    gc.collect()
    if "splice" in checks:
        _stage("causal splice")
        if model is None:
            model = load_target(target, vectors.shape[1], device, base=base)
        report["splice"] = _splice(model, target_tokenizer(target), held, predictions, valid, vectors, resamples, seed)
    return report


def _round_trip(mse, valid, predictions, vectors, held, variance, draws, seed, frozen_mse=None) -> dict:
    shuffled = shuffled_mse(predictions, vectors, seed)
    fves = {"pair (round trip)": fve_interval(mse, variance, draws),
            "shuffled (pair's reconstructions, vectors deranged)": fve_interval(shuffled, variance, draws)}
    differences = {"pair - shuffled": difference_interval(mse, shuffled, variance, draws)}
    if frozen_mse is not None:
        fves["AV's explanations, frozen reconstructor"] = fve_interval(frozen_mse, variance, draws)
        differences["co-trained - frozen reconstructor"] = difference_interval(mse, frozen_mse, variance, draws)
    if held.mean is not None:
        mean = mean_predictor_mse(vectors, held.mean)
        fves["mean predictor (training split's mean)"] = fve_interval(mean, variance, draws)
        differences["pair - mean predictor"] = difference_interval(mse, mean, variance, draws)
    return {"fve": fves, "differences": differences, "valid_rate": float(valid.mean()),
            "valid_fve": float(1 - mse[valid].mean() / variance()) if valid.any() else None,
            "mse": float(mse.mean())}


def _transforms(kinds, explanations, valid, mse, vectors, held, variance, score, rewriter, language, resamples,
                seed) -> dict:
    kept = np.flatnonzero(valid)
    texts = [explanations[i] for i in kept]
    transformed, left_out = {}, {}
    for name in kinds:
        if name in transform_check.LOCAL:
            rewritten = transform_check.apply_local(name, texts, seed)
        else:
            rewritten = transform_check.apply_rewrite(name, texts, rewriter, language)
        transformed[name], left_out[name] = transform_check.score_transformed(
            texts, rewritten, lambda rows, new: score(new, vectors[kept[rows]]))
    results = transform_check.differences(mse[kept], transformed, variance.subset(kept), held.documents[kept],
                                          resamples, seed)
    return {name: {"kind": kinds[name], **result, **left_out[name]} for name, result in results.items()}


def _detail(explanations, valid, vectors, variance, draws, score, tokenizer) -> dict:
    kept = np.flatnonzero(valid)
    texts = [explanations[i] for i in kept]
    curves = {}
    for unit, ends_of in (("tokens", lambda t: detail_check.token_ends(tokenizer, t)),
                          ("sentences", detail_check.sentence_ends)):
        ends = [ends_of(text) for text in texts]
        points = []
        for n in detail_check.doubling_grid(max((len(e) for e in ends), default=1)):
            # Rows without an answer stay orthogonal at every n, as in the round trip.
            values = np.full(len(vectors), ORTHOGONAL_MSE)
            if len(kept):
                values[kept] = score([detail_check.prefix(t, e, n) for t, e in zip(texts, ends)], vectors[kept])
            points.append({"n": n, "fve": fve_interval(values, variance, draws)})
        curves[unit] = points
    return curves


def _claims(explanations, held, draws, judge, window: int, threshold: float, recurring_at: float) -> dict:
    found = [claim for row, text in enumerate(explanations) for claim in claim_check.split_claims(row, text)]
    claim_check.score_recurrence(found, claim_check.neighbours(held.documents, held.positions, window), threshold)
    matches = claim_check.matching_rows(found, len(explanations), threshold)
    claim_check.score_control(found, matches, held.documents)
    if judge is not None and found:
        claim_check.judge_claims(found, held.contexts, judge)
    examples = [{"row": c.row, "claim": c.text, "recurrence": c.recurrence, "control": c.control,
                 "specific": c.specific, "supported": c.supported} for c in found[:40]]
    return {"window": window, "threshold": threshold, "recurring_at": recurring_at, "judged": judge is not None,
            **claim_check.summary(found, len(explanations), draws, recurring_at),
            "diversity": claim_check.diversity(found, matches, held.documents, draws), "examples": examples}


def _splice(model, tokenizer, held, predictions, valid, vectors, resamples, seed) -> dict:
    kept, ids = splice_inputs(held, tokenizer)
    if not kept:
        return {"rows": 0, "skipped": len(held)}
    mean = held.mean if held.mean is not None else (vectors / vectors.norm(dim=-1, keepdim=True)).mean(dim=0)
    directions = splice_check.splice_directions(predictions[kept], valid[kept], mean, seed)
    scores = splice_check.splice_scores(model, held.layer, ids, [held.positions[i] for i in kept], directions)
    draws = document_resamples(held.documents[kept], resamples, seed)
    return {"rows": len(kept), "skipped": len(held) - len(kept), "without_answer": int((~valid[kept]).sum()),
            "ablation": ("the training split's mean direction" if held.mean is not None
                         else "these rows' mean direction"),
            "without_answer_patch": "the ablation (no explanation carries nothing)",
            **splice_check.summary(scores, draws, valid[kept])}
