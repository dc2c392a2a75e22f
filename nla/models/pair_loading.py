"""Loading a ``Pair`` back from disk: ours (``nla.models.pair_export``) or a released one, in any of
the layouts of ``nla.models.released``.

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
from nla.models import adapters
from nla.models.fingerprint import check_same_base
from nla.models.injection import InjectionSite
from nla.models.loading import ModelArgs, load_tokenizer
from nla.models.pair import Pair
from nla.models.reconstructor import Reconstructor
from nla.models.released import ar_lora
from nla.models.released.ar import load_reconstructor, prepare_ar
from nla.models.released.av import load_av_model, prepare_av
from nla.models.released.per_layer import choose_layer
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


def _av_side(directory: str | Path, layer: int | None) -> Sidecar:
    return choose_layer(_side(directory, "av", "av"), layer, Path(directory) / SIDECAR_FILENAME)


def _ar_side(directory: str | Path, av: Sidecar, layer: int | None) -> Sidecar:
    """The AR's sidecar at the AV's layer; an AR given as ``ar_meta.json`` gets one built from it and the
    AV's (any ``nla_meta.yaml`` beside it is the trainer's copy of its dataset's sidecar)."""
    directory = Path(directory)
    if directory.is_dir() and ar_lora.is_lora_ar(directory):
        sidecar = ar_lora.sidecar_for(ar_lora.read_ar_meta(directory), av)
    else:
        sidecar = _side(directory, "ar", "ar")
    # A per-layer AR follows the AV's choice; a one-layer AR is checked against the AV's below.
    chosen = layer if layer is not None or not sidecar.layers else av.extraction_layer_index
    return choose_layer(sidecar, chosen, directory / SIDECAR_FILENAME)


def _load_verbalizer(directory: Path, sidecar: Sidecar, dtype: str, quantization: str = "none",
                     trainable: bool = False, base: str | None = None) -> tuple[Verbalizer, Prompts]:
    tokenizer = load_tokenizer(ModelArgs(str(directory), dtype=dtype))
    prompts = prompts_from_sidecar(sidecar, tokenizer, directory / SIDECAR_FILENAME)
    site = sidecar.extraction.site
    if trainable and site != InjectionSite():
        raise ConfigError("extraction.injection_mode", f"in {directory / SIDECAR_FILENAME}: the vector "
                          f"{site.describe()}; nla trains only AVs whose vector replaces the embedding output at "
                          "injection_scale: use this AV with explain, evaluate and steer")
    adapter_base = prepare_av(directory, sidecar, base, quantization)
    model = load_av_model(directory, sidecar, adapter_base, dtype, quantization, trainable).eval()
    if adapters.hidden_size(model.config) != sidecar.d_model:
        raise ConfigError("d_model", f"is {sidecar.d_model} in {directory} but the model's hidden size is "
                          f"{adapters.hidden_size(model.config)}")
    return Verbalizer(model, tokenizer, prompts.marker, sidecar.extraction.injection_scale, site=site), prompts


def load_verbalizer(directory: str | Path, dtype: str = "auto", quantization: str = "none",
                    trainable_adapter: bool = False, *, base: str | None = None,
                    layer: int | None = None) -> tuple[Verbalizer, Prompts]:
    """The AV of an exported or released checkpoint directory, in eval mode, and its prompts.
    ``quantization`` (``none``, ``8bit``, ``4bit``) is for frozen uses; an adapter-only export gets
    its adapter back on the base model (``base``, else the one the sidecar or the adapter names),
    trainable with ``trainable_adapter``, which also asks for an AV nla can train: one whose vector
    replaces the embedding output at ``injection_scale`` (other injection sites are refused).
    ``layer``: the layer of an AV that serves several (``nla.models.released.per_layer``)."""
    sidecar = _av_side(directory, layer)
    return _load_verbalizer(Path(directory), sidecar, dtype, quantization, trainable_adapter, base)


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


def read_pair_sidecars(av_dir: str | Path, ar_dir: str | Path, layer: int | None = None) -> tuple[Sidecar, Sidecar]:
    """Both sidecars at ``layer`` (for a pair that serves several; ``nla.models.released.per_layer``),
    checked to describe one pair (``ConfigError`` naming the first field that differs), without
    loading any weights."""
    av = _av_side(av_dir, layer)
    ar = _ar_side(ar_dir, av, layer)
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


def pair_bases(av_dir: str | Path, ar_dir: str | Path, av_sidecar: Sidecar, ar_sidecar: Sidecar,
               base: str | None = None) -> tuple[str | None, str | None]:
    """The base models the AV's adapter and the AR go on (None for a side that is a full directory),
    each side's files checked: what ``load_pair`` checks before any weights load, for commands that
    read the target first. A base that is not here asks for ``--base`` (``base``)."""
    return prepare_av(Path(av_dir), av_sidecar, base), prepare_ar(Path(ar_dir), ar_sidecar, base)


def _pair(verbalizer: Verbalizer | None, reconstructor: Reconstructor, prompts: Prompts, av_sidecar: Sidecar,
          ar_sidecar: Sidecar, base: str | None = None) -> Pair:
    return Pair(verbalizer, reconstructor, prompts, layer=av_sidecar.extraction_layer_index,
                base_model=base or av_sidecar.base_model or ar_sidecar.base_model,
                base_fingerprint=av_sidecar.base_model_fingerprint or ar_sidecar.base_model_fingerprint,
                sidecars={"av": av_sidecar, "ar": ar_sidecar})


def load_pair(av_dir: str | Path, ar_dir: str | Path, dtype: str = "auto", *, base: str | None = None,
              layer: int | None = None) -> Pair:
    """Both halves of a pair in eval mode, with their sidecars, checked to agree on K, d, marker and
    templates (``ConfigError`` naming the first field that differs), in any layout of
    ``nla.models.released``. ``base`` (``--base``) replaces the base model an adapter or a truncated AR
    goes on; ``layer`` picks the layer of a pair that serves several. Both sides' files and bases are
    checked before any weights load. The prompts are the AV's, and serve the AR too."""
    av_sidecar, ar_sidecar = read_pair_sidecars(av_dir, ar_dir, layer)
    _, ar_base = pair_bases(av_dir, ar_dir, av_sidecar, ar_sidecar, base)
    verbalizer, prompts = _load_verbalizer(Path(av_dir), av_sidecar, dtype, base=base)
    reconstructor = load_reconstructor(Path(ar_dir), ar_sidecar, ar_base, dtype)
    return _pair(verbalizer, reconstructor, prompts, av_sidecar, ar_sidecar, base)


def load_reader(av_dir: str | Path, ar_dir: str | Path, dtype: str = "auto") -> Pair:
    """A pair without a verbalizer: the AR of ``ar_dir`` reading what the AV of ``av_dir`` writes,
    with the AV's prompts (checked to agree as in ``load_pair``; the AV's weights are not loaded).
    Scores one AV's explanations with an AR it was not trained with."""
    av_sidecar, ar_sidecar = read_pair_sidecars(av_dir, ar_dir)
    tokenizer = load_tokenizer(ModelArgs(str(av_dir), dtype=dtype))
    prompts = prompts_from_sidecar(av_sidecar, tokenizer, Path(av_dir) / SIDECAR_FILENAME)
    reconstructor = Reconstructor.from_pretrained(ar_dir, dtype=dtype).eval()
    return _pair(None, reconstructor, prompts, av_sidecar, ar_sidecar)
