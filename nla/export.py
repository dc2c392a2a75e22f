"""Exporting a trained NLA pair as two HF directories, and loading pairs back (ours or released ones).

Layout of an export ``DIR``::

    DIR/av/  HF causal LM (safetensors), tokenizer, nla_meta.yaml (role av), README.md
             (or, for a LoRA AV exported unmerged, adapter_config.json + adapter_model.safetensors
             in place of the HF model: loading puts the adapter back on the sidecar's base_model)
    DIR/ar/  truncated HF model (K + 1 blocks), value_head.safetensors, tokenizer, nla_meta.yaml (role ar), README.md

Each side is written into a hidden staging directory beside it and renamed into place only once it
is complete, so a crash mid-export leaves the previous export readable. Exporting one side leaves the
other side's directory as it was.

Loading rebuilds ``Prompts`` from the AV sidecar alone (templates and marker), never from today's
defaults: a checkpoint keeps working after nla's default wording changes.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from nla.base_model import describe_base_model, locate_base_model
from nla.errors import ConfigError, NLAError
from nla.files import honour_umask, make_staging_directory
from nla.finite import check_weights_finite
from nla.marker import PLACEHOLDER, render_av_content
from nla.meta import (
    ExtractionMeta,
    NlaMeta,
    PromptTemplates,
    marker_from_meta,
    read_meta,
    token_meta_from_marker,
    validate_meta,
    write_meta,
)
from nla.model_card import CARD_FILENAME, model_card
from nla.modules import adapters, lora
from nla.modules.backbone import BackboneArgs, load_causal_lm, load_tokenizer
from nla.modules.reconstructor import Reconstructor
from nla.modules.verbalizer import Verbalizer
from nla.prompts import PromptArgs, Prompts


def pair_meta(
    role: str,
    *,
    prompts: Prompts,
    layer: int,
    d_model: int,
    injection_scale: float | None,
    base_model: str,
    stage: str,
    training: dict,
) -> NlaMeta:
    """The sidecar of one side of a pair; both sides share everything but ``role`` and the injection scale."""
    return NlaMeta(
        role=role,
        d_model=d_model,
        extraction_layer_index=layer,
        extraction=ExtractionMeta(injection_scale=injection_scale, mse_scale=math.sqrt(d_model)),
        tokens=token_meta_from_marker(prompts.marker, prompts.ar_suffix_ids()),
        prompt_templates=PromptTemplates(av=prompts.args.av_template, ar=prompts.args.ar_template),
        stage=stage,
        base_model=base_model,
        base_model_source=describe_base_model(base_model),
        training=copy.deepcopy(training),
    )


def export_pair(
    directory: str | Path,
    *,
    verbalizer: Verbalizer | None,
    reconstructor: Reconstructor | None,
    prompts: Prompts,
    layer: int,
    base_model: str,
    stage: str,
    training: dict,
    merge_adapters: bool = True,
) -> dict[str, Path]:
    """Write ``directory/av`` and/or ``directory/ar`` (a ``None`` side is skipped and left as it was).

    ``training`` is stored in both sidecars and summarised in the model cards. The cards,
    ``nla explain`` and ``nla evaluate`` read these keys when present (see
    ``nla.model_card.TRAINING_FIELDS``): ``corpus``, ``documents``, ``split_sizes``, ``teacher``,
    ``steps``, ``heldout_variance`` (the rawvar baseline of the held-out split) and ``figures`` (each
    held-out figure named for what it measures, ``nla.meta.figure``).
    A LoRA AV is merged into its weights, or with ``merge_adapters=False`` written as its adapter
    alone; a LoRA AR is always merged (the released AR layout has no adapter form).
    Returns ``{"av": path, "ar": path}`` for the sides written.
    """
    if verbalizer is None and reconstructor is None:
        raise ValueError("export_pair needs a verbalizer, a reconstructor or both")
    directory = Path(directory)
    check_weights_finite({"AV": verbalizer, "AR": reconstructor}, str(directory))
    common = dict(prompts=prompts, layer=layer, base_model=base_model, stage=stage, training=training)
    written: dict[str, Path] = {}
    if verbalizer is not None:
        d_model = adapters.hidden_size(verbalizer.model.config)
        meta = pair_meta("av", d_model=d_model, injection_scale=verbalizer.injection_scale, **common)

        def write_av(staging: Path) -> None:
            lora.save_model(verbalizer.model, staging, merge_adapters, base_model)
            verbalizer.tokenizer.save_pretrained(staging)
            write_meta(meta, staging)
            (staging / CARD_FILENAME).write_text(model_card(meta), encoding="utf-8")

        written["av"] = _replace_directory(directory / "av", write_av)
    if reconstructor is not None:
        if reconstructor.layer != layer:
            raise ConfigError("layer", f"is {layer} but the reconstructor reads layer {reconstructor.layer}")
        meta = pair_meta("ar", d_model=reconstructor.d_model, injection_scale=None, **common)

        def write_ar(staging: Path) -> None:
            with lora.merged_saves(reconstructor.model):
                reconstructor.save_pretrained(staging, meta, prompts.tokenizer)
            (staging / CARD_FILENAME).write_text(model_card(meta), encoding="utf-8")

        written["ar"] = _replace_directory(directory / "ar", write_ar)
    return written


def _replace_directory(final: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a fresh staging directory beside ``final``, then swap it in for ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    # Staging directories of an export that crashed are incomplete by construction.
    for stale in final.parent.glob(f".{final.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = make_staging_directory(final.parent, f".{final.name}.staging-")
    try:
        write(staging)
        honour_umask(staging)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise NLAError(f"disk full while exporting to {final}; nothing there changed; free space on "
                           f"{final.parent} and export again") from error
        raise
    if not final.exists():
        os.rename(staging, final)
        return final
    retired = Path(str(staging).replace(".staging-", ".old-"))
    os.rename(final, retired)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(retired, final)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return final


def _tags_around_slot(template: str, char: str) -> tuple[str, str]:
    """The text glued to either side of the marker slot (``<concept>`` and ``</concept>`` in every
    known template): the sidecar records neighbour ids, not tags, and ``PromptArgs`` wants tags."""
    slot = PLACEHOLDER if PLACEHOLDER in template else char
    at = template.find(slot)
    if at < 0:
        return "", ""
    before = re.search(r"\S*$", template[:at]).group(0)
    after = re.match(r"\S*", template[at + len(slot):]).group(0)
    return before, after


def prompts_from_meta(meta: NlaMeta, tokenizer, file: Path | str = "nla_meta.yaml") -> Prompts:
    """The prompts a checkpoint was trained with, bound to ``tokenizer``; checked against the sidecar's
    token ids (``ConfigError`` naming the sidecar field on any drift)."""
    validate_meta(meta, tokenizer, field_prefix="")
    marker = marker_from_meta(meta)
    open_tag, close_tag = _tags_around_slot(meta.prompt_templates.av, marker.char)
    try:
        args = PromptArgs(meta.prompt_templates.av, meta.prompt_templates.ar, marker.char, open_tag, close_tag)
    except ConfigError as error:
        field = {"prompts.ar_template": "prompt_templates.ar"}.get(error.field, "prompt_templates.av")
        raise ConfigError(field, f"{error.detail} (in {file})") from None
    prompts = Prompts(tokenizer, args, marker)
    suffix = meta.tokens.critic_suffix_ids
    ends = prompts.ar_ids("An explanation.")[-len(suffix):] if suffix else []
    if ends != suffix:
        raise ConfigError("tokens.critic_suffix_ids", f"is {suffix} in {file} but the AR prompt ends with {ends}; "
                          "the sidecar was made for another tokenizer")
    return prompts


def _sidecar(directory: str | Path, role: str, field: str) -> tuple[Path, NlaMeta]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(field, f"directory '{directory}' does not exist; check the path")
    meta = read_meta(directory)
    if meta.role != role:
        raise ConfigError(field, f"'{directory}' holds role {meta.role!r}; expected {role} (swapped arguments?)")
    return directory, meta


def _load_verbalizer(
    directory: str | Path, dtype: str, field: str, quantization: str = "none", trainable: bool = False
) -> tuple[Verbalizer, Prompts, NlaMeta]:
    directory, meta = _sidecar(directory, "av", field)
    args = BackboneArgs(str(directory), dtype=dtype)
    tokenizer = load_tokenizer(args)
    prompts = prompts_from_meta(meta, tokenizer, directory / "nla_meta.yaml")
    if lora.is_adapter_dir(directory):
        base = BackboneArgs(locate_base_model(meta.base_model, meta.base_model_source, f"{field}.base_model"),
                            dtype=dtype, quantization=quantization)
        model = lora.load_adapter(load_causal_lm(base), directory, trainable).eval()
    else:
        model = load_causal_lm(BackboneArgs(str(directory), dtype=dtype, quantization=quantization)).eval()
    if adapters.hidden_size(model.config) != meta.d_model:
        raise ConfigError("d_model", f"is {meta.d_model} in {directory} but the model's hidden size is "
                          f"{adapters.hidden_size(model.config)}")
    return Verbalizer(model, tokenizer, prompts.marker, meta.extraction.injection_scale), prompts, meta


def load_verbalizer(
    directory: str | Path, dtype: str = "auto", quantization: str = "none", trainable_adapter: bool = False
) -> tuple[Verbalizer, Prompts]:
    """The AV of an exported or released checkpoint directory, in eval mode, and its prompts.
    ``quantization`` (``none``, ``8bit``, ``4bit``) is for frozen uses; an adapter-only export gets
    its adapter back on the base model, trainable with ``trainable_adapter``."""
    verbalizer, prompts, _ = _load_verbalizer(directory, dtype, "av", quantization, trainable_adapter)
    return verbalizer, prompts


def _av_content(meta: NlaMeta) -> str:
    """The AV user message with the marker filled in: released sidecars write the placeholder in one
    file and the literal marker in another."""
    template = meta.prompt_templates.av
    return render_av_content(template, meta.tokens.injection_char) if template.strip() else ""


_AGREE = {
    "extraction_layer_index": lambda m: m.extraction_layer_index,
    "d_model": lambda m: m.d_model,
    "prompt_templates.ar": lambda m: m.prompt_templates.ar,
    "prompt_templates.av": _av_content,
    "tokens.injection_token_id": lambda m: m.tokens.injection_token_id,
}


def read_pair_meta(av_dir: str | Path, ar_dir: str | Path) -> tuple[tuple[Path, NlaMeta], tuple[Path, NlaMeta]]:
    """Both sidecars, checked to describe one pair (``ConfigError`` naming the first field that
    differs), without loading any weights."""
    av = _sidecar(av_dir, "av", "av")
    ar = _sidecar(ar_dir, "ar", "ar")
    for field, value in _AGREE.items():
        # An AR sidecar may leave the AV's fields out; only what both record must agree.
        if value(ar[1]) != "" and value(av[1]) != value(ar[1]):
            raise ConfigError(field, f"the AV says {value(av[1])!r} but the AR says {value(ar[1])!r}; "
                              "these two directories are not one pair")
    return av, ar


def pair_directories(av: str | None, ar: str | None, pair: str | None) -> tuple[str, str]:
    """The AV and AR directories a command was given: ``--av`` and ``--ar``, or ``--pair`` (an export
    directory holding ``av/`` and ``ar/``)."""
    if pair is not None:
        if av is not None or ar is not None:
            raise ConfigError("pair", "names both halves; give --pair or --av and --ar, not both")
        return str(Path(pair) / "av"), str(Path(pair) / "ar")
    if av is None or ar is None:
        raise ConfigError("av" if av is None else "ar", "is missing; give --av and --ar, or --pair with an export "
                          "directory")
    return av, ar


def load_pair_with_meta(
    av_dir: str | Path, ar_dir: str | Path, dtype: str = "auto"
) -> tuple[Verbalizer, Reconstructor, Prompts, NlaMeta, NlaMeta]:
    """``load_pair`` plus both sidecars (``nla explain`` reads the base model and statistics there)."""
    ar_path, ar_meta = read_pair_meta(av_dir, ar_dir)[1]
    verbalizer, prompts, av_meta = _load_verbalizer(av_dir, dtype, "av")
    reconstructor = Reconstructor.from_pretrained(ar_path, dtype=dtype).eval()
    return verbalizer, reconstructor, prompts, av_meta, ar_meta


def load_pair(av_dir: str | Path, ar_dir: str | Path, dtype: str = "auto") -> tuple[Verbalizer, Reconstructor, Prompts]:
    """Both halves of a pair, checked to agree on K, d, marker and templates (``ConfigError`` naming
    the first field that differs). The prompts are the AV's, and serve the AR too."""
    verbalizer, reconstructor, prompts, _, _ = load_pair_with_meta(av_dir, ar_dir, dtype)
    return verbalizer, reconstructor, prompts
