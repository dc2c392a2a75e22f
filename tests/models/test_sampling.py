import math
import warnings

import pytest
import torch

from nla.core.errors import ConfigError
from nla.models import adapters, sampling
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.sampling import CHECK_EVERY, LoopSampler, StaticSampler, draw, keyed_uniforms, seed_key
from nla.models.verbalizer import Verbalizer
from nla.core.prompts import PromptArgs, Prompts

SCALE = 7.0


def exact(family: str) -> torch.dtype:
    """The dtype of the tests that compare two engines token for token. The engines attend over different key
    lengths (a static cache of prompt + cap, a growing one), so in float32 their logits differ in the last bit
    (6e-8), and a uniform landing that close to a CDF boundary takes the neighbouring token (seen on an AMD
    EPYC: seed 12, answer 3, step 15, token 243 against 242). In float64 the differences vanish when ``draw``
    takes float32, so the comparison stays exact. Gemma2 stays float32: transformers' float64 eager mask
    turns its fully masked padding rows into NaN."""
    return torch.float32 if family == "gemma2" else torch.float64


def build(family, tiny_model_dir, device="cpu", dtype=torch.float32):
    args = ModelArgs(str(tiny_model_dir(family)), dtype="float32")
    model, tokenizer = load_causal_lm(args).eval().to(device, dtype), load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    return Verbalizer(model, tokenizer, prompts.marker, SCALE), prompts


def two_prompts(prompts):
    """Prompts of different lengths, so the left padding (and its positions) matters."""
    prefix = prompts.tokenizer.encode("Describe the text", add_special_tokens=False)
    return [prompts.av_prompt_ids, prefix + prompts.av_prompt_ids]


def vectors(verbalizer, rows=2, seed=0):
    d = adapters.hidden_size(verbalizer.model.config)
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed))


def test_draw_picks_by_inverse_cdf_and_never_a_zero_probability_token():
    logits = torch.tensor([0.2, 0.0, 0.5, 0.3]).log().expand(5, 4)
    uniforms = torch.tensor([0.0, 0.1, 0.2, 0.69, 0.75])
    # cdf = [0.2, 0.2, 0.7, 1.0]: the first token whose cdf exceeds u (u = 0.2 skips token 1, of probability 0).
    assert draw(logits, uniforms, 1.0, greedy=False).tolist() == [0, 0, 2, 2, 3]
    assert draw(logits, uniforms, 1.0, greedy=True).tolist() == [2] * 5
    # The largest uniform the keyed generator can give still lands on a real token.
    assert draw(logits[:1], torch.tensor([1 - 2.0**-24]), 1.0, greedy=False).tolist() == [3]
    per_row = torch.tensor([True, False, True, False, False])
    assert draw(logits, uniforms, 1.0, greedy=per_row).tolist() == [2, 0, 2, 2, 3]


def test_draw_is_exact_temperature_sampling():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    n = 4000
    # A stratified grid of uniforms: each token's share of the grid is its probability to within 1/n.
    grid = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    for temperature in (1.0, 0.7):
        tokens = draw(logits.expand(n, 4), grid, temperature, greedy=False)
        frequencies = torch.bincount(tokens, minlength=4).float() / n
        expected = torch.softmax(logits[0] / temperature, dim=-1)
        assert (frequencies - expected).abs().max() <= 1.0 / n + 1e-6


def test_keyed_uniforms_are_a_pure_function_of_seed_row_and_step():
    rows = torch.arange(5000)
    a = keyed_uniforms(seed_key(7), rows, 3)
    assert torch.equal(a, keyed_uniforms(seed_key(7), rows, torch.tensor(3)))
    assert torch.equal(a[10:20], keyed_uniforms(seed_key(7), rows[10:20], 3))
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1 - 2.0**-24
    assert abs(float(a.mean()) - 0.5) < 0.02 and abs(float(a.var()) - 1 / 12) < 0.01
    for other in (keyed_uniforms(seed_key(8), rows, 3), keyed_uniforms(seed_key(7), rows, 4),
                  keyed_uniforms(seed_key(7), rows + 1, 3)):
        assert float((other == a).float().mean()) < 0.01
    # Seeds differing only in their high 32 bits get different keys.
    assert seed_key(1) != seed_key(1 + 2**32)


