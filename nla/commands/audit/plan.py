"""Everything ``nla audit`` checks and decides before a model loads: the pair's sidecars, the target's
tokenizer and config (never its weights), the data, the positions of every text, the variance FVE
divides by, the output directory and the cost.

Every bad input is a ``ConfigError`` raised here, so it costs a second and leaves nothing written:
missing columns, empty texts, texts longer than the target reads, an AV and an AR of different
models or layers, a position rule no token passes, an audit directory begun with other settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nla.core.errors import ConfigError, field_scope
from nla.data.audit_data import AuditText, Columns, digest, read_texts
from nla.data.audit_positions import PositionRule, TextTokens, chat_tokens, choose, plain_tokens
from nla.data.audit_table import done_texts
from nla.commands.audit.manifest import check_out, sidecar_digest
from nla.models import adapters
from nla.models.base_model import locate_base_model
from nla.models.loading import ModelArgs, load_config
from nla.models.pair import Pair
from nla.models.pair_loading import pair_bases, read_pair_sidecars
from nla.models.target import target_tokenizer


@dataclass(frozen=True)
class Budget:
    """How the pair runs, and what each row keeps."""

    max_new_tokens: int = 150
    """Cap on each explanation's length in tokens."""
    batch_size: int = 16
    """Positions the AV explains (and the AR reads) together."""
    texts_per_shard: int = 64
    """Texts per shard: the unit written at once, resumed, and handed to one process."""
    context_chars: int = 200
    """Characters of text, ending with the explained token, kept in the ``context`` column."""

    def __post_init__(self) -> None:
        for field, value, low in (("max_new_tokens", self.max_new_tokens, 1), ("batch_size", self.batch_size, 1),
                                  ("texts_per_shard", self.texts_per_shard, 1),
                                  ("context_chars", self.context_chars, 0)):
            if value < low:
                raise ConfigError(field, f"is {value}; it must be at least {low}")


@dataclass
class AuditPlan:
    """An audit checked and laid out, ready to load its models."""

    out: Path
    """The audit directory."""
    av: str
    """The AV's directory."""
    ar: str
    """The AR's directory."""
    base: str | None
    """``--base``: the base model an adapter or a truncated AR goes on (None: the recorded one)."""
    layer: int
    """K, the layer the pair explains."""
    target: str
    """The model whose activations are read."""
    base_model: tuple[str | None, str | None]
    """The pair's base model and its fingerprint, as its AV sidecar records them."""
    d_model: int
    """The pair's width."""
    variance: float
    """The FVE denominator: ``--variance``, else the held-out variance the sidecars record."""
    texts: list[AuditText]
    """Every row of the data."""
    positions: list[list[int]]
    """The positions to explain in each text."""
    lengths: list[int]
    """Tokens the target reads of each text (after any truncation)."""
    tokenizer: object
    """The target's tokenizer."""
    budget: Budget
    """Cap, batching, shards and context."""
    settings: dict
    """What the manifest records and a resumed run must repeat."""
    resume: bool
    """``out`` holds this audit begun earlier."""

    def tokens(self, index: int) -> TextTokens:
        """Text ``index`` in the target's tokens, cut as the plan cut it."""
        text = self.texts[index]
        read = (plain_tokens(self.tokenizer, text.text) if text.messages is None
                else chat_tokens(self.tokenizer, text.messages, index))
        return read.cut(self.lengths[index])

    def groups(self) -> list[range]:
        """The texts of each shard, in dataset order: fixed by the settings alone."""
        size = self.budget.texts_per_shard
        return [range(start, min(start + size, len(self.texts))) for start in range(0, len(self.texts), size)]


def _variance(av, ar, given: float | None) -> float:
    if given is not None:
        if not given > 0:
            raise ConfigError("variance", f"is {given}; give the positive rawvar of the layer's activations")
        return given
    # The same reading of the sidecars as a loaded pair's, without loading one.
    recorded = Pair(None, None, None, av.extraction_layer_index, sidecars={"av": av, "ar": ar}).heldout_variance
    if recorded is None:
        raise ConfigError("variance", "the pair's sidecars record no held-out variance (training.heldout_variance), "
                          "which FVE divides by; pass --variance with the rawvar of held-out activations at its layer")
    return recorded


def _target(given: str | None, av, ar, bases: tuple[str | None, str | None]):
    """The target's name, tokenizer and config (no weights). ``given``: ``--target``, else ``--base``;
    ``bases``: what the AV's adapter and the AR go on (a released pair may name its base nowhere else)."""
    target = given or locate_base_model(av.base_model, av.base_model_source) or ar.base_model or bases[0] or bases[1]
    if not target:
        raise ConfigError("target", "the sidecars name no base_model; pass --target with the model the pair explains")
    try:
        with field_scope("target"):
            return target, target_tokenizer(target), load_config(ModelArgs(target))
    except ConfigError as error:
        if given is not None:
            raise
        raise ConfigError("target", f"the base model the sidecar names cannot be read ({error.detail}); pass "
                          "--target with the model the pair was trained on (a local copy)") from None


