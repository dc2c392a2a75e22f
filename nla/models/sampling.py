"""Sampling engines for the AV: prompt ids and vectors in, tokens out.

Every engine answers one ``SamplingRequest`` (B left-padded prompts, their B vectors, G answers per
prompt) with ``[B x G, W]`` token ids, row ``b * G + g`` being answer g of prompt b, pad after a row's
first end-of-turn token. ``Verbalizer.sample`` picks the engine by name; GRPO only names it
(``sampler``), so another engine (vLLM's prompt embeddings, say) is one more class here.

- ``loop``: the plain loop over a growing (dynamic) KV cache, every row prefilled on its own, a host
  check of "all rows done" after each token, and finished rows dropped from the batch. It runs
  anywhere; it is the CPU default.
- ``static``: each prompt prefilled ONCE (the injection happens there, outside any graph), its KV
  cache copied into a static cache of prompt + cap positions for its G answers, then one decode step
  per token with the sampled tokens kept on the device and "all rows done" checked every
  ``CHECK_EVERY`` tokens. On CUDA the decode step is captured once as a CUDA graph and replayed, so a
  token costs one graph launch instead of hundreds of kernel launches. Models with sliding-window
  layers (their static cache keeps Python-side state) and sharded models decode eagerly.

Randomness is keyed, not drawn from a stream: the uniform of row r at step s is a hash of
(seed, r, s) (``keyed_uniforms``), and the token is the inverse CDF of the tempered distribution at
that uniform (``draw``). Both engines, any batch split and a replayed graph therefore sample the same
tokens from the same logits, and a row's answer does not depend on which other rows share its batch.
(Logits computed over different key lengths can differ in their last bit; a uniform that close to a
CDF boundary then picks the neighbouring token.)
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from nla.core.errors import ConfigError
from nla.models.injection import Injector

SAMPLERS = ("auto", "loop", "static")
"""Values of the ``sampler`` switch: ``auto`` is ``static`` on CUDA and ``loop`` elsewhere."""
CHECK_EVERY = 8
"""Decode steps between two host checks of "every row is done" in the static engine."""
WARMUP_STEPS = 2
"""Eager decode steps before the CUDA graph capture (lazy initialisations must not be captured)."""
_MASK32 = 0xFFFFFFFF


@dataclass
class SamplingRequest:
    """What to sample: ``group`` answers for each of B prompts, each prompt with its vector."""

    prompt_ids: Tensor
    """``[B, T]`` prompt ids, left-padded, on the model's device."""
    attention_mask: Tensor
    """``[B, T]`` 1 on the real prompt tokens."""
    vectors: Tensor
    """``[B, d]`` the vector injected at each prompt's marker slot."""
    group: int = 1
    """G, answers per prompt; they share the prompt and the vector, not the randomness."""
    max_new_tokens: int = 150
    """Cap on the answer length."""
    temperature: float = 1.0
    """Sampling temperature (ignored when ``greedy``)."""
    greedy: bool = False
    """Take the most likely token at every step."""
    seed: int = 0
    """Key of the randomness: the same seed gives the same answers."""
    greedy_answers: int = 0
    """The first this many of each prompt's G answers take the most likely token at every step, the
    others are sampled (GRPO's ``greedy_answer`` sets 1); ignored when ``greedy``."""


class Verbalizer(Protocol):
    """What an engine needs of an AV (``nla.models.verbalizer.Verbalizer`` has it): the causal LM, its
    injector at the marker, and the ids that end an answer and pad after it."""

    model: torch.nn.Module
    injector: Injector
    stop_ids: set[int]
    pad_id: int


class Sampler(Protocol):
    """One sampling engine."""

    def generate(self, verbalizer: Verbalizer, request: SamplingRequest) -> Tensor:
        """``[B x G, W]`` int64 token ids, ``W <= max_new_tokens``: row ``b * G + g`` is answer g of
        prompt b; after a row's first end-of-turn token (``verbalizer.stop_ids``) only pad ids."""
        ...


def _hash32(x):
    """A 32-bit integer mix (lowbias32) on Python ints or int64 tensors holding values below 2**32.
    Products are split in 16-bit halves so no int64 intermediate overflows."""
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = x ^ (x >> shift)
        x = ((x & 0xFFFF) * factor + ((((x >> 16) * factor) & 0xFFFF) << 16)) & _MASK32
    return x ^ (x >> 16)


def seed_key(seed: int) -> int:
    """The 32-bit key of a (64-bit) seed."""
    return _hash32((seed & _MASK32) ^ _hash32((seed >> 32) & _MASK32 ^ 0x9E3779B9))


def keyed_uniforms(key: int, rows: Tensor, step: Tensor | int) -> Tensor:
    """``[N]`` float32 uniforms in [0, 1 - 2**-24] for row ids ``rows`` at decode step ``step``: a pure
    function of (key, row, step), computed on the device (capturable in a CUDA graph)."""
    mixed = _hash32(_hash32(rows ^ key) ^ step)
    return (mixed >> 8).to(torch.float32) * 2.0**-24


