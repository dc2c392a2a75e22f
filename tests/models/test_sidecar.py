"""The nla_meta.yaml sidecar: round trips, the released layout, K fallbacks, and tokenizer validation."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import yaml
from transformers import AutoTokenizer

from nla.core.errors import ConfigError
from nla.core.marker import choose_marker
from nla.models.injection import InjectionSite
from nla.models.sidecar import (
    SIDECAR_FILENAME,
    SidecarExtraction,
    Sidecar,
    PromptTemplates,
    marker_from_sidecar,
    read_sidecar,
    sidecar_tokens,
    validate_sidecar,
    write_sidecar,
)
from tests.fixtures.tiny import MARKER_CHAR, NUM_LAYERS, build_tokenizer

AV_TEMPLATE = (
    "Here is a vector from inside a language model: <concept>{injection_char}</concept>. "
    "Describe what the model is thinking about, between <explanation> and </explanation>."
)
AR_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"


def make_meta(tokenizer, role: str = "av", **changes) -> Sidecar:
    meta = Sidecar(
        role=role,
        d_model=32,
        extraction_layer_index=2,
        extraction=SidecarExtraction(injection_scale=150.0, mse_scale=math.sqrt(32)),
        tokens=sidecar_tokens(choose_marker(tokenizer), critic_suffix_ids=[5, 6]),
        prompt_templates=PromptTemplates(av=AV_TEMPLATE, ar=AR_TEMPLATE),
        stage="sft",
        base_model="tiny/llama",
        training={"step": 100, "lr": 1e-5},
    )
    return dataclasses.replace(meta, **changes)


def released_sidecar(tokenizer) -> dict:
    """A sidecar in the released NLAs' older layout, written by hand."""
    ids = tokenizer.encode(f"<concept>{MARKER_CHAR}</concept>", add_special_tokens=False)
    at = ids.index(tokenizer.encode(MARKER_CHAR, add_special_tokens=False)[0])
    return {
        "kind": "nla_model",
        "role": "critic",
        "stage": "rl",
        "d_model": 32,
        "extraction": {"injection_scale": 80000, "mse_scale": "sqrt_d_model"},
        "critic": {"num_hidden_layers": 3, "value_head": "value_head.safetensors"},
        "tokens": {
            "injection_char": MARKER_CHAR,
            "injection_token_id": ids[at],
            "injection_left_neighbor_id": ids[at - 1],
            "injection_right_neighbor_id": ids[at + 1],
            "critic_suffix_ids": [7, 8, 9],
        },
        "prompt_templates": {"actor": AV_TEMPLATE, "critic": AR_TEMPLATE},
        "run": {"wandb": "nla/abc123", "commit": "deadbeef"},
    }


def write_yaml(directory, data: dict):
    (directory / SIDECAR_FILENAME).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return directory


def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path, tiny_tokenizer):
    meta = make_meta(tiny_tokenizer, extra={"provenance": {"host": "h100"}, "tokens": {"future_field": 3}})
    path = write_sidecar(meta, tmp_path / "av")
    assert [p.name for p in path.parent.iterdir()] == [SIDECAR_FILENAME]
    assert read_sidecar(path.parent) == meta
    assert read_sidecar(path) == meta
    on_disk = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert on_disk["tokens"]["future_field"] == 3 and on_disk["provenance"] == {"host": "h100"}
    assert on_disk["tokens"]["injection_char"] == MARKER_CHAR and on_disk["kind"] == "nla_model"


