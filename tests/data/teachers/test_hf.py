"""The local transformers teacher: a tiny random model for the batched path, SmolLM2 for real text."""

from __future__ import annotations

import pytest
import torch

from nla.data.teachers import TeacherArgs, TeacherRequest, build_teacher, summarize_all
from nla.data.teachers.hf import HFTeacher
from nla.core.errors import ConfigError

REQUESTS = [
    TeacherRequest("The sailor counts the waves", " waves"),
    TeacherRequest("A teacher writes numbers on the board: one, two, three, four, five, six", " six"),
    TeacherRequest("Rivers bend", " bend"),
]


def hf_teacher(model_dir, **overrides):
    settings = dict(provider="hf", model=str(model_dir), device="cpu", max_tokens=8, batch_size=2)
    settings.update(overrides)
    return build_teacher(TeacherArgs(**settings))


def test_batched_generation_returns_one_row_per_request_and_drops_garbage(tiny_model_dir):
    teacher = hf_teacher(tiny_model_dir("llama"))
    assert isinstance(teacher, HFTeacher) and teacher.tokenizer.padding_side == "left"
    summaries, report = summarize_all(teacher, REQUESTS, progress=False)
    assert len(summaries) == len(REQUESTS)
    # Random weights never write a complete <features> block, so every row is counted as dropped.
    assert summaries == [None] * len(REQUESTS)
    assert (report.requested, report.failed, report.dropped) == (3, 0, 3)


def test_left_padded_batch_matches_one_by_one_greedy(tiny_model_dir):
    teacher = hf_teacher(tiny_model_dir("llama"), temperature=0.0, batch_size=3)
    batched = teacher.generate(REQUESTS)
    alone = [teacher.generate([request])[0] for request in REQUESTS]
    assert batched == alone
    assert all(isinstance(text, str) and text for text in batched)


def test_prompt_uses_the_chat_template_with_a_single_bos(tiny_model_dir):
    teacher = hf_teacher(tiny_model_dir("llama"))
    prompt = teacher.prompt(REQUESTS[0])
    assert prompt.startswith("<bos><|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = teacher.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(teacher.tokenizer.bos_token_id) == 1
    assert "The sailor counts the waves" in prompt


def test_sampling_follows_the_temperature_only(tiny_model_dir):
    sampled = hf_teacher(tiny_model_dir("llama"), temperature=1.0, max_tokens=12)
    greedy = hf_teacher(tiny_model_dir("llama"), temperature=0.0)
    assert sampled.generation_config.do_sample and sampled.generation_config.temperature == 1.0
    assert not greedy.generation_config.do_sample
    # A checkpoint default of top_k=1 would make sampling greedy if it leaked into generation.
    sampled.lm.generation_config.top_k = 1
    torch.manual_seed(0)
    first = sampled.generate(REQUESTS[:1])
    torch.manual_seed(1)
    assert sampled.generate(REQUESTS[:1]) != first


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        hf_teacher(tmp_path / "no-such-model")
    assert caught.value.field == "teacher.model"


@pytest.mark.slow
def test_smollm2_writes_real_text(smollm2_dir):
    teacher = hf_teacher(smollm2_dir, max_tokens=32, temperature=0.0)
    (text,) = teacher.generate(REQUESTS[:1])
    words = text.split()
    assert len(words) >= 5 and sum(word.strip(".,;:\"'").isalpha() for word in words) >= 3, text