def draw(logits: Tensor, uniforms: Tensor, temperature: float, greedy: bool | Tensor) -> Tensor:
    """``[N]`` tokens from ``logits`` ``[N, V]``: the argmax when ``greedy`` (a bool, or ``[N]`` bools
    choosing per row), else the inverse CDF of
    ``softmax(logits / temperature)`` at ``uniforms``, which is exact temperature sampling (up to
    float32 rounding, as ``torch.multinomial``). The pick is the first token whose cumulative
    probability exceeds ``u x total``, so a token of probability 0 is never chosen."""
    if isinstance(greedy, bool) and greedy:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(dim=-1)
    total = cdf[:, -1:]
    below_total = torch.nextafter(total, torch.zeros_like(total))
    target = torch.minimum(uniforms[:, None] * total, below_total)
    sampled = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return torch.where(greedy, logits.argmax(dim=-1), sampled) if isinstance(greedy, Tensor) else sampled


def greedy_rows(request: SamplingRequest, rows: Tensor) -> bool | Tensor:
    """``draw``'s ``greedy`` for the answers numbered ``rows`` (``b * G + g``): the request's flag, or
    per row whether g is below ``greedy_answers``."""
    if request.greedy or not request.greedy_answers:
        return request.greedy
    return rows % request.group < request.greedy_answers


