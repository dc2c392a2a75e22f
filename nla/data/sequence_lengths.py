"""The longest training sequences against the positions of a model that has learned ones.

The pre-flight can only estimate the extractive teacher's summaries (``nla.commands.preflight_lengths``):
they are written after the cache. Once they are read, the longest AV example (prompt and answer) and
the longest AR prompt are counted here; on a model whose positions are rows of a learned table
(GPT-2) one sequence past the limit would fail with an IndexError somewhere in the first epoch.
"""

from __future__ import annotations

from nla.core.errors import ConfigError
from nla.core.prompts import Prompts
from nla.models import adapters


def check_summary_lengths(config, prompts: Prompts, texts: dict[str, list[str]], teacher, source: str) -> None:
    """``texts``: split -> the explanations its rows train or are scored on (``source``: the data
    block's key, for the message)."""
    limit = adapters.position_limit(config)
    if limit is None or not adapters.family_of(config).learned_positions:
        return
    prompt = len(prompts.av_prompt_ids)
    for split, explanations in texts.items():
        if not explanations:
            continue
        sides = {"av": [prompt + len(prompts.tokenizer.encode(prompts.av_target(text), add_special_tokens=False))
                        for text in explanations],
                 "ar": [len(prompts.ar_ids(text)) for text in explanations]}
        for side, lengths in sides.items():
            longest = max(lengths)
            if longest <= limit:
                continue
            what = "AV example (prompt and answer)" if side == "av" else "AR prompt"
            if teacher.provider == "extractive":
                key, fix = f"{source}.teacher.model", f"use {source}.teacher.model: brief"
            else:
                key, fix = f"{source}.teacher.max_tokens", f"lower {source}.teacher.max_tokens"
            raise ConfigError(key, f"the longest {what} among the {split} rows needs {longest} positions but the "
                              f"model has {limit} (max_position_embeddings; {sum(n > limit for n in lengths)} of "
                              f"{len(lengths)} rows are too long); {fix}, a shorter {source}.prompts.{side}_template "
                              "or a model with more positions")