def test_failed_write_leaves_the_previous_sidecar_intact(tmp_path, tiny_tokenizer):
    meta = make_meta(tiny_tokenizer)
    path = write_sidecar(meta, tmp_path)
    before = path.read_bytes()
    with pytest.raises(yaml.YAMLError):
        write_sidecar(make_meta(tiny_tokenizer, training={"callback": object()}), tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [SIDECAR_FILENAME]


def test_released_layout_loads_with_roles_and_k_mapped(tmp_path, tiny_tokenizer):
    meta = read_sidecar(write_yaml(tmp_path, released_sidecar(tiny_tokenizer)))
    assert meta.role == "ar"
    assert meta.extraction_layer_index == 2
    assert meta.prompt_templates == PromptTemplates(av=AV_TEMPLATE, ar=AR_TEMPLATE)
    assert meta.extraction == SidecarExtraction(injection_scale=80000.0, mse_scale=math.sqrt(32))
    assert meta.tokens.critic_suffix_ids == [7, 8, 9]
    assert meta.tokens.marker_rule == "cjk-range"
    assert meta.stage == "rl" and meta.base_model is None
    assert meta.extra == {
        "critic": {"num_hidden_layers": 3, "value_head": "value_head.safetensors"},
        "run": {"wandb": "nla/abc123", "commit": "deadbeef"},
    }
    assert marker_from_sidecar(meta) == choose_marker(tiny_tokenizer)
    validate_sidecar(meta, tiny_tokenizer)
    # Written back in our layout and read again, nothing changes.
    assert read_sidecar(write_sidecar(meta, tmp_path / "again")) == meta


@pytest.mark.parametrize(
    "where, expected",
    [
        ({"extraction_layer_index": 5}, 5),
        ({"extraction": {"injection_scale": 1.0, "extraction_layer_index": 6}}, 6),
        ({"critic": {"extraction_layer_index": 7, "num_hidden_layers": 30}}, 7),
        ({"ar": {"num_hidden_layers": 9}}, 8),
    ],
)
def test_k_is_found_wherever_released_sidecars_put_it(tmp_path, tiny_tokenizer, where, expected):
    raw = released_sidecar(tiny_tokenizer)
    del raw["critic"]
    raw["role"] = "actor"
    for key, section in where.items():
        raw[key] = {**raw.get(key, {}), **section} if isinstance(section, dict) else section
    meta = read_sidecar(write_yaml(tmp_path, raw))
    assert meta.role == "av" and meta.extraction_layer_index == expected


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_ar_k_and_d_model_fall_back_to_config_json(tmp_path, tiny_model_dir, tiny_tokenizer, family):
    shutil.copy(tiny_model_dir(family) / "config.json", tmp_path / "config.json")
    config = json.loads((tmp_path / "config.json").read_text())
    assert ("text_config" in config) == (family == "gemma3")
    raw = released_sidecar(tiny_tokenizer)
    del raw["critic"], raw["d_model"]
    meta = read_sidecar(write_yaml(tmp_path, raw))
    assert meta.extraction_layer_index == NUM_LAYERS - 1
    assert meta.d_model == 32 and meta.extraction.mse_scale == math.sqrt(32)


def test_av_without_k_is_an_error_even_beside_a_config(tmp_path, tiny_model_dir, tiny_tokenizer):
    shutil.copy(tiny_model_dir("llama") / "config.json", tmp_path / "config.json")
    raw = released_sidecar(tiny_tokenizer)
    del raw["critic"]
    raw["role"] = "av"
    with pytest.raises(ConfigError) as caught:
        read_sidecar(write_yaml(tmp_path, raw))
    assert caught.value.field == "extraction_layer_index" and str(tmp_path) in str(caught.value)


@pytest.mark.parametrize(
    "section, key, field",
    [
        ("tokens", "injection_token_id", "tokens.injection_token_id"),
        ("tokens", "injection_char", "tokens.injection_char"),
        (None, "role", "role"),
        (None, "d_model", "d_model"),
    ],
)
def test_missing_required_field_names_field_and_file(tmp_path, tiny_tokenizer, section, key, field):
    raw = released_sidecar(tiny_tokenizer)
    del (raw[section] if section else raw)[key]
    with pytest.raises(ConfigError) as caught:
        read_sidecar(write_yaml(tmp_path, raw))
    assert caught.value.field == field
    assert str(tmp_path / SIDECAR_FILENAME) in str(caught.value) and "\n" not in str(caught.value)


def test_other_sidecars_and_bad_values_are_rejected(tmp_path, tiny_tokenizer):
    raw = released_sidecar(tiny_tokenizer)
    with pytest.raises(ConfigError, match=r"^kind: .*nla_dataset"):
        read_sidecar(write_yaml(tmp_path, {**raw, "kind": "nla_dataset"}))
    with pytest.raises(ConfigError, match=r"^role: .*'judge'"):
        read_sidecar(write_yaml(tmp_path, {**raw, "role": "judge"}))
    with pytest.raises(ConfigError, match=r"^d_model: .*'wide'"):
        read_sidecar(write_yaml(tmp_path, {**raw, "d_model": "wide"}))
    with pytest.raises(ConfigError, match=r"^extraction\.injection_scale: missing"):
        read_sidecar(write_yaml(tmp_path, {**raw, "role": "actor", "extraction": {}}))
    bad_suffix = {**raw, "tokens": {**raw["tokens"], "critic_suffix_ids": "7 8"}}
    with pytest.raises(ConfigError, match=r"^tokens\.critic_suffix_ids: .*list of token ids"):
        read_sidecar(write_yaml(tmp_path, bad_suffix))
    with pytest.raises(ConfigError, match=r"^nla_meta\.yaml: not found"):
        read_sidecar(tmp_path / "elsewhere")


def test_marker_and_token_meta_convert_both_ways(tiny_tokenizer):
    marker = choose_marker(tiny_tokenizer)
    tokens = sidecar_tokens(marker, [1, 2])
    assert tokens.critic_suffix_ids == [1, 2] and tokens.marker_rule == "cjk-range"
    assert marker_from_sidecar(make_meta(tiny_tokenizer, tokens=tokens)) == marker


def test_validation_accepts_matching_sidecars(tiny_tokenizer, smollm2_dir):
    validate_sidecar(make_meta(tiny_tokenizer), tiny_tokenizer)
    literal = PromptTemplates(AV_TEMPLATE.format(injection_char=MARKER_CHAR), AR_TEMPLATE)
    validate_sidecar(make_meta(tiny_tokenizer, prompt_templates=literal), tiny_tokenizer)
    smollm2 = AutoTokenizer.from_pretrained(smollm2_dir)
    validate_sidecar(make_meta(smollm2), smollm2)


@pytest.mark.parametrize(
    "field", ["injection_left_neighbor_id", "injection_right_neighbor_id", "injection_token_id"]
)
def test_validation_names_the_drifted_token_field(tiny_tokenizer, field):
    meta = make_meta(tiny_tokenizer)
    drifted = dataclasses.replace(meta.tokens, **{field: getattr(meta.tokens, field) + 1})
    meta = dataclasses.replace(meta, tokens=drifted)
    with pytest.raises(ConfigError) as caught:
        validate_sidecar(meta, tiny_tokenizer, field_prefix="av.meta")
    assert caught.value.field == f"av.meta.tokens.{field}"
    assert "\n" not in str(caught.value)


def test_validation_rejects_another_tokenizer_and_broken_templates(tiny_tokenizer):
    meta = make_meta(tiny_tokenizer)
    with pytest.raises(ConfigError, match=r"^meta\.tokens\.injection_char: .* is 3 tokens"):
        validate_sidecar(meta, build_tokenizer(with_cjk_marker=False))
    cases = [
        (PromptTemplates(AV_TEMPLATE, ""), r"^meta\.prompt_templates\.ar: is missing"),
        (PromptTemplates("Describe the vector.", AR_TEMPLATE), r"^meta\.prompt_templates\.av: holds neither"),
        (PromptTemplates(AV_TEMPLATE + " {other}", AR_TEMPLATE), r"^meta\.prompt_templates\.av: cannot fill"),
        (PromptTemplates(AV_TEMPLATE * 2, AR_TEMPLATE), r"^meta\.prompt_templates\.av: holds 2 marker slots"),
    ]
    for templates, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            validate_sidecar(dataclasses.replace(meta, prompt_templates=templates), tiny_tokenizer)


def test_the_injection_site_is_recorded_and_defaults_to_replacing_the_embedding(tmp_path, tiny_tokenizer):
    released = read_sidecar(write_yaml(tmp_path, {**released_sidecar(tiny_tokenizer), "role": "actor"}))
    assert released.extraction.site == InjectionSite("replace", None, "fixed")
    assert released.layers == [] and released.warm_start_adapter is None
    # Our default sidecar writes the site and none of the per-layer or stacked-adapter fields.
    on_disk = yaml.safe_load(write_sidecar(make_meta(tiny_tokenizer), tmp_path / "plain").read_text(encoding="utf-8"))
    assert on_disk["extraction"]["injection_mode"] == "replace" and on_disk["extraction"]["injection_layer"] is None
    assert "layers" not in on_disk and "warm_start_adapter" not in on_disk
    added = make_meta(tiny_tokenizer, extraction=SidecarExtraction(None, math.sqrt(32), "add", 1, "matched"),
                      layers=[1, 2], warm_start_adapter="sft_adapter")
    assert read_sidecar(write_sidecar(added, tmp_path / "added")) == added
    assert added.extraction.site == InjectionSite("add", 1, "matched")


@pytest.mark.parametrize("extraction, pattern", [
    ({"injection_mode": "insert"}, r"^extraction\.injection_mode: is 'insert' in .*; expected one of replace, add"),
    ({"injection_norm": "unit"}, r"^extraction\.injection_norm: is 'unit' in .*; expected one of fixed, matched"),
    ({"injection_layer": -1}, r"^extraction\.injection_layer: is -1 in .*; expected a block index"),
    ({"injection_norm": "fixed", "injection_scale": None}, r"^extraction\.injection_scale: missing from"),
])
def test_a_wrong_injection_site_is_one_line(tmp_path, tiny_tokenizer, extraction, pattern):
    raw = {**released_sidecar(tiny_tokenizer), "role": "actor"}
    raw["extraction"] = {key: value for key, value in {**raw["extraction"], **extraction}.items() if value is not None}
    with pytest.raises(ConfigError, match=pattern) as caught:
        read_sidecar(write_yaml(tmp_path, raw))
    assert str(tmp_path / SIDECAR_FILENAME) in str(caught.value) and "\n" not in str(caught.value)