def test_hash_of_tensors_equals_the_hash_of_python_ints():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789]
    # Python ints never overflow: equal results show the int64 arithmetic does not either.
    assert sampling._hash32(torch.tensor(values)).tolist() == [sampling._hash32(v) for v in values]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3", "gpt2"])
def test_static_engine_samples_the_loops_tokens(family, tiny_model_dir, one_thread):
    verbalizer, prompts = build(family, tiny_model_dir, dtype=exact(family))
    rows, v = two_prompts(prompts), vectors(verbalizer)
    for kwargs in (dict(greedy=True), dict(seed=11), dict(seed=12, temperature=0.7)):
        loop = verbalizer.sample(v, rows, max_new_tokens=20, group=3, sampler="loop", **kwargs)
        static = verbalizer.sample(v, rows, max_new_tokens=20, group=3, sampler="static", **kwargs)
        assert static.tokens == loop.tokens, (family, kwargs)
        assert static.injection.injected_rows == 2 and loop.injection.injected_rows == 6
    assert len(set(map(tuple, loop.tokens))) > 1


def drawn(monkeypatch, engine, verbalizer, request, forced=None):
    """``engine``'s tokens for ``request`` and the float32 logits of each of its draws; with ``forced``
    ([rows, steps] tokens), every draw returns its step's column of ``forced`` instead of its own pick."""
    seen = []

    def spy(logits, uniforms, temperature, greedy):
        seen.append(logits.float())
        picked = draw(logits, uniforms, temperature, greedy)
        return picked if forced is None else forced[:, len(seen) - 1]

    with monkeypatch.context() as patch:
        patch.setattr(sampling, "draw", spy)
        return engine.generate(verbalizer, request), seen


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_static_engine_under_bf16_autocast_samples_the_loops_distributions(family, tiny_model_dir, one_thread,
                                                                            monkeypatch):
    # bf16-mixed training samples under autocast over float32 weights: the keys leave RoPE in float32
    # (float32 cos/sin), the values leave their projection in bf16. transformers 5.17's static cache
    # gave both the keys' dtype and refused the values ("index_copy_(): ... Float and BFloat16").
    # In bf16 the engines' logits differ by a rounding step (their attention spans different key lengths),
    # so their samples may part at a near tie: the static engine is fed the loop's tokens, and the
    # distributions the two sample from are compared step by step, to a few bf16 rounding steps.
    verbalizer, prompts = build(family, tiny_model_dir)
    verbalizer.stop_ids = set()  # every answer runs to the cap: the loop keeps all its rows and steps align
    ids, mask = verbalizer._left_padded(two_prompts(prompts), None, torch.device("cpu"))
    request = sampling.SamplingRequest(ids, mask, vectors(verbalizer), group=2, max_new_tokens=12, seed=11)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as Verbalizer.sample runs them
        loop_tokens, loop_logits = drawn(monkeypatch, LoopSampler(), verbalizer, request)
        static_tokens, static_logits = drawn(monkeypatch, StaticSampler(), verbalizer, request, forced=loop_tokens)
    assert loop_tokens.shape == static_tokens.shape == (4, 12) and len(static_logits) == len(loop_logits) == 12
    for step, (static, loop) in enumerate(zip(static_logits, loop_logits, strict=True)):
        worst = float((static - loop).abs().max() / loop.abs().max())
        assert worst <= 2.0**-6, (family, step, worst)


