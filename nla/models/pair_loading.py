"""Loading a ``Pair`` back from disk: ours (``nla.models.pair_export``) or a released one.

Loading rebuilds ``Prompts`` from the AV sidecar alone (templates and marker), never from today's
defaults: a checkpoint keeps working after nla's default wording changes. Both sidecars are read and
checked to describe one pair before any weights load.
"""

from __future__ import annotations

import re
from pathlib import Path

from nla.core.errors import ConfigError
from nla.core.marker import PLACEHOLDER, render_av_content
from nla.core.prompts import PromptArgs, Prompts
from nla.models import adapters, lora
from nla.models.base_model import locate_base_model
from nla.models.fingerprint import check_same_base
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.pair import Pair
from nla.models.reconstructor import Reconstructor
from nla.models.sidecar import SIDECAR_FILENAME, Sidecar, marker_from_sidecar, read_sidecar, validate_sidecar
from nla.models.verbalizer import Verbalizer


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


def prompts_from_sidecar(sidecar: Sidecar, tokenizer, file: Path | str = SIDECAR_FILENAME) -> Prompts:
    """The prompts a checkpoint was trained with, bound to ``tokenizer``; checked against the sidecar's
    token ids (``ConfigError`` naming the sidecar field on any drift)."""
    validate_sidecar(sidecar, tokenizer, field_prefix="")
    marker = marker_from_sidecar(sidecar)
    open_tag, close_tag = _tags_around_slot(sidecar.prompt_templates.av, marker.char)
    try:
        args = PromptArgs(sidecar.prompt_templates.av, sidecar.prompt_templates.ar, marker.char, open_tag, close_tag)
    except ConfigError as error:
        field = {"prompts.ar_template": "prompt_templates.ar"}.get(error.field, "prompt_templates.av")
        raise ConfigError(field, f"{error.detail} (in {file})") from None
    prompts = Prompts(tokenizer, args, marker)
    suffix = sidecar.tokens.critic_suffix_ids
    ends = prompts.ar_ids("An explanation.")[-len(suffix):] if suffix else []
    if ends != suffix:
        raise ConfigError("tokens.critic_suffix_ids", f"is {suffix} in {file} but the AR prompt ends with {ends}; "
                          "the sidecar was made for another tokenizer")
    return prompts


def _side(directory: str | Path, role: str, field: str) -> Sidecar:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(field, f"directory '{directory}' does not exist; check the path")
    sidecar = read_sidecar(directory)
    if sidecar.role != role:
        raise ConfigError(field, f"'{directory}' holds role {sidecar.role!r}; expected {role} (swapped arguments?)")
    return sidecar


def _load_verbalizer(directory: Path, sidecar: Sidecar, dtype: str, field: str, quantization: str = "none",
                     trainable: bool = False) -> tuple[Verbalizer, Prompts]:
    tokenizer = load_tokenizer(ModelArgs(str(directory), dtype=dtype))
    prompts = prompts_from_sidecar(sidecar, tokenizer, directory / SIDECAR_FILENAME)
    if lora.is_adapter_dir(directory):
        base = ModelArgs(locate_base_model(sidecar.base_model, sidecar.base_model_source, f"{field}.base_model"),
                         dtype=dtype, quantization=quantization)
        model = lora.load_adapter(load_causal_lm(base), directory, trainable).eval()
    else:
        model = load_causal_lm(ModelArgs(str(directory), dtype=dtype, quantization=quantization)).eval()
    if adapters.hidden_size(model.config) != sidecar.d_model:
        raise ConfigError("d_model", f"is {sidecar.d_model} in {directory} but the model's hidden size is "
                          f"{adapters.hidden_size(model.config)}")
    return Verbalizer(model, tokenizer, prompts.marker, sidecar.extraction.injection_scale), prompts


