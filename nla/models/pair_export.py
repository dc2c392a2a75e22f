"""Writing a ``Pair`` as two HF directories in the layout of the released NLAs.

Layout of an export ``DIR``::

    DIR/av/  HF causal LM (safetensors), tokenizer, nla_meta.yaml (role av), README.md
             (or, for a LoRA AV exported unmerged, adapter_config.json + adapter_model.safetensors
             in place of the HF model: loading puts the adapter back on the sidecar's base_model)
    DIR/ar/  truncated HF model (K + 1 blocks), value_head.safetensors, tokenizer, nla_meta.yaml (role ar), README.md

Each side is written into a hidden staging directory beside it and renamed into place only once it
is complete, so a crash mid-export leaves the previous export readable. Exporting one side leaves the
other side's directory as it was.
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
from nla.core.files import honour_umask, make_staging_directory
from nla.core.finite import check_weights_finite
from nla.core.prompts import Prompts
from nla.models import adapters, lora
from nla.models.base_model import describe_base_model
from nla.models.card import CARD_FILENAME, model_card
from nla.models.pair import Pair
from nla.models.sidecar import PromptTemplates, Sidecar, SidecarExtraction, sidecar_tokens, write_sidecar


def pair_sidecar(role: str, *, prompts: Prompts, layer: int, d_model: int, injection_scale: float | None,
                 base_model: str, stage: str, training: dict) -> Sidecar:
    """The sidecar of one side of a pair; both sides share everything but ``role`` and the injection scale."""
    return Sidecar(
        role=role,
        d_model=d_model,
        extraction_layer_index=layer,
        extraction=SidecarExtraction(injection_scale=injection_scale, mse_scale=math.sqrt(d_model)),
        tokens=sidecar_tokens(prompts.marker, prompts.ar_suffix_ids()),
        prompt_templates=PromptTemplates(av=prompts.args.av_template, ar=prompts.args.ar_template),
        stage=stage,
        base_model=base_model,
        base_model_source=describe_base_model(base_model),
        training=copy.deepcopy(training),
    )


def export_pair(directory: str | Path, pair: Pair, *, stage: str, training: dict,
                merge_adapters: bool = True) -> dict[str, Path]:
    """Write ``directory/av`` and/or ``directory/ar`` of ``pair`` (a side the pair lacks is skipped and
    its directory left as it was).

    ``training`` is stored in both sidecars and summarised in the model cards. The cards,
    ``nla explain`` and ``nla evaluate`` read these keys when present (see
    ``nla.models.card.TRAINING_FIELDS``): ``corpus``, ``documents``, ``split_sizes``, ``teacher``,
    ``steps``, ``heldout_variance`` (the rawvar baseline of the held-out split) and ``figures`` (each
    held-out figure named for what it measures, ``nla.models.sidecar.figure``).
    A LoRA AV is merged into its weights, or with ``merge_adapters=False`` written as its adapter
    alone; a LoRA AR is always merged (the released AR layout has no adapter form).
    Returns ``{"av": path, "ar": path}`` for the sides written.
    """
    verbalizer, reconstructor, prompts = pair.verbalizer, pair.reconstructor, pair.prompts
    if verbalizer is None and reconstructor is None:
        raise ValueError("export_pair needs a pair with a verbalizer, a reconstructor or both")
    directory = Path(directory)
    check_weights_finite({"AV": verbalizer, "AR": reconstructor}, str(directory))
    common = dict(prompts=prompts, layer=pair.layer, base_model=pair.base_model, stage=stage, training=training)
    written: dict[str, Path] = {}
    if verbalizer is not None:
        d_model = adapters.hidden_size(verbalizer.model.config)
        sidecar = pair_sidecar("av", d_model=d_model, injection_scale=verbalizer.injection_scale, **common)

        def write_av(staging: Path) -> None:
            lora.save_model(verbalizer.model, staging, merge_adapters, pair.base_model)
            verbalizer.tokenizer.save_pretrained(staging)
            write_sidecar(sidecar, staging)
            (staging / CARD_FILENAME).write_text(model_card(sidecar), encoding="utf-8")

        written["av"] = replace_directory(directory / "av", write_av)
    if reconstructor is not None:
        if reconstructor.layer != pair.layer:
            raise ConfigError("layer", f"is {pair.layer} but the reconstructor reads layer {reconstructor.layer}")
        sidecar = pair_sidecar("ar", d_model=reconstructor.d_model, injection_scale=None, **common)

        def write_ar(staging: Path) -> None:
            with lora.merged_saves(reconstructor.model):
                reconstructor.save_pretrained(staging, sidecar, prompts.tokenizer)
            (staging / CARD_FILENAME).write_text(model_card(sidecar), encoding="utf-8")

        written["ar"] = replace_directory(directory / "ar", write_ar)
    return written


def replace_directory(final: Path, write: Callable[[Path], None]) -> Path:
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
