"""The pre-flight stage stops a doomed run in seconds, before any cache is built or weights load: a GRPO
``sft_export`` that does not exist, an unset API key, an unreachable teacher, sequence lengths beyond
the model's positions (the extractive teacher's summaries included), a disk too small; and generation itself refuses to run past the position limit
instead of crashing in the position embedding."""

from __future__ import annotations

import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from nla.commands.preflight_lengths import TYPICAL_REQUEST
from nla.core.errors import ConfigError
from nla.core.prompts import PromptArgs, Prompts, explanation_text
from nla.core.sizes import human_size
from nla.data.cache_writer import vector_bytes
from nla.data.datamodule import NLADataModule
from nla.data.summaries import read_summaries
from nla.data.teachers.extractive import describe, describe_briefly
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.verbalizer import Verbalizer
from tests.fixtures.commands import grpo_argv, run_main, sft_argv, tiny_source


def test_a_missing_sft_export_fails_before_caching(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    missing = tmp_path / "no-such-export"
    code, err = run_main(capsys, grpo_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                           "--model.init_args.sft_export", str(missing)))
    assert (code, err) == (2, f"nla: error: model.sft_export: {missing} holds no av/nla_meta.yaml; run the SFT stage "
                              "first (its model.export_dir) or fix the path")
    assert not (tmp_path / "cache").exists()


def test_an_unset_api_key_fails_before_caching(tiny_sft, tmp_path, capsys, monkeypatch):
    root, model_dir, _ = tiny_sft
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                          "--data.init_args.source.teacher.provider", "anthropic",
                                          "--data.init_args.source.teacher.model", "claude-x",
                                          "--data.init_args.source.teacher.max_tokens", "40"))
    assert (code, err) == (2, "nla: error: data.source.teacher.api_key_env: the anthropic teacher needs an API key: set the "
                              "environment variable ANTHROPIC_API_KEY")
    assert not (tmp_path / "cache").exists()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_teacher_fails_before_caching(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    url = f"http://127.0.0.1:{closed_port()}"
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                          "--data.init_args.source.teacher.provider", "openai",
                                          "--data.init_args.source.teacher.model", "local-model",
                                          "--data.init_args.source.teacher.base_url", url,
                                          "--data.init_args.source.teacher.max_tokens", "40"))
    assert (code, err) == (2, f"nla: error: data.source.teacher.base_url: cannot reach {url} ([Errno 111] Connection refused) "
                              "within 5 s; start the server, fix the URL or check the network")
    assert not (tmp_path / "cache").exists()


def test_a_reachable_teacher_passes_the_probe():
    from nla.commands import preflight

    # A server that answers every request with an error status: any HTTP answer counts as reachable.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert preflight.probe(f"http://127.0.0.1:{server.server_address[1]}") is None
    finally:
        server.shutdown()
        server.server_close()
    assert preflight.probe(f"http://127.0.0.1:{closed_port()}") == "[Errno 111] Connection refused"


