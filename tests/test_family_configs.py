"""Every shipped family's cache, SFT and GRPO configs run one step on a scaled-down model of that family.

The tiny model is built from the family's real architecture numbers (``nla.commands.plan.architectures``:
the same model class, tied or untied head, head dim, bias, rope and Gemma-3's multimodal wrapper) with
the sizes scaled down, and saved with the fixtures' tokenizer. Only the model path, sizes, devices
and strategy (CPU, one process), directories and the teacher server's address (a loopback fake of an
OpenAI-compatible server) are overridden; everything else -- precision, LoRA, optimizer, learning
rates, G, KL, the prompts -- is the shipped config's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from nla.commands.cli import main
from nla.commands.config_files import read_config
from nla.commands.plan.architectures import ARCHITECTURES
from tests.fixtures.corpus import write_corpus
from tests.fixtures.tiny import build_tokenizer
from tests.fixtures.paths import ROOT

CONFIGS = ROOT / "configs"
FAMILIES = sorted(p.name for p in CONFIGS.iterdir() if (p / "cache.yaml").is_file() and (p / "grpo.yaml").is_file()
                  and p.name not in ("smollm2",))
LAYERS = 4

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def scaled(numbers: dict, tokenizer) -> dict:
    """The family's config numbers with every size scaled down; ratios and quirks kept."""
    text = numbers.get("text_config", numbers)
    heads, kv = text["num_attention_heads"], text.get("num_key_value_heads", text["num_attention_heads"])
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
             # Room above the tokenizer, as real checkpoints have: loading it with a family's tokenizer
             # class may add a token (Qwen2 adds one to the fixtures' 512).
             "num_key_value_heads": max(1, 4 * kv // heads), "vocab_size": len(tokenizer) + 8}
    if "head_dim" in text:
        small["head_dim"] = 8 * text["head_dim"] // 128 if text["head_dim"] > 128 else 8
    if "sliding_window" in text:
        small["sliding_window"] = 16
    if "query_pre_attn_scalar" in text:
        small["query_pre_attn_scalar"] = 8
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if "text_config" not in numbers:
        return {**numbers, **small, **ids}
    vision = {**numbers["vision_config"], "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    return {**numbers, "text_config": {**text, **small}, "vision_config": vision, "mm_tokens_per_image": 4,
            "image_token_index": tokenizer.convert_tokens_to_ids("<image>"), **ids}


def tiny_family_model(hub_id: str, directory: Path) -> int:
    """Save a random tiny model of ``hub_id``'s family; returns the number of blocks of the real one."""
    tokenizer = build_tokenizer()
    numbers = copy.deepcopy(ARCHITECTURES[hub_id])
    model_type = numbers.pop("model_type")
    config = AutoConfig.for_model(model_type, **scaled(numbers, tokenizer))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return (ARCHITECTURES[hub_id].get("text_config") or ARCHITECTURES[hub_id])["num_hidden_layers"]


def shipped(family: str, stage: str) -> dict:
    """The shipped config with its data block read in (``source: data.yaml``)."""
    return read_config(CONFIGS / family / f"{stage}.yaml")


def shrink_data(source: dict, root: Path, model_dir: Path, layer: int) -> None:
    source["target"]["name_or_path"] = str(model_dir)
    source["corpus"].update(path=str(root / "docs.jsonl"), max_length=64, min_position=8)
    source["cache"].update(directory=str(root / "cache"), layer=layer, positions_per_document=1, shard_documents=64)


def shrink_fit(config: dict, root: Path, stage: str, model_dir: Path, layer: int, teacher_url: str) -> Path:
    trainer = config["trainer"]
    for key in ("strategy", "num_nodes", "accumulate_grad_batches"):
        trainer.pop(key, None)
    trainer.update(accelerator="cpu", devices=1, max_steps=1, default_root_dir=str(root / stage),
                   enable_progress_bar=False, callbacks=None, logger=False)
    if "precision" in trainer and trainer["precision"] == "32-true":
        trainer.pop("precision")  # the FSDP configs' value; the strategy it went with is gone
    data = config["data"]["init_args"]
    shrink_data(data["source"], root, model_dir, layer)
    data["source"]["teacher"].update(base_url=teacher_url, cache_dir=str(root / "teacher"))
    data.update(batch_size=2 if stage == "sft" else 1, eval_batch_size=2, num_workers=0, pin_memory=False,
                progress=False)
    model = config["model"]["init_args"]
    if stage == "sft":
        trainer.update(val_check_interval=1, limit_val_batches=1)
        model.update(max_new_tokens=8, export_dir=str(root / "sft-export"))
    else:
        model.update(sft_export=str(root / "sft-export"), best_export_dir=None, export_dir=str(root / "grpo-export"),
                     eval_max_batches=1)
        model["rollout"].update(max_new_tokens=8, micro_batch_size=8)
    path = root / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_of_the_family_runs_one_step_on_a_tiny_model_of_that_family(family, tmp_path, fake_api):
    cache_config = shipped(family, "cache")
    hub_id = cache_config["source"]["target"]["name_or_path"]
    model_dir = tmp_path / "model"
    blocks = tiny_family_model(hub_id, model_dir)
    # K keeps its place in the depth: the released layer at two thirds stays at two thirds.
    layer = min(LAYERS - 1, round(cache_config["source"]["cache"]["layer"] * LAYERS / blocks))
    write_corpus(tmp_path, documents=48)

    shrink_data(cache_config["source"], tmp_path, model_dir, layer)
    (tmp_path / "cache.yaml").write_text(yaml.safe_dump(cache_config))
    main(["cache", "--config", str(tmp_path / "cache.yaml")])
    assert (tmp_path / "cache" / "meta.json").is_file()

    sft, grpo = shipped(family, "sft"), shipped(family, "grpo")
    assert sft["data"]["init_args"]["source"]["teacher"]["provider"] in ("openai", "anthropic")
    for stage, config in (("sft", sft), ("grpo", grpo)):
        main(["fit", "--config", str(shrink_fit(config, tmp_path, stage, model_dir, layer, fake_api.base_url))])
    assert fake_api.calls, "the SFT stage asked the configured teacher for its summaries"
    assert (tmp_path / "sft-export" / "av" / "nla_meta.yaml").is_file()
    assert (tmp_path / "grpo-export" / "ar" / "value_head.safetensors").is_file()
