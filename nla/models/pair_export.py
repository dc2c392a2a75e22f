"""Writing a ``Pair`` as two HF directories in the layout of the released NLAs.

Layout of an export ``DIR``::

    DIR/av/  HF causal LM (safetensors), tokenizer, nla_meta.yaml (role av), README.md
             (or, for a LoRA AV exported unmerged, adapter_config.json + adapter_model.safetensors
             in place of the HF model: loading puts the adapter back on the sidecar's base_model)
    DIR/ar/  truncated HF model (K + 1 blocks), value_head.safetensors, tokenizer, nla_meta.yaml (role ar), README.md

The pair is one unit: both sides are written into a hidden staging directory beside ``DIR`` and swapped
in for ``DIR`` in one step (``nla.core.files.swap_into_place``), so a crash or a kill at any moment
leaves the previous pair or the new one, never the new AV beside the old AR. Exporting one side
carries the other side's files over unchanged (hard links: no copy). ``DIR`` is replaced only when it
is absent, empty, or an earlier export: never a folder of someone's own files.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from nla.core.errors import ConfigError, NLAError
from nla.core.files import check_replaceable, honour_umask, make_staging_directory, swap_into_place
from nla.core.finite import check_weights_finite
from nla.core.prompts import Prompts
from nla.models import adapters, lora
from nla.models.base_model import describe_base_model
from nla.models.card import CARD_FILENAME, model_card
from nla.models.injection import InjectionSite
from nla.models.pair import Pair
from nla.models.sidecar import (SIDECAR_FILENAME, PromptTemplates, Sidecar, SidecarExtraction, sidecar_tokens,
                                write_sidecar)

SIDES = ("av", "ar")

def pair_sidecar(role: str, *, prompts: Prompts, layer: int, d_model: int, injection_scale: float | None,
                 base_model: str, base_fingerprint: str | None, stage: str, training: dict,
                 site: InjectionSite = InjectionSite()) -> Sidecar:
    """The sidecar of one side of a pair; both sides share everything but ``role`` and the injection
    (scale and site: the AV's, as it runs; an AR sidecar records the default site and no scale)."""
    return Sidecar(
        role=role,
        d_model=d_model,
        extraction_layer_index=layer,
        extraction=SidecarExtraction(injection_scale=injection_scale, mse_scale=math.sqrt(d_model),
                                     injection_mode=site.mode, injection_layer=site.layer, injection_norm=site.norm),
        tokens=sidecar_tokens(prompts.marker, prompts.ar_suffix_ids()),
        prompt_templates=PromptTemplates(av=prompts.args.av_template, ar=prompts.args.ar_template),
        stage=stage,
        base_model=base_model,
        base_model_source=describe_base_model(base_model),
        base_model_fingerprint=base_fingerprint,
        training=copy.deepcopy(training),
    )


def is_export(directory: Path) -> bool:
    """Whether ``directory`` holds an export and nothing else: ``av/`` and/or ``ar/`` with their
    sidecars (what ``export_pair`` may replace)."""
    entries = [entry for entry in os.listdir(directory) if not entry.startswith(".")]
    return bool(entries) and all(name in SIDES and (directory / name / SIDECAR_FILENAME).is_file() for name in entries)


def check_export_directory(directory: str | Path, field: str) -> None:
    """One line naming ``field`` unless ``directory`` may receive an export (absent, empty, an export)."""
    check_replaceable(Path(directory), field, is_export, "an nla export (av/, ar/)")


def export_pair(directory: str | Path, pair: Pair, *, stage: str, training: dict, merge_adapters: bool = True,
                field: str = "output") -> dict[str, Path]:
    """Write ``directory/av`` and/or ``directory/ar`` of ``pair``, replacing an earlier export there as
    one unit (a side the pair lacks is carried over from it unchanged).

    ``training`` is stored in both sidecars and summarised in the model cards. The cards,
    ``nla explain`` and ``nla evaluate`` read these keys when present (see
    ``nla.models.card.TRAINING_FIELDS``): ``corpus``, ``documents``, ``split_sizes``, ``teacher``,
    ``steps``, ``heldout_variance`` (the rawvar baseline of the held-out split) and ``figures`` (each
    held-out figure named for what it measures, ``nla.models.sidecar.figure``).
    A LoRA AV is merged into its weights, or with ``merge_adapters=False`` written as its adapter
    alone; a LoRA AR is always merged (the released AR layout has no adapter form). A ``directory``
    holding anything but an export is refused in one line naming ``field``.
    Returns ``{"av": path, "ar": path}`` for the sides written.
    """
    verbalizer, reconstructor, prompts = pair.verbalizer, pair.reconstructor, pair.prompts
    if verbalizer is None and reconstructor is None:
        raise ValueError("export_pair needs a pair with a verbalizer, a reconstructor or both")
    directory = Path(directory)
    check_export_directory(directory, field)
    check_weights_finite({"AV": verbalizer, "AR": reconstructor}, str(directory))
    if reconstructor is not None and reconstructor.layer != pair.layer:
        raise ConfigError("layer", f"is {pair.layer} but the reconstructor reads layer {reconstructor.layer}")
    common = dict(prompts=prompts, layer=pair.layer, base_model=pair.base_model,
                  base_fingerprint=pair.base_fingerprint, stage=stage, training=training)

    def write(staging: Path) -> None:
        if verbalizer is not None:
            d_model = adapters.hidden_size(verbalizer.model.config)
            sidecar = pair_sidecar("av", d_model=d_model, injection_scale=verbalizer.injection_scale,
                                   site=verbalizer.site, **common)
            lora.save_model(verbalizer.model, staging / "av", merge_adapters, pair.base_model)
            verbalizer.tokenizer.save_pretrained(staging / "av")
            write_sidecar(sidecar, staging / "av")
            (staging / "av" / CARD_FILENAME).write_text(model_card(sidecar), encoding="utf-8")
        if reconstructor is not None:
            sidecar = pair_sidecar("ar", d_model=reconstructor.d_model, injection_scale=None, **common)
            with lora.merged_saves(reconstructor.model):
                reconstructor.save_pretrained(staging / "ar", sidecar, prompts.tokenizer)
            (staging / "ar" / CARD_FILENAME).write_text(model_card(sidecar), encoding="utf-8")
        for side in SIDES:
            if not (staging / side).exists() and (directory / side).is_dir():
                shutil.copytree(directory / side, staging / side, copy_function=_link_or_copy)

    replace_directory(directory, write)
    written = {"av": verbalizer, "ar": reconstructor}
    return {side: directory / side for side, model in written.items() if model is not None}


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the filesystem allows (no second copy of the weights), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def replace_directory(final: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a fresh staging directory beside ``final``, then swap it in for ``final``."""
    final = Path(os.path.abspath(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    # Staging directories of an export that crashed are incomplete (or retired) by construction.
    for stale in final.parent.glob(f".{final.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = make_staging_directory(final.parent, f".{final.name}.staging-")
    try:
        write(staging)
        honour_umask(staging)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if _disk_full(error):
            raise NLAError(f"disk full while exporting to {final}; nothing there changed; free space on "
                           f"{final.parent} and export again") from error
        raise
    swap_into_place(staging, final)
    return final


def _disk_full(error: BaseException) -> bool:
    """ENOSPC, from Python's own writes or from safetensors' (a ``SafetensorError`` carrying the OS text)."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return type(error).__name__ == "SafetensorError" and os.strerror(errno.ENOSPC) in str(error)