def cache_keyword(model) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` in newer transformers,
    ``past_key_values`` before (the GPU image's 5.17)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _finish(token: Tensor, done: Tensor, stop: Tensor, pad_id: int) -> Tensor:
    """Pad the rows already done, then mark the rows that just produced a stop id (in place)."""
    token = torch.where(done, torch.full_like(token, pad_id), token)
    done |= (token[:, None] == stop[None, :]).any(dim=1)
    return token


class LoopSampler:
    """The plain loop: every row prefilled, one forward per token over a dynamic cache, finished rows
    dropped from the batch (their cache rows too), so a few answers that run to the cap do not keep
    every other row decoding: on CPU a step costs about its row count."""

    def generate(self, verbalizer: Verbalizer, request: SamplingRequest) -> Tensor:
        model, group = verbalizer.model, request.group
        input_ids = request.prompt_ids.repeat_interleave(group, dim=0)
        attention_mask = request.attention_mask.repeat_interleave(group, dim=0)
        vectors = request.vectors.repeat_interleave(group, dim=0)
        device = input_ids.device
        key, pad_id = seed_key(request.seed), verbalizer.pad_id
        # Each active row keeps its row number: its keyed randomness and its line in ``tokens``.
        rows = torch.arange(input_ids.shape[0], device=device)
        tokens = torch.full((rows.shape[0], request.max_new_tokens), pad_id, dtype=torch.long, device=device)
        stop = torch.tensor(sorted(verbalizer.stop_ids), device=device)
        done = torch.zeros(rows.shape[0], dtype=torch.bool, device=device)
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)
        cache = DynamicCache(config=model.config)
        cache_arg, steps = {cache_keyword(model): cache}, 0
        verbalizer.injector.load(vectors, once=True)
        try:
            step_ids = input_ids
            for step in range(request.max_new_tokens):
                logits = model(input_ids=step_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=True, logits_to_keep=1, **cache_arg).logits[:, -1]
                token = _finish(draw(logits, keyed_uniforms(key, rows, step), request.temperature,
                                     greedy_rows(request, rows)), done, stop, pad_id)
                tokens[rows, step] = token
                steps = step + 1
                finished = int(done.sum())
                if finished == rows.shape[0]:
                    break
                step_ids = token[:, None]
                attention_mask = torch.cat([attention_mask, torch.ones_like(step_ids)], dim=1)
                position_ids = position_ids[:, -1:] + 1
                if finished and _compactable(cache):
                    keep = (~done).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    rows, done, step_ids = rows[keep], done[keep], step_ids[keep]
                    attention_mask, position_ids = attention_mask[keep], position_ids[keep]
        finally:
            verbalizer.injector.unload()
        return tokens[:, :steps]


def _compactable(cache: DynamicCache) -> bool:
    """Whether dropping batch rows keeps the cache whole: true for key/value layers (full or sliding
    window); a layer with other state (a linear-attention layer's convolution state, say) keeps its
    rows and every row decodes to the end."""
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers)


class StaticSampler:
    """Shared prefill, static KV cache, device-side state, and (on CUDA) a CUDA-graph decode step.

    ``graphs``: capture the decode step as a CUDA graph where that applies (CUDA, no sliding-window
    layers, no sharded parameters); ``False`` decodes eagerly over the same static cache."""

    def __init__(self, graphs: bool = True) -> None:
        self.graphs = graphs

    def generate(self, verbalizer: Verbalizer, request: SamplingRequest) -> Tensor:
        model, group, cap = verbalizer.model, request.group, request.max_new_tokens
        prompt_ids, prompt_mask = request.prompt_ids, request.attention_mask
        batch, length = prompt_ids.shape
        device, rows_n = prompt_ids.device, batch * group
        cache = StaticCache(config=model.config, max_cache_len=length + cap)
        _values_in_their_own_dtype(cache)
        cache_arg = {cache_keyword(model): cache}
        positions = (prompt_mask.long().cumsum(dim=1) - 1).clamp_min(0)
        verbalizer.injector.load(request.vectors, once=True)
        try:
            logits = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                           use_cache=True, logits_to_keep=1, **cache_arg).logits[:, -1]
        finally:
            verbalizer.injector.unload()
        _expand_cache(cache, group)

        rows = torch.arange(rows_n, device=device)
        stop = torch.tensor(sorted(verbalizer.stop_ids), device=device)
        key, pad_id = seed_key(request.seed), verbalizer.pad_id
        sample = (request.temperature, greedy_rows(request, rows))
        done = torch.zeros(rows_n, dtype=torch.bool, device=device)
        out = torch.full((rows_n, cap), pad_id, dtype=torch.long, device=device)
        first = draw(logits.repeat_interleave(group, dim=0), keyed_uniforms(key, rows, 0), *sample)
        out[:, 0] = _finish(first, done, stop, pad_id)
        tokens = out[:, 0].clone()
        position = positions[:, -1].repeat_interleave(group) + 1
        step = torch.ones((), dtype=torch.long, device=device)
        mask = torch.cat([prompt_mask.repeat_interleave(group, dim=0),
                          torch.ones(rows_n, cap, dtype=prompt_mask.dtype, device=device)], dim=1)

        def decode() -> None:
            # Everything a step changes is updated in place, so a replayed graph advances the state.
            logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position[:, None],
                           use_cache=True, logits_to_keep=1, **cache_arg).logits[:, -1]
            token = _finish(draw(logits, keyed_uniforms(key, rows, step), *sample), done, stop, pad_id)
            out.index_copy_(1, step.view(1), token[:, None])
            tokens.copy_(token)
            position.add_(1)
            step.add_(1)

        run, taken = decode, 1
        if self.graphs and _graphs_apply(model, cache, cap):
            run = _captured(decode)
            taken += WARMUP_STEPS
        while taken < cap and not (taken % CHECK_EVERY == 0 and bool(done.all())):
            run()
            taken += 1
        return out[:, :taken]


def _values_in_their_own_dtype(cache: StaticCache) -> None:
    """Allocate each layer's values in their own dtype. Under autocast over float32 weights (bf16-mixed
    training) RoPE leaves the keys float32 while the values leave their projection in bf16; some
    transformers releases (5.17) allocate both in the keys' dtype and then refuse the values."""
    for layer in cache.layers:
        def allocate(key_states: Tensor, value_states: Tensor, layer=layer, allocate=layer.lazy_initialization):
            allocate(key_states, value_states)
            layer.values = layer.values.to(value_states.dtype)

        layer.lazy_initialization = allocate


def _expand_cache(cache: StaticCache, group: int) -> None:
    """Give each of a prefilled cache's B rows to its G answers: row b becomes rows b*G .. b*G+G-1."""
    if group == 1:
        return
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(group, dim=0)
        layer.values = layer.values.repeat_interleave(group, dim=0)
        layer.batch_size = layer.keys.shape[0]


def _graphs_apply(model, cache: StaticCache, cap: int) -> bool:
    from torch.distributed.fsdp import FSDPModule

    if next(model.parameters()).device.type != "cuda" or cap <= WARMUP_STEPS + 1:
        return False
    return not any(layer.is_sliding for layer in cache.layers) and not any(
        isinstance(module, FSDPModule) for module in model.modules())


def _captured(step):
    """Run ``WARMUP_STEPS`` real steps eagerly, capture the next one as a CUDA graph and return its
    replay. If capture fails (an operation that synchronises with the host inside the model), warn
    and keep decoding eagerly: a failed capture executes nothing, so the state is unchanged."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # Under autocast (bf16-mixed training) the cast-weight cache must stay off while capturing: cached
    # casts would be freed when autocast exits, under a graph that still reads them.
    casting = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"),
                             cache_enabled=False)
    try:
        # thread_local: a data loader's pinning thread may call CUDA while this one captures.
        with casting, torch.cuda.graph(graph, capture_error_mode="thread_local"):
            step()
    except RuntimeError as error:
        warnings.warn(f"sampler 'static': CUDA graph capture failed ({str(error).splitlines()[0]}); "
                      "decoding without graphs", RuntimeWarning, stacklevel=3)
        return step
    return graph.replay


def resolve(sampler: str | Sampler, device: torch.device) -> Sampler:
    """The engine a ``sampler`` setting names on ``device`` (an engine object passes through)."""
    if not isinstance(sampler, str):
        return sampler
    if sampler not in SAMPLERS:
        raise ConfigError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if sampler == "auto":
        sampler = "static" if device.type == "cuda" else "loop"
    return StaticSampler() if sampler == "static" else LoopSampler()
