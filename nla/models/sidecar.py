"""``nla_meta.yaml``: the sidecar beside every exported AV/AR HF directory.

We write one canonical layout and read every variant the released NLAs used: ``actor``/``critic`` for
``av``/``ar``, the layer index K in any of several places, scales given as ``sqrt_d_model``. Keys we
do not know are kept in ``Sidecar.extra`` and written back, so a round trip loses nothing.

AV templates are the user message of the verbalizer's prompt, with ``{injection_char}`` or the
literal marker where the vector goes (``nla.core.marker.render_av_content``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from nla.core.errors import ConfigError
from nla.core.files import atomic_write_bytes
from nla.core.marker import CJK_RANGE, Marker, marker_problem, render_av_content
from nla.models.injection import INJECTION_MODES, INJECTION_NORMS, InjectionSite

SIDECAR_FILENAME = "nla_meta.yaml"
ROLE_ALIASES = {"av": "av", "ar": "ar", "actor": "av", "critic": "ar"}
SQRT_D = "sqrt_d_model"


@dataclass
class SidecarExtraction:
    injection_scale: float | None
    """Norm the activation is rescaled to before it is injected (``injection_norm: fixed``). None in
    an AR sidecar that does not record it (the AR never injects) and with ``injection_norm: matched``."""
    mse_scale: float
    """Norm both prediction and target are rescaled to before the MSE: sqrt(d_model)."""
    injection_mode: str = "replace"
    """``replace``: the vector replaces the residual at the marker's slot; ``add``: it is added to it.
    Absent in released sidecars of the reference trainer, which replace."""
    injection_layer: int | None = None
    """Where: null at the output of the input embedding (the marker's embedding); N after decoder
    block N (0-based), the residual entering block N + 1."""
    injection_norm: str = "fixed"
    """``fixed``: rescaled to ``injection_scale``; ``matched``: rescaled to the norm of the residual at
    the slot it goes to (activation-oracle style)."""

    @property
    def site(self) -> InjectionSite:
        return InjectionSite(self.injection_mode, self.injection_layer, self.injection_norm)


@dataclass
class SidecarTokens:
    injection_char: str
    """The marker as text."""
    injection_token_id: int
    """Its single token id."""
    injection_left_neighbor_id: int
    """Id of the token before the marker in the AV prompt (last token of the opening tag)."""
    injection_right_neighbor_id: int
    """Id of the token after the marker in the AV prompt (first token of the closing tag)."""
    critic_suffix_ids: list[int] = field(default_factory=list)
    """Ids the AR prompt ends with; the AR reads its prediction at the last of them. May be empty."""
    marker_rule: str = "explicit"
    """How the marker was chosen (``nla.core.marker.RULES``). Released sidecars lack it: read as
    ``cjk-range`` for a character of that range, else ``explicit``."""


@dataclass
class PromptTemplates:
    av: str = ""
    """The AV user message, with ``{injection_char}`` (or the literal marker) where the vector goes."""
    ar: str = ""
    """The AR prompt, a raw string around the explanation."""


@dataclass
class Sidecar:
    role: str
    """``av`` (verbalizer) or ``ar`` (reconstructor)."""
    d_model: int
    """Hidden size d of the target model."""
    extraction_layer_index: int | None
    """K: activations are the output of decoder block K (0-based), ``hidden_states[K + 1]``. None only
    in the sidecar of a pair that serves several ``layers`` and records no default: the layer is
    chosen when the pair loads."""
    extraction: SidecarExtraction
    """Scales used for injection and loss."""
    tokens: SidecarTokens
    """The marker and the AR suffix, pinned to the tokenizer they were computed with."""
    prompt_templates: PromptTemplates
    """Prompts of both halves; the AV template fixes the marker's neighbours."""
    stage: str | None = None
    """Training stage that produced the weights: ``sft``, ``grpo``, ...; None when not recorded."""
    base_model: str | None = None
    """Hub id or path of the target model the NLA was trained on, as it was given."""
    base_model_source: dict = field(default_factory=dict)
    """For a local base model: its absolute ``path`` and the ``config_sha256`` of its config.json
    (``nla.models.base_model``), so the pair finds it from another working directory; else empty."""
    base_model_fingerprint: str | None = None
    """``sha256:...`` of the base model's config and weights (``nla.models.fingerprint``): commands that
    combine an AV, an AR and a cache refuse different ones. None in released sidecars."""
    layers: list[int] = field(default_factory=list)
    """The layers a per-layer pair serves (one AR value head each; the prompts name the layer in a
    ``{layer}`` slot); empty for a pair of the one layer K. Written only when not empty."""
    warm_start_adapter: str | None = None
    """For an AV given as a LoRA adapter: the directory (relative to the AV's) of the adapter it is
    stacked on, the AV-SFT warm start, merged into the base weights before it. Written only when set."""
    training: dict = field(default_factory=dict)
    """Provenance: config, step, metrics, versions; free-form."""
    kind: str = "nla_model"
    """Always ``nla_model``; tells this sidecar from a dataset's."""
    extra: dict = field(default_factory=dict)
    """Keys this version does not know, nested as in the file, written back unchanged."""

    def to_dict(self) -> dict:
        known = {"kind": self.kind, "role": self.role, **asdict(self)}
        # Fields of some released layouts only: a sidecar of one layer without a warm start stays as it was.
        for key, empty in (("layers", []), ("warm_start_adapter", None)):
            if known[key] == empty:
                known.pop(key)
        return _merge(known, known.pop("extra"))


def _merge(known: dict, extra: dict) -> dict:
    """``known`` with ``extra``'s keys added where ``known`` has none; known values win."""
    for key, value in extra.items():
        if key not in known:
            known[key] = value
        elif isinstance(known[key], dict) and isinstance(value, dict):
            _merge(known[key], value)
    return known


def write_sidecar(meta: Sidecar, directory: str | Path) -> Path:
    """Write ``directory/nla_meta.yaml`` atomically; returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / SIDECAR_FILENAME
    text = yaml.safe_dump(meta.to_dict(), sort_keys=False, allow_unicode=True)
    atomic_write_bytes(target, text.encode("utf-8"))
    return target


_MISSING = object()


class _Reader:
    """Pops the keys it knows off a copy of the raw sidecar; what is left becomes ``extra``."""

    def __init__(self, raw: dict, file: Path) -> None:
        self.rest, self.file = copy.deepcopy(raw), file

    def get(self, *names: str, default=_MISSING, pop: bool = True):
        """The value of the first of ``names`` present (dotted paths); ``default`` or a
        ``ConfigError`` naming the first when none is."""
        for name in names:
            *parents, leaf = name.split(".")
            node = self.rest
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:
                return node.pop(leaf) if pop else node[leaf]
        if default is _MISSING:
            raise ConfigError(names[0], f"missing from {self.file}")
        return default

    def number(self, kind, *names: str, default=_MISSING, pop: bool = True, d_model: int | None = None):
        value = self.get(*names, default=default, pop=pop)
        if value is None or value is default:
            return value
        if value == SQRT_D and d_model is not None:
            return math.sqrt(d_model)
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(names[0], f"is {value!r} in {self.file}; expected a number") from None


def _hf_text_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    return config.get("text_config") or config


def read_sidecar(directory_or_file: str | Path) -> Sidecar:
    """Read a sidecar (the file, or the directory holding it), in our layout or a released one."""
    file = Path(directory_or_file)
    file = file / SIDECAR_FILENAME if file.is_dir() else file
    if not file.is_file():
        raise ConfigError(SIDECAR_FILENAME, f"not found at {file}; is this an NLA checkpoint directory?")
    raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(SIDECAR_FILENAME, f"{file} is not a mapping")
    r = _Reader(raw, file)
    kind = r.get("kind", default="nla_model")
    if kind != "nla_model":
        raise ConfigError("kind", f"is {kind!r} in {file}; expected nla_model (not a dataset sidecar)")
    role = ROLE_ALIASES.get(str(r.get("role")).lower())
    if role is None:
        raise ConfigError("role", f"is {raw['role']!r} in {file}; expected av or ar (older: actor, critic)")
    hf = _hf_text_config(file.parent)
    d_model = r.number(int, "d_model", "extraction.d_model", default=hf.get("hidden_size", _MISSING))
    layers = r.get("layers", default=None) or []
    if not isinstance(layers, list) or not all(type(k) is int and k >= 0 for k in layers):
        raise ConfigError("layers", f"is {layers!r} in {file}; expected a list of layer indices")

    # ``extraction.layer_index``: the dataset sidecar's spelling, which EasyNLA-style trainers copy.
    layer = r.number(int, "extraction_layer_index", "extraction.extraction_layer_index", "extraction.layer_index",
                     default=None)
    # The released trainer's AR sections (critic.*, ar.*) are only read, so they stay in ``extra``.
    # Only an AR's config is truncated to K + 1 blocks; an AV's holds the full depth, whose last block
    # is not K, so an AV sidecar must say K.
    if layer is None:
        layer = r.number(int, "critic.extraction_layer_index", "ar.extraction_layer_index", default=None,
                         pop=False)
    if layer is None:
        depth = r.number(int, "critic.num_hidden_layers", "ar.num_hidden_layers", default=None, pop=False)
        depth = hf.get("num_hidden_layers") if depth is None and role == "ar" and not layers else depth
        if depth is None and not layers:
            raise ConfigError("extraction_layer_index", f"missing from {file}; set it to K")
        layer = None if depth is None else int(depth) - 1

    mode = str(r.get("extraction.injection_mode", default="replace"))
    norm = str(r.get("extraction.injection_norm", default="fixed"))
    for name, value, known in (("injection_mode", mode, INJECTION_MODES), ("injection_norm", norm, INJECTION_NORMS)):
        if value not in known:
            raise ConfigError(f"extraction.{name}", f"is {value!r} in {file}; expected one of {', '.join(known)}")
    injection_layer = r.number(int, "extraction.injection_layer", default=None)
    if injection_layer is not None and injection_layer < 0:
        raise ConfigError("extraction.injection_layer", f"is {injection_layer} in {file}; expected a block index "
                          "(0-based) or null for the embedding output")
    injection_scale = r.number(
        float, "extraction.injection_scale", default=None if role == "ar" or norm == "matched" else _MISSING,
        d_model=d_model
    )
    # Released sidecars may spell the default as null or "sqrt_d_model"; every NLA normalises to sqrt(d).
    mse_scale = r.number(float, "extraction.mse_scale", default=None, d_model=d_model) or math.sqrt(d_model)
    char = str(r.get("tokens.injection_char"))
    ids = {
        key: r.number(int, f"tokens.{key}")
        for key in ("injection_token_id", "injection_left_neighbor_id", "injection_right_neighbor_id")
    }
    suffix = r.get("tokens.critic_suffix_ids", default=None) or []
    if not isinstance(suffix, list) or not all(isinstance(i, int) for i in suffix):
        raise ConfigError("tokens.critic_suffix_ids", f"is {suffix!r} in {file}; expected a list of token ids")
    default_rule = "cjk-range" if len(char) == 1 and ord(char) in CJK_RANGE else "explicit"
    rule = str(r.get("tokens.marker_rule", default=default_rule))
    templates = PromptTemplates(
        av=str(r.get("prompt_templates.av", "prompt_templates.actor", default=None) or ""),
        ar=str(r.get("prompt_templates.ar", "prompt_templates.critic", default=None) or ""),
    )
    warm_start = r.get("warm_start_adapter", default=None)
    training = r.get("training", default=None) or {}
    if not isinstance(training, dict):
        raise ConfigError("training", f"is {training!r} in {file}; expected a mapping")
    stage, base_model = r.get("stage", default=None), r.get("base_model", default=None)
    base_fingerprint = r.get("base_model_fingerprint", default=None)
    source = r.get("base_model_source", default=None) or {}
    if not isinstance(source, dict):
        raise ConfigError("base_model_source", f"is {source!r} in {file}; expected a mapping")
    emptied = ("extraction", "tokens", "prompt_templates")
    extra = {key: value for key, value in r.rest.items() if not (key in emptied and value == {})}
    return Sidecar(
        role=role,
        d_model=d_model,
        extraction_layer_index=layer,
        extraction=SidecarExtraction(injection_scale, mse_scale, mode, injection_layer, norm),
        tokens=SidecarTokens(char, **ids, critic_suffix_ids=suffix, marker_rule=rule),
        prompt_templates=templates,
        stage=None if stage is None else str(stage),
        base_model=None if base_model is None else str(base_model),
        base_model_source=source,
        base_model_fingerprint=None if base_fingerprint is None else str(base_fingerprint),
        layers=layers,
        warm_start_adapter=None if warm_start is None else str(warm_start),
        training=training,
        kind=kind,
        extra=extra,
    )


FIGURES = {
    "ar_on_teacher_text": "the AR reading the teacher's explanations of held-out rows (teacher-written text, no AV "
                          "involved): how well the AR reads good explanations, not what the pair achieves",
    "round_trip": "the AV explaining held-out vectors (greedy, at most max_new_tokens new tokens, the AV prompt "
                  "rendered with the tokenizer's chat template and add_generation_prompt=true) and the AR reading "
                  "what it wrote; an answer without its closing tag counts as an orthogonal prediction (MSE 2)",
    "round_trip_frozen_reconstructor": "round_trip's explanations read by a reconstructor that was not trained with "
                                       "this AV (named by `reconstructor`, e.g. the SFT stage's): a gain that only "
                                       "the co-adapted AR can read shows as a gap to round_trip",
}
"""Held-out figures a sidecar's ``training.figures`` may record, by name, and what each measures."""


def figure(name: str, *, fve: float, mse: float, rows: int, documents: int | None, variance: float | None,
           step: int, split: str = "validation", **settings) -> dict:
    """One entry of ``training.figures``: the value, what it measures, on which rows (the first
    ``rows`` rows of ``split``, the held-out half training evaluates on, in the order of
    ``nla.data.splits.evaluation_order``), with which baseline, at which step, and the settings that
    reproduce it (for a round trip: ``max_new_tokens``, ``decoding``, ``valid_rate``); no interval
    unless one is given."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")
    return {"what": FIGURES[name], "fve": float(fve), "mse": float(mse), "split": split,
            "rows": int(rows), "rows_order": "the first rows of the split in nla.data.splits.evaluation_order",
            "documents": None if documents is None else int(documents),
            "variance": None if variance is None else float(variance), "baseline": "rawvar of the held-out split",
            "step": int(step), "interval": None, **settings}


def generation_settings(training: dict) -> dict | None:
    """``{"max_new_tokens", "decoding"}`` of the round trip a sidecar records, None when it records none."""
    trip = (training.get("figures") or {}).get("round_trip")
    if not isinstance(trip, dict) or not isinstance(trip.get("max_new_tokens"), int):
        return None
    return {"max_new_tokens": trip["max_new_tokens"], "decoding": trip.get("decoding", "greedy")}


_MARKER_FIELDS = {"char": "tokens.injection_char", "token_id": "tokens.injection_token_id",
                  "left_id": "tokens.injection_left_neighbor_id",
                  "right_id": "tokens.injection_right_neighbor_id", "content": "prompt_templates.av"}


def marker_from_sidecar(meta: Sidecar) -> Marker:
    t = meta.tokens
    return Marker(t.injection_char, t.injection_token_id, t.injection_left_neighbor_id,
                  t.injection_right_neighbor_id, t.marker_rule)


def sidecar_tokens(marker: Marker, critic_suffix_ids: list[int] | None = None) -> SidecarTokens:
    return SidecarTokens(marker.char, marker.token_id, marker.left_id, marker.right_id,
                     list(critic_suffix_ids or []), marker.rule)


def validate_sidecar(meta: Sidecar, tokenizer, field_prefix: str = "meta") -> None:
    """Check the sidecar against the tokenizer it will run with: token drift would otherwise inject
    at the wrong position without any error. Raises ``ConfigError`` naming the first field at fault."""
    prefix = f"{field_prefix}." if field_prefix else ""
    for key in ("av", "ar"):
        if not getattr(meta.prompt_templates, key).strip():
            raise ConfigError(f"{prefix}prompt_templates.{key}", "is missing or empty")
    marker = marker_from_sidecar(meta)
    content = render_av_content(meta.prompt_templates.av, marker.char, f"{prefix}prompt_templates.av")
    problem = marker_problem(tokenizer, marker, content)
    if problem is not None:
        attribute, message = problem
        raise ConfigError(prefix + _MARKER_FIELDS[attribute], message)