def load_verbalizer(directory: str | Path, dtype: str = "auto", quantization: str = "none",
                    trainable_adapter: bool = False) -> tuple[Verbalizer, Prompts]:
    """The AV of an exported or released checkpoint directory, in eval mode, and its prompts.
    ``quantization`` (``none``, ``8bit``, ``4bit``) is for frozen uses; an adapter-only export gets
    its adapter back on the base model, trainable with ``trainable_adapter``."""
    sidecar = _side(directory, "av", "av")
    return _load_verbalizer(Path(directory), sidecar, dtype, "av", quantization, trainable_adapter)


def _av_content(sidecar: Sidecar) -> str:
    """The AV user message with the marker filled in: released sidecars write the placeholder in one
    file and the literal marker in another."""
    template = sidecar.prompt_templates.av
    return render_av_content(template, sidecar.tokens.injection_char) if template.strip() else ""


_AGREE = {
    "extraction_layer_index": lambda s: s.extraction_layer_index,
    "d_model": lambda s: s.d_model,
    "prompt_templates.ar": lambda s: s.prompt_templates.ar,
    "prompt_templates.av": _av_content,
    "tokens.injection_token_id": lambda s: s.tokens.injection_token_id,
}


def read_pair_sidecars(av_dir: str | Path, ar_dir: str | Path) -> tuple[Sidecar, Sidecar]:
    """Both sidecars, checked to describe one pair (``ConfigError`` naming the first field that
    differs), without loading any weights."""
    av, ar = _side(av_dir, "av", "av"), _side(ar_dir, "ar", "ar")
    for field, value in _AGREE.items():
        # An AR sidecar may leave the AV's fields out; only what both record must agree.
        if value(ar) != "" and value(av) != value(ar):
            raise ConfigError(field, f"the AV says {value(av)!r} but the AR says {value(ar)!r}; "
                              "these two directories are not one pair")
    check_same_base("ar", ("the AV", av.base_model, av.base_model_fingerprint),
                    ("the AR", ar.base_model, ar.base_model_fingerprint),
                    "these two directories are not one pair; give an AV and an AR trained on the same model")
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


def _pair(verbalizer: Verbalizer | None, reconstructor: Reconstructor, prompts: Prompts, av_sidecar: Sidecar,
          ar_sidecar: Sidecar) -> Pair:
    return Pair(verbalizer, reconstructor, prompts, layer=av_sidecar.extraction_layer_index,
                base_model=av_sidecar.base_model or ar_sidecar.base_model,
                base_fingerprint=av_sidecar.base_model_fingerprint or ar_sidecar.base_model_fingerprint,
                sidecars={"av": av_sidecar, "ar": ar_sidecar})


def load_pair(av_dir: str | Path, ar_dir: str | Path, dtype: str = "auto") -> Pair:
    """Both halves of a pair in eval mode, with their sidecars, checked to agree on K, d, marker and
    templates (``ConfigError`` naming the first field that differs). The prompts are the AV's, and
    serve the AR too."""
    av_sidecar, ar_sidecar = read_pair_sidecars(av_dir, ar_dir)
    verbalizer, prompts = _load_verbalizer(Path(av_dir), av_sidecar, dtype, "av")
    reconstructor = Reconstructor.from_pretrained(ar_dir, dtype=dtype).eval()
    return _pair(verbalizer, reconstructor, prompts, av_sidecar, ar_sidecar)


def load_reader(av_dir: str | Path, ar_dir: str | Path, dtype: str = "auto") -> Pair:
    """A pair without a verbalizer: the AR of ``ar_dir`` reading what the AV of ``av_dir`` writes,
    with the AV's prompts (checked to agree as in ``load_pair``; the AV's weights are not loaded).
    Scores one AV's explanations with an AR it was not trained with."""
    av_sidecar, ar_sidecar = read_pair_sidecars(av_dir, ar_dir)
    tokenizer = load_tokenizer(ModelArgs(str(av_dir), dtype=dtype))
    prompts = prompts_from_sidecar(av_sidecar, tokenizer, Path(av_dir) / SIDECAR_FILENAME)
    reconstructor = Reconstructor.from_pretrained(ar_dir, dtype=dtype).eval()
    return _pair(None, reconstructor, prompts, av_sidecar, ar_sidecar)
