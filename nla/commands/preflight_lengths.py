"""The pre-flight's token counts that need the tokenizer: its size against the model's embedding, and
the extractive teacher's summaries against the model's positions.

A tokenizer with more tokens than the embedding has rows gives ids the model has no row for; the cache's
timing probe, which draws ids from the whole tokenizer, fails on them with an IndexError. The extractive
teacher's summaries have no cap (``teacher.max_tokens`` caps the other teachers'), and they exist only
once the cache does; their length is estimated from the summary the teacher writes of
``TYPICAL_REQUEST``. When that one does not fit, most rows of the SFT splits would not either, and a
model with learned positions (GPT-2) would fail at the first of them, after the cache was built.
"""

from __future__ import annotations

from nla.core.errors import ConfigError
from nla.core.prompts import Prompts, explanation_text
from nla.data.datamodule import SOURCE
from nla.data.teachers.base import TeacherArgs, TeacherRequest
from nla.data.teachers.registry import build_teacher
from nla.models import adapters

TYPICAL_REQUEST = TeacherRequest(
    context="The miller listened to the wheel turning slowly all day, while the river bent around the old stones "
            "near the",
    token=" the",
)
"""A prefix of ordinary prose cut mid-sentence: its extractive summary is of a typical length (63 words in
the full style; those of the tests' corpus have 60 to 68)."""


def check_vocabulary(config, tokenizer, key: str, name: str) -> None:
    """Refuse a tokenizer whose ids run past the rows of the model's embedding (``vocab_size``)."""
    rows = getattr(adapters.text_config(config), "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise ConfigError(key, f"the tokenizer of {name} has {len(tokenizer)} tokens but the model's embedding has "
                          f"{rows} rows (vocab_size), so ids from {rows} on have no embedding; give the model with the "
                          "tokenizer it was trained with")


def check_extractive_summaries(config, prompts: Prompts, teacher: TeacherArgs, name: str) -> None:
    """The AV's SFT example (prompt and answer) and the AR's prompt, each with a typical summary of the
    extractive ``teacher``, within the position limit of a model whose positions are learned (past it,
    rotary ones drift, and the tiny test models train there on purpose)."""
    limit = adapters.position_limit(config)
    if limit is None or not adapters.family_of(config).learned_positions:
        return
    style = teacher.model or "full"
    _, summary = next(iter(build_teacher(teacher).stream([TYPICAL_REQUEST])))
    text = explanation_text(summary.features)
    prompt = len(prompts.av_prompt_ids)
    answer = len(prompts.tokenizer.encode(prompts.av_target(text), add_special_tokens=False))
    av = (f"the AV prompt of {name} ({prompt} tokens) plus its answer with a typical {style} extractive summary "
          f"(about {answer} tokens)")
    ar = f"the AR prompt of {name} with a typical {style} extractive summary"
    for side, needed, what in (("av", prompt + answer, av), ("ar", len(prompts.ar_ids(text)), ar)):
        if needed <= limit:
            continue
        template = f"{SOURCE}.prompts.{side}_template"
        # The brief style is the teacher's shorter one: past it, only the prompt or the model can change.
        if style == "brief":
            key, fix = template, f"use a shorter {template} or a model with more positions"
        else:
            key = f"{SOURCE}.teacher.model"
            fix = f"use {key}: brief, a shorter {template} or a model with more positions"
        raise ConfigError(key, f"{what} needs about {needed} positions but the model has {limit} "
                          f"(max_position_embeddings); {fix}")
