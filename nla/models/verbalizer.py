"""The activation verbalizer (AV): a causal LM that reads one vector through its marker slot and
writes an explanation of it.

``Verbalizer.forward`` is the SFT/RL scoring path (logits and the label loss with the vectors
injected); ``Verbalizer.sample`` generates through one of the engines of ``nla.models.sampling``
(a plain loop, or a static cache with a CUDA-graph decode step), never through HF ``generate``, so
the sampling rule is exactly temperature sampling (no top-k/top-p a checkpoint's generation config
might add) and the injection provably happens once per prompt, at the prefill.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nla.core.marker import Marker
from nla.models import adapters, sampling
from nla.models.injection import InjectionSite, InjectionStats, Injector
from nla.models.logprobs import chosen_logprobs, output_head
from nla.models.packing import PackLayout, attention_kwargs, check_packed, pack, packed_slots, use_packing
from nla.models.sampling import Sampler, SamplingRequest
from nla.core.padding import pad, pad_token_id
from nla.core.prompts import parse_explanation, turn_closing

CJK_RANGES = (
    (0x2E80, 0x9FFF),  # radicals, CJK symbols, kana, bopomofo, enclosed and compatibility, ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0xFF00, 0xFFEF),  # half- and full-width forms
    (0x20000, 0x2FA1F),  # ideograph extensions B and beyond
)


def cjk_rate(texts: list[str]) -> float:
    """Fraction of the non-whitespace characters of ``texts`` that lie in a CJK range: an AV that sees
    the literal marker instead of a vector tends to answer in CJK. Whitespace is left out so padding
    and line breaks do not dilute the rate. 0.0 for no characters."""
    total = cjk = 0
    for text in texts:
        for char in text:
            if char.isspace():
                continue
            total += 1
            code = ord(char)
            cjk += any(low <= code <= high for low, high in CJK_RANGES)
    return cjk / total if total else 0.0


@dataclass
class Samples:
    """What ``Verbalizer.sample`` returns, one entry per row."""

    tokens: list[list[int]]
    """Generated ids, up to and including the first end-of-turn token (nothing after it)."""
    texts: list[str]
    """``tokens`` decoded without special tokens."""
    truncated: list[bool]
    """The row hit ``max_new_tokens`` before an end-of-turn token."""
    parsed: list[str | None]
    """The explanation between the tags, or None when they are missing or cut off."""
    injection: InjectionStats
    """Injection counters of this call: ``injected_rows`` equals the batch size when every row got its vector."""


class Verbalizer(nn.Module):
    """A HF causal LM whose marker slot receives ``rescale(vector, injection_scale)``, or what another
    ``site`` says (``nla.models.injection.InjectionSite``: added after a block, at a matched norm)."""

    def __init__(
        self, model: nn.Module, tokenizer, marker: Marker, injection_scale: float | None, packed: bool | str = "auto",
        site: InjectionSite = InjectionSite(),
    ) -> None:
        super().__init__()
        # ``auto`` packs the labelled (SFT) forward exactly when the attention has a variable-length kernel.
        self.packed = check_packed(packed, "verbalizer.packed")
        self.model, self.tokenizer, self.marker = model, tokenizer, marker
        self.injection_scale = None if injection_scale is None else float(injection_scale)
        self.site = site
        block = None
        if site.layer is not None:
            block = adapters.decoder_layers(model)[adapters.check_layer(model.config, site.layer,
                                                                        "extraction.injection_layer")]
        self.injector = Injector(adapters.input_embeddings(model), marker, injection_scale, site, block)
        self.stop_ids = _stop_ids(model, tokenizer)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, vectors: Tensor, labels: Tensor | None = None,
                slots: Tensor | None = None, layout: PackLayout | None = None):
        """The HF output (``logits``; ``loss`` when ``labels`` is given: mean cross-entropy over the
        positions whose label is not -100, shifted by one as usual). The vectors stay loaded afterwards
        so a checkpointed recompute in backward injects them again; the next call replaces them.

        With ``labels`` and packing on, the rows run as one padding-free packed row: the loss covers the
        same label tokens, but ``logits`` come back packed, ``[1, N, vocab]`` (``packing.unpack`` restores
        ``[B, T, vocab]``). Without labels the padded path always runs, so per-row logits keep their shape.
        ``slots`` (marker positions per row) and ``layout`` (``packing.pack_layout`` of the mask) come
        from the collate step; given, the forward does not wait for the device to find them."""
        if labels is not None and use_packing(self.packed, self.model):
            packed = pack(input_ids, attention_mask, labels, layout)
            # Row slots map into the packed row through the layout; without one the hook searches.
            slots = packed_slots(layout, slots) if slots is not None and layout is not None else None
            self.injector.load(vectors, once=False, cu_seqlens=packed.cu_seqlens, slots=slots)
            kwargs = attention_kwargs(packed, self.model.config, self.model.dtype)
            return self.model(input_ids=packed.input_ids, labels=packed.labels, use_cache=False, **kwargs)
        self.injector.load(vectors, once=False, slots=slots)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)

    def completion_logprobs(self, input_ids: Tensor, attention_mask: Tensor, vectors: Tensor, positions: Tensor,
                            targets: Tensor, entropy: bool = False,
                            slots: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Log-probs ``[n, W]`` of ``targets`` [n, W] predicted at ``positions`` [n, W] of a padded
        batch, vectors injected, and optionally the entropy there, without logits at any other
        position (``nla.models.logprobs``). The LM head runs inside the model's own forward (a hook
        on its decoder), so sharded parameters are whole while it runs, as for the full logits."""
        results = []
        head, softcap = output_head(self.model)

        def on_hidden(module, args, output) -> None:
            hidden = output[0]
            picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            results.append(chosen_logprobs(picked.flatten(0, 1), targets.flatten(), head, softcap, entropy))

        handle = adapters.decoder(self.model).register_forward_hook(on_hidden)
        self.injector.load(vectors, once=False, slots=slots)
        try:
            # One position of logits for the model's own head: the hook has computed what is needed.
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        chosen, spread = results[0]
        return chosen.view(targets.shape), None if spread is None else spread.view(targets.shape)

    @contextmanager
    def keeping_vectors(self) -> Iterator[Verbalizer]:
        """Forward passes inside the block keep their injected vectors until it ends (a checkpointed
        backward recomputes the forward and injects them again); they are dropped on exit."""
        try:
            yield self
        finally:
            self.injector.unload()

    @property
    def injection_stats(self) -> InjectionStats:
        return self.injector.stats

    @torch.no_grad()
    def sample(
        self,
        vectors: Tensor,
        prompt_ids: list[list[int]] | Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 150,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        group: int = 1,
        sampler: str | Sampler = "auto",
        greedy_answers: int = 0,
    ) -> Samples:
        """Generate ``group`` answers per row of ``vectors`` [B, d] after ``prompt_ids`` (lists of ids,
        padded here on the left, or a left-padded [B, T] batch with its ``attention_mask``); answer g of
        row b is row ``b * group + g`` of the result. ``seed`` makes sampling reproducible without
        touching the global RNG (None: a seed drawn from it). ``sampler`` names the engine
        (``nla.models.sampling``: ``auto``, ``loop``, ``static``); every engine samples the same tokens.
        The first ``greedy_answers`` of each row's ``group`` answers are greedy, the others sampled."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if group < 1:
            raise ValueError(f"group must be at least 1, got {group}")
        if not 0 <= greedy_answers <= group:
            raise ValueError(f"greedy_answers must be between 0 and group ({group}), got {greedy_answers}")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be positive for sampling, got {temperature}")
        device = next(self.model.parameters()).device
        input_ids, attention_mask = self._left_padded(prompt_ids, attention_mask, device)
        width = input_ids.shape[1]
        adapters.check_length(self.model.config, width + max_new_tokens, "max_new_tokens",
                              f"the AV prompt ({width} tokens) plus max_new_tokens ({max_new_tokens})")
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        request = SamplingRequest(input_ids, attention_mask, vectors.to(device), group, max_new_tokens,
                                  temperature, greedy, seed, greedy_answers)
        tokens = sampling.resolve(sampler, device).generate(self, request)
        return self._collect(tokens.tolist(), self.injector.stats)

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)

    def _left_padded(self, prompt_ids, attention_mask, device) -> tuple[Tensor, Tensor]:
        if isinstance(prompt_ids, Tensor):
            if attention_mask is None:
                attention_mask = torch.ones_like(prompt_ids)
            if not bool(attention_mask[:, -1].all()):
                raise ValueError("prompt_ids must be left-padded: every row's last position has to be a real token")
            return prompt_ids.to(device), attention_mask.to(device)
        if attention_mask is not None:
            raise ValueError("attention_mask is only taken with a tensor of prompt_ids; lists are padded here")
        ids, mask = pad(prompt_ids, self.pad_id, "left")
        return ids.to(device), mask.to(device)

    def _collect(self, generated: list[list[int]], stats: InjectionStats) -> Samples:
        tokens, truncated = [], []
        for row in generated:
            end = next((i for i, token in enumerate(row) if token in self.stop_ids), None)
            tokens.append(row if end is None else row[: end + 1])
            truncated.append(end is None)
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        parsed = [parse_explanation(text) for text in texts]
        return Samples(tokens, texts, truncated, parsed, stats)


def _stop_ids(model: nn.Module, tokenizer) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS, the generation config's EOS ids (Gemma's
    ``<end_of_turn>``, Llama 3's ``<|eot_id|>``) and the chat template's turn-closing text when it is
    one token."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids.update(int(i) for i in ([] if eos is None else [eos] if isinstance(eos, int) else eos))
    closing = tokenizer.encode(turn_closing(tokenizer), add_special_tokens=False)
    if len(closing) == 1:
        ids.add(int(closing[0]))
    if not ids:
        raise ValueError("the tokenizer and generation config name no end-of-turn token; sampling could not stop")
    return ids
