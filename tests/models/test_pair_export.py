"""Exporting an NLA pair, loading it back (and a released-layout pair), model cards, atomic replacement."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from nla.core.errors import ConfigError
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.pair import Pair
from nla.models.pair_export import export_pair
from nla.models.pair_loading import load_pair, load_verbalizer
from nla.models.reconstructor import VALUE_HEAD_FILENAME, Reconstructor
from nla.models.sidecar import SIDECAR_FILENAME, read_sidecar, sidecar_tokens, validate_sidecar
from nla.models.verbalizer import Verbalizer
from tests.fixtures.pairs import LAYER, RELEASED_AR, RELEASED_AV, SCALE, TRAINING, build_pair, export, write_released_pair
from tests.fixtures.tiny import MARKER_CHAR

EXPLANATION = "The text is a recipe; the next word is likely a quantity of flour."


def av_batch(prompts, d: int):
    ids, labels = prompts.av_example(EXPLANATION)
    vectors = torch.randn(1, d, generator=torch.Generator().manual_seed(3))
    return torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), vectors, torch.tensor([labels])


def ar_batch(prompts):
    rows = [prompts.ar_ids(EXPLANATION), prompts.ar_ids("Rivers bend around old stones.")]
    width = max(map(len, rows))
    ids = torch.full((2, width), prompts.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


@torch.no_grad()
def outputs(pair: Pair):
    ids, mask, vectors, labels = av_batch(pair.prompts, pair.d_model)
    with pair.verbalizer.keeping_vectors():
        out = pair.verbalizer(ids, mask, vectors, labels)
    assert pair.verbalizer.injection_stats.injected_rows == 1
    return out.logits, out.loss, pair.reconstructor(*ar_batch(pair.prompts))


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_export_then_load_pair_gives_identical_outputs(tmp_path, tiny_model_dir, family):
    source = tiny_model_dir(family)
    pair = build_pair(source)
    prompts = pair.prompts
    before = outputs(pair)
    paths = export(tmp_path / "nla", pair)
    assert paths == {"av": tmp_path / "nla" / "av", "ar": tmp_path / "nla" / "ar"}

    loaded = load_pair(paths["av"], paths["ar"], dtype="float32")
    assert loaded.prompts.marker == prompts.marker and loaded.prompts.av_prompt_ids == prompts.av_prompt_ids
    assert loaded.prompts.ar_ids(EXPLANATION) == prompts.ar_ids(EXPLANATION)
    assert loaded.verbalizer.injection_scale == SCALE and loaded.reconstructor.layer == LAYER == loaded.layer
    assert loaded.base_model == str(source) and set(loaded.sidecars) == {"av", "ar"}
    after = outputs(loaded)
    for old, new in zip(before, after):
        torch.testing.assert_close(new, old, rtol=0, atol=0)
    # The export holds the nudged weights, not the source directory's.
    original = Verbalizer(load_causal_lm(ModelArgs(str(source), dtype="float32")).eval(),
                          prompts.tokenizer, prompts.marker, SCALE)
    assert not torch.equal(outputs(Pair(original, loaded.reconstructor, loaded.prompts, LAYER))[0], after[0])


def test_sidecars_and_cards_record_the_pair(tmp_path, tiny_model_dir):
    pair = build_pair(tiny_model_dir("llama"))
    prompts = pair.prompts
    pair.base_model = "tiny/llama-base"
    paths = export(tmp_path, pair)
    for role, path in paths.items():
        meta = read_sidecar(path)
        validate_sidecar(meta, load_tokenizer(ModelArgs(str(path))))
        assert (meta.kind, meta.role, meta.stage, meta.base_model) == ("nla_model", role, "sft", "tiny/llama-base")
        assert (meta.d_model, meta.extraction_layer_index) == (32, LAYER)
        assert meta.extraction.mse_scale == pytest.approx(math.sqrt(32))
        assert meta.extraction.injection_scale == (SCALE if role == "av" else None)
        assert meta.tokens == sidecar_tokens(prompts.marker, prompts.ar_suffix_ids())
        assert meta.tokens.critic_suffix_ids and meta.tokens.critic_suffix_ids == prompts.ar_suffix_ids()
        assert (meta.prompt_templates.av, meta.prompt_templates.ar) == (prompts.args.av_template,
                                                                       prompts.args.ar_template)
        assert meta.training == TRAINING
        card = (path / "README.md").read_text(encoding="utf-8")
        front = yaml.safe_load(card.split("---")[1])
        assert front["base_model"] == "tiny/llama-base" and "nla" in front["tags"]
        assert "tiny/llama-base" in card and f"layer {LAYER}" in card and "| d_model | 32 |" in card
        assert "round trip (AV -> AR): FVE 0.3125 on 8 held-out rows from 3 documents, step 12; greedy decoding, " \
               "at most 48 new tokens, valid answers 0.8750; no interval" in card
        assert "rawvar" in card and "our-own-words.jsonl" in card
        assert "av_sft 20, ar_sft 20, heldout 8" in card and "inherit the base model's license" in card
    assert list((paths["av"]).glob("*.safetensors")) and (paths["ar"] / VALUE_HEAD_FILENAME).is_file()
    assert json.loads((paths["ar"] / "config.json").read_text())["num_hidden_layers"] == LAYER + 1
    assert json.loads((paths["ar"] / "tokenizer_config.json").read_text())["padding_side"] == "right"


def test_generation_settings_come_from_the_recorded_round_trip():
    from nla.models.sidecar import figure, generation_settings

    assert generation_settings(TRAINING) == {"max_new_tokens": 48, "decoding": "greedy"}
    assert generation_settings({}) is None and generation_settings({"figures": {"ar_on_teacher_text": {}}}) is None
    recorded = figure("round_trip", fve=0.5, mse=0.25, rows=8, documents=2, variance=0.5, step=3, max_new_tokens=96,
                      decoding="greedy")
    assert generation_settings({"figures": {"round_trip": recorded}}) == {"max_new_tokens": 96, "decoding": "greedy"}
    assert recorded["what"].startswith("the AV explaining held-out vectors") and recorded["interval"] is None
    with pytest.raises(ValueError, match="unknown figure"):
        figure("heldout_fve", fve=0.5, mse=0.25, rows=8, documents=2, variance=0.5, step=3)


def test_a_card_never_passes_an_unnamed_figure_for_the_round_trip():
    from nla.models.card import figure_lines

    lines = figure_lines({"heldout_fve": 0.891, "figures": {"ar_on_teacher_text": {
        "what": "the AR reading the teacher's text", "fve": 0.891, "rows": 64, "documents": 12, "step": 300}}})
    assert lines[0] == "- round trip (AV -> AR): not recorded (`nla evaluate` measures it)"
    assert lines[1].startswith("- AR on teacher text: FVE 0.8910 on 64 held-out rows from 12 documents, step 300")
    assert lines[2] == "- held-out FVE (what it measures not recorded): 0.8910"


def test_released_layout_pair_loads(tmp_path, tiny_model_dir):
    av_dir, ar_dir = write_released_pair(tmp_path, tiny_model_dir("llama"))
    pair = load_pair(av_dir, ar_dir, dtype="float32")
    prompts = pair.prompts
    assert pair.verbalizer.injection_scale == 30.0 and pair.reconstructor.layer == LAYER and pair.d_model == 32
    assert prompts.av_content == RELEASED_AV and prompts.ar_prompt("E") == RELEASED_AR.format(explanation="E")
    assert prompts.marker.char == MARKER_CHAR and prompts.marker.rule == "cjk-range"
    logits, _, predicted = outputs(pair)
    assert torch.isfinite(logits).all() and predicted.shape == (2, 32)
    alone, alone_prompts = load_verbalizer(av_dir, dtype="float32")
    assert alone_prompts.av_prompt_ids == prompts.av_prompt_ids and alone.injection_scale == 30.0


def test_pairs_that_disagree_or_drift_are_config_errors(tmp_path, tiny_model_dir):
    source = tiny_model_dir("llama")
    pair = build_pair(source)
    good = export(tmp_path / "a", pair)
    shallow = Reconstructor.from_target(ModelArgs(str(source), dtype="float32"), 1)
    other = export(tmp_path / "b", Pair(None, shallow, pair.prompts, 1, base_model=str(source)), training={})
    with pytest.raises(ConfigError) as caught:
        load_pair(good["av"], other["ar"])
    assert caught.value.field == "extraction_layer_index" and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^av: .*holds role 'ar'"):
        load_pair(good["ar"], good["av"])
    with pytest.raises(ConfigError, match=r"^av: directory .* does not exist"):
        load_pair(tmp_path / "missing", good["ar"])
    # A tokenizer whose ids no longer match the sidecar's: the drifted field is named.
    raw = yaml.safe_load((good["av"] / SIDECAR_FILENAME).read_text(encoding="utf-8"))
    raw["tokens"]["critic_suffix_ids"] = [1, 2, 3]
    (good["av"] / SIDECAR_FILENAME).write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^tokens\.critic_suffix_ids: is \[1, 2, 3\]"):
        load_verbalizer(good["av"])


def test_reexport_replaces_atomically_and_keeps_the_other_side(tmp_path, tiny_model_dir, monkeypatch):
    pair = build_pair(tiny_model_dir("llama"))
    reconstructor = pair.reconstructor
    paths = export(tmp_path, pair)
    first_head = reconstructor.head.weight.detach().clone()
    with torch.no_grad():
        reconstructor.head.weight.mul_(2.0)
    export(tmp_path, pair)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar", "av"]
    torch.testing.assert_close(Reconstructor.from_pretrained(paths["ar"]).head.weight, 2 * first_head)

    # A failure while writing leaves the previous export whole and no staging directory behind.
    def broken_card(meta):
        raise RuntimeError("disk trouble")

    monkeypatch.setattr("nla.models.pair_export.model_card", broken_card)
    with torch.no_grad():
        reconstructor.head.weight.mul_(2.0)
    ar_only = Pair(None, reconstructor, pair.prompts, LAYER, base_model=pair.base_model)
    with pytest.raises(RuntimeError, match="disk trouble"):
        export(tmp_path, ar_only)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar", "av"]
    torch.testing.assert_close(Reconstructor.from_pretrained(paths["ar"]).head.weight, 2 * first_head)
    monkeypatch.undo()

    # Exporting only the AR leaves the AV directory untouched.
    av_files = {p.name: p.stat().st_mtime_ns for p in paths["av"].iterdir()}
    export_pair(tmp_path, ar_only, stage="grpo", training=TRAINING)
    assert {p.name: p.stat().st_mtime_ns for p in paths["av"].iterdir()} == av_files
    assert read_sidecar(paths["ar"]).stage == "grpo" and read_sidecar(paths["av"]).stage == "sft"
    torch.testing.assert_close(Reconstructor.from_pretrained(paths["ar"]).head.weight, 4 * first_head)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar", "av"]