def _limit(config, max_tokens: int | None) -> int | None:
    limit = adapters.position_limit(config)
    if max_tokens is None:
        return limit
    if max_tokens < 2:
        raise ConfigError("max_tokens", f"is {max_tokens}; a text needs at least 2 tokens to explain one")
    if limit is not None and max_tokens > limit:
        raise ConfigError("max_tokens", f"is {max_tokens} but the target has {limit} positions "
                          "(max_position_embeddings); lower it")
    return max_tokens


def _positions(texts, tokenizer, rule: PositionRule, limit: int | None, truncate: bool):
    positions, lengths = [], []
    for text in texts:
        read = (plain_tokens(tokenizer, text.text) if text.messages is None
                else chat_tokens(tokenizer, text.messages, text.index))
        if limit is not None and len(read.ids) > limit:
            if not truncate:
                raise ConfigError("max_tokens", f"text {text.text_id!r} (row {text.index}) has {len(read.ids)} tokens "
                                  f"but the target reads at most {limit} (max_position_embeddings or --max_tokens); "
                                  f"pass --truncate true to explain only its first {limit}, or shorten it")
            read = read.cut(limit)
        positions.append(choose(read.tokens, read.special, read.roles, rule))
        lengths.append(len(read.ids))
    if not any(positions):
        field = "pattern" if rule.pattern is not None else "roles" if rule.roles is not None else "every"
        raise ConfigError(field, f"no token of the {len(texts)} texts passes the position rule; loosen it")
    return positions, lengths


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path


def prepare(out: str, av: str, ar: str, base: str | None, layer: int | None, target: str | None, data: str,
            columns: Columns, rule: PositionRule, max_tokens: int | None, truncate: bool, budget: Budget,
            variance: float | None, overwrite: bool, dtype: str) -> AuditPlan:
    """The audit laid out, every input checked, nothing loaded but tokenizers and configs, nothing written."""
    if rule.roles is not None and columns.messages is None:
        raise ConfigError("roles", "chooses tokens of chat transcripts; pass --messages_column with them")
    av_sidecar, ar_sidecar = read_pair_sidecars(av, ar, layer)
    # The pair's files and bases, checked as load_pair checks them before its weights load.
    bases = pair_bases(av, ar, av_sidecar, ar_sidecar, base)
    variance = _variance(av_sidecar, ar_sidecar, variance)
    texts = read_texts(data, columns)
    target, tokenizer, config = _target(target or base, av_sidecar, ar_sidecar, bases)
    if adapters.hidden_size(config) != av_sidecar.d_model:
        raise ConfigError("target", f"'{target}' has width {adapters.hidden_size(config)}; the pair needs "
                          f"{av_sidecar.d_model}")
    layer = adapters.check_layer(config, av_sidecar.extraction_layer_index, "layer")
    limit = _limit(config, max_tokens)
    positions, lengths = _positions(texts, tokenizer, rule, limit, truncate)
    settings = {
        "av": _absolute(av), "ar": _absolute(ar), "av_sidecar": sidecar_digest(av_sidecar),
        "ar_sidecar": sidecar_digest(ar_sidecar), "base": base, "layer": layer, "target": _absolute(target),
        "dtype": dtype, "data": _absolute(data), "data_digest": digest(texts), "text_column": columns.text,
        "messages_column": columns.messages, "id_column": columns.id, "group_column": columns.group,
        "every": rule.every, "roles": list(rule.roles) if rule.roles else None, "pattern": rule.pattern,
        "max_per_text": rule.max_per_text, "max_tokens": limit, "truncate": truncate,
        "max_new_tokens": budget.max_new_tokens, "batch_size": budget.batch_size,
        "texts_per_shard": budget.texts_per_shard, "context_chars": budget.context_chars, "variance": variance,
    }
    resume = check_out(Path(out), settings, overwrite)
    return AuditPlan(Path(out), av, ar, base, layer, target, (av_sidecar.base_model, av_sidecar.base_model_fingerprint),
                     av_sidecar.d_model, variance, texts, positions, lengths, tokenizer, budget, settings, resume)


@dataclass
class Estimate:
    """What is left to do, counted before any model loads."""

    texts: int
    """Texts with at least one position still to explain."""
    positions: int
    """Positions still to explain."""
    done: int
    """Positions a resumed audit already holds."""
    read: int
    """Target tokens to read (the texts still to do, whole)."""

    def describe(self, max_new_tokens: int) -> str:
        resumed = f" ({self.done} already done)" if self.done else ""
        return (f"{self.texts} texts, {self.positions} positions to explain{resumed}, {self.read} target tokens to "
                f"read, at most {self.positions * max_new_tokens} tokens to generate ({self.positions} x "
                f"--max_new_tokens {max_new_tokens})")


def estimate(plan: AuditPlan) -> tuple[Estimate, set[int]]:
    """The work left, and the texts already done (those of a complete shard)."""
    done = done_texts(plan.out) if plan.resume else set()
    todo = [i for i, chosen in enumerate(plan.positions) if chosen and i not in done]
    return Estimate(len(todo), sum(len(plan.positions[i]) for i in todo),
                    sum(len(plan.positions[i]) for i in done if i < len(plan.positions)),
                    sum(plan.lengths[i] for i in todo)), done
