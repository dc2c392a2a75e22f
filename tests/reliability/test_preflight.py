"""The pre-flight stage stops a doomed run in seconds, before any cache is built or weights load: a GRPO
``sft_export`` that does not exist, an unset API key, an unreachable teacher, sequence lengths beyond
the model's positions, a disk too small; and generation itself refuses to run past the position limit
instead of crashing in the position embedding."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from nla.core.errors import ConfigError
from nla.core.prompts import PromptArgs, Prompts
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.verbalizer import Verbalizer
from tests.fixtures.commands import GRPO, run_main, sft_argv


def grpo_argv(model_dir, corpus, cache, run, *extra: str) -> list[str]:
    return ["fit", "--config", str(GRPO), "--data.init_args.source.target.name_or_path", str(model_dir),
            "--data.init_args.source.corpus.path", str(corpus), "--data.init_args.source.cache.directory", str(cache),
            "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run), *extra]


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