@pytest.mark.parametrize("extra, line", [
    (["--data.init_args.source.corpus.max_length", "512"],
     "data.source.corpus.max_length: corpus.max_length (512) needs 512 positions but the model has 256 "
     "(max_position_embeddings); lower it"),
    (["--model.init_args.max_new_tokens", "300"], None),
])
def test_sequences_beyond_the_position_limit_fail_before_caching(tiny_sft, tiny_model_dir, tmp_path, capsys, extra, line):
    root, _, _ = tiny_sft
    code, err = run_main(capsys, sft_argv(tiny_model_dir("gpt2"), root / "docs.jsonl", tmp_path / "cache",
                                          tmp_path / "run", *extra))
    assert code == 2
    if line is None:
        # The AV prompt as the run would build it, counted here, not read back from the message.
        prompt = len(Prompts.build(load_tokenizer(ModelArgs(str(tiny_model_dir("gpt2")))), PromptArgs()).av_prompt_ids)
        assert err == (f"nla: error: model.max_new_tokens: the AV prompt of {tiny_model_dir('gpt2')} ({prompt} tokens) "
                       f"plus max_new_tokens (300) needs {prompt + 300} positions but the model has 256 "
                       "(max_position_embeddings); lower it")
    else:
        assert err == f"nla: error: {line}"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("style, key, fix", [
    (None, "teacher.model", "use data.source.teacher.model: brief, a shorter data.source.prompts.av_template or a "
                            "model with more positions"),
    ("brief", "prompts.av_template", "use a shorter data.source.prompts.av_template or a model with more positions"),
])
def test_extractive_summaries_beyond_the_position_limit_fail_before_caching(tiny_sft, tiny_model_dir, tmp_path, capsys,
                                                                            style, key, fix):
    # GPT-2's 256 learned positions: the AV's SFT examples, prompt and teacher summary, would not fit.
    root, _, _ = tiny_sft
    model = tiny_model_dir("gpt2")
    extra = [] if style is None else ["--data.init_args.source.teacher.model", style]
    code, err = run_main(capsys, sft_argv(model, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run", *extra))
    # Counted here as the run would count them, not read back from the message.
    prompts = Prompts.build(load_tokenizer(ModelArgs(str(model))), PromptArgs())
    summary = (describe if style is None else describe_briefly)(TYPICAL_REQUEST.context, TYPICAL_REQUEST.token)
    answer = len(prompts.tokenizer.encode(prompts.av_target(explanation_text(summary)), add_special_tokens=False))
    prompt = len(prompts.av_prompt_ids)
    assert prompt + answer > 256
    assert (code, err) == (2, f"nla: error: data.source.{key}: the AV prompt of {model} ({prompt} tokens) plus its "
                              f"answer with a typical {style or 'full'} extractive summary (about {answer} tokens) "
                              f"needs about {prompt + answer} positions but the model has 256 (max_position_embeddings); "
                              f"{fix}")
    assert not (tmp_path / "cache").exists()


def test_generation_refuses_to_run_past_the_position_limit(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("gpt2")))
    tokenizer = load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    verbalizer = Verbalizer(load_causal_lm(args), tokenizer, prompts.marker, 1.0)
    width = len(prompts.av_prompt_ids)
    with pytest.raises(ConfigError) as refused:
        verbalizer.sample(torch.ones(1, 32), [prompts.av_prompt_ids], max_new_tokens=300, greedy=True)
    assert str(refused.value) == (f"max_new_tokens: the AV prompt ({width} tokens) plus max_new_tokens (300) needs "
                                  f"{width + 300} positions but the model has 256 (max_position_embeddings); lower it")


def test_a_disk_too_small_fails_before_caching(tiny_sft, tmp_path, capsys, monkeypatch):
    from nla.commands import preflight

    root, model_dir, _ = tiny_sft
    real = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run"))
    assert code == 2
    assert err.startswith("nla: error: data.source.cache.directory, checkpoints, model.export_dir: needs about ")
    assert err.endswith(f"on {tmp_path} but 1000 B are free; free space or point it elsewhere")
    assert not (tmp_path / "cache").exists()


def test_a_disk_too_small_for_an_unbounded_cache_says_how_much_in_fitting_units(tiny_sft, tmp_path, capsys, monkeypatch):
    # Without corpus.max_documents the pre-flight cannot bound the cache; the writer checks once it is planned.
    root, model_dir, _ = tiny_sft
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    code, err = run_main(capsys, ["cache", "--source.target.name_or_path", str(model_dir), "--source.corpus.path",
                                  str(root / "docs.jsonl"), "--source.corpus.max_length", "128",
                                  "--source.corpus.min_position", "8", "--source.cache.positions_per_document", "3",
                                  "--source.cache.directory", str(tmp_path / "cache")])
    # 40 documents of 3 positions: 120 rows of 32 float32 values and their index.
    assert (code, err) == (2, f"nla: error: source.cache.directory: {tmp_path / 'cache'} needs "
                              f"{human_size(vector_bytes(120, 32, 'float32'))} but has 1000 B free; free space or choose "
                              "another directory")


def test_summaries_past_the_position_limit_are_refused_once_read(tiny_sft, tiny_model_dir, tmp_path):
    # The pre-flight estimates the extractive summaries from a typical one; once written, every one is counted.
    root, _, _ = tiny_sft
    model = tiny_model_dir("gpt2")
    datamodule = NLADataModule(tiny_source(model, root / "docs.jsonl", tmp_path / "cache"), progress=False)
    datamodule.prepare_data()
    with pytest.raises(ConfigError) as refused:
        datamodule.setup("fit")
    prompts = Prompts.build(load_tokenizer(ModelArgs(str(model))), PromptArgs())
    summaries = read_summaries(next((tmp_path / "cache" / "summaries").glob("*/av_sft.json")))
    lengths = [len(prompts.av_prompt_ids) + len(prompts.tokenizer.encode(prompts.av_target(explanation_text(features)),
                                                                         add_special_tokens=False))
               for features in summaries.values()]
    assert str(refused.value) == (
        f"data.source.teacher.model: the longest AV example (prompt and answer) among the av_sft rows needs {max(lengths)} "
        f"positions but the model has 256 (max_position_embeddings; {sum(n > 256 for n in lengths)} of {len(lengths)} "
        "rows are too long); use data.source.teacher.model: brief, a shorter data.source.prompts.av_template or a "
        "model with more positions")