def test_group_rows_are_the_repeated_prompts(tiny_model_dir, one_thread):
    verbalizer, prompts = build("llama", tiny_model_dir, dtype=exact("llama"))
    rows, v = two_prompts(prompts), vectors(verbalizer)
    grouped = verbalizer.sample(v, rows, max_new_tokens=8, group=2, seed=5, sampler="static")
    repeated = verbalizer.sample(v.repeat_interleave(2, dim=0), [r for r in rows for _ in range(2)],
                                 max_new_tokens=8, seed=5, sampler="loop")
    assert grouped.tokens == repeated.tokens


def test_static_engine_prefills_each_prompt_once(tiny_model_dir, one_thread):
    verbalizer, prompts = build("llama", tiny_model_dir)
    rows, v = two_prompts(prompts), vectors(verbalizer)
    shapes = []
    handle = adapters.decoder_layers(verbalizer.model)[0].register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple((args[0] if args else kwargs["hidden_states"]).shape[:2])),
        with_kwargs=True)
    try:
        verbalizer.sample(v, rows, max_new_tokens=5, group=4, greedy=True, sampler="static")
    finally:
        handle.remove()
    assert shapes == [(2, len(rows[1]))] + [(8, 1)] * 4


def test_static_engine_checks_for_the_end_every_few_tokens(tiny_model_dir, one_thread):
    verbalizer, prompts = build("llama", tiny_model_dir, dtype=exact("llama"))
    request = sampling.SamplingRequest(*verbalizer._left_padded(two_prompts(prompts), None, torch.device("cpu")),
                                       vectors(verbalizer), group=2, max_new_tokens=30, greedy=True)
    # Every id stops a row: each answer is its first token, but the static engine looks only every
    # CHECK_EVERY tokens (the padding it wrote meanwhile is dropped by ``Verbalizer._collect``).
    verbalizer.stop_ids = set(range(len(prompts.tokenizer)))
    static = StaticSampler().generate(verbalizer, request)
    loop = LoopSampler().generate(verbalizer, request)
    assert loop.shape == (4, 1) and static.shape == (4, CHECK_EVERY)
    assert torch.equal(static[:, :1], loop) and bool((static[:, 1:] == verbalizer.pad_id).all())


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_loop_drops_finished_rows_and_samples_the_static_engines_tokens(family, tiny_model_dir, one_thread):
    verbalizer, prompts = build(family, tiny_model_dir, dtype=exact(family))
    rows, v, stop_ids = two_prompts(prompts), vectors(verbalizer), verbalizer.stop_ids
    for kwargs in (dict(greedy=True), dict(seed=12, temperature=0.7)):
        verbalizer.stop_ids = stop_ids
        free = verbalizer.sample(v, rows, max_new_tokens=12, group=3, sampler="static", **kwargs).tokens
        # Row 0's third token ends an answer: rows then finish at different steps.
        verbalizer.stop_ids = {free[0][2]}
        batch_sizes = []
        handle = adapters.decoder_layers(verbalizer.model)[0].register_forward_pre_hook(
            lambda module, args, kwargs: batch_sizes.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
            with_kwargs=True)
        try:
            loop = verbalizer.sample(v, rows, max_new_tokens=12, group=3, sampler="loop", **kwargs)
        finally:
            handle.remove()
        static = verbalizer.sample(v, rows, max_new_tokens=12, group=3, sampler="static", **kwargs)
        assert loop.tokens == static.tokens, kwargs
        lengths = sorted(len(tokens) for tokens in loop.tokens)
        assert lengths[0] <= 3 < lengths[-1], lengths
        # One forward per token; each step's batch holds exactly the rows not finished before it.
        assert batch_sizes == [sum(length > step for length in lengths) for step in range(len(batch_sizes))]
        assert batch_sizes[-1] < 6


@pytest.mark.parametrize("engine", ["loop", "static"])
def test_greedy_answers_are_the_greedy_ones_and_the_rest_the_samples(engine, tiny_model_dir, one_thread):
    verbalizer, prompts = build("llama", tiny_model_dir)
    rows, v = two_prompts(prompts), vectors(verbalizer)
    common = dict(max_new_tokens=16, group=3, sampler=engine)
    mixed = verbalizer.sample(v, rows, seed=4, temperature=0.7, greedy_answers=1, **common).tokens
    sampled = verbalizer.sample(v, rows, seed=4, temperature=0.7, **common).tokens
    greedy = verbalizer.sample(v, rows, greedy=True, **common).tokens
    # Answer 0 of each prompt is its greedy answer; answers 1 and 2 keep the draws they have without it.
    assert [mixed[0], mixed[3]] == [greedy[0], greedy[3]] != [sampled[0], sampled[3]]
    assert [mixed[i] for i in (1, 2, 4, 5)] == [sampled[i] for i in (1, 2, 4, 5)]
    with pytest.raises(ValueError, match="greedy_answers must be between 0 and group"):
        verbalizer.sample(v, rows, greedy_answers=4, **common)


def test_resolve_names_the_engine():
    cpu = torch.device("cpu")
    assert isinstance(sampling.resolve("auto", cpu), LoopSampler)
    assert isinstance(sampling.resolve("auto", torch.device("cuda")), StaticSampler)
    assert isinstance(sampling.resolve("static", cpu), StaticSampler)
    engine = LoopSampler()
    assert sampling.resolve(engine, cpu) is engine
    with pytest.raises(ConfigError, match="sampler: must be one of auto, loop, static"):
        sampling.resolve("vllm", cpu)


def test_smollm2_static_engine_samples_the_loops_tokens(smollm2_dir):
    args = ModelArgs(str(smollm2_dir), dtype="float32")
    model, tokenizer = load_causal_lm(args).eval().to(exact("llama")), load_tokenizer(args)  # a Llama
    prompts = Prompts.build(tokenizer, PromptArgs(), model)
    verbalizer = Verbalizer(model, tokenizer, prompts.marker, 30.0)
    v = vectors(verbalizer)
    rows = two_prompts(prompts)
    loop = verbalizer.sample(v, rows, max_new_tokens=12, group=2, seed=3, sampler="loop")
    static = verbalizer.sample(v, rows, max_new_tokens=12, group=2, seed=3, sampler="static")
    assert static.tokens == loop.tokens


@pytest.mark.gpu
def test_cuda_graph_engine_samples_the_loops_tokens(tiny_model_dir):
    verbalizer, prompts = build("qwen2", tiny_model_dir, "cuda", dtype=exact("qwen2"))
    rows, v = two_prompts(prompts), vectors(verbalizer).cuda()
    for kwargs in (dict(greedy=True), dict(seed=11)):
        loop = verbalizer.sample(v, rows, max_new_tokens=24, group=4, sampler="loop", **kwargs)
        graphed = verbalizer.sample(v, rows, max_new_tokens=24, group=4, sampler="static", **kwargs)
        assert graphed.tokens == loop.tokens, kwargs
    assert math.isclose(graphed.injection.injected_fraction, 1.0)


@pytest.mark.gpu
def test_cuda_graph_replays_the_eager_static_steps_in_bf16(tiny_model_dir):
    verbalizer, prompts = build("qwen2", tiny_model_dir, "cuda")
    verbalizer.model.to(torch.bfloat16)
    ids, mask = verbalizer._left_padded(two_prompts(prompts), None, torch.device("cuda"))
    request = sampling.SamplingRequest(ids, mask, vectors(verbalizer).cuda(), group=4, max_new_tokens=24, seed=2)
    # Same kernels, replayed or launched one by one: the tokens are bitwise the same.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns and falls back: fail instead
        graphed = StaticSampler(graphs=True).generate(verbalizer, request)
    assert torch.equal(graphed, StaticSampler(graphs=False).generate(verbalizer, request))
