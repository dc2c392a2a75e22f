"""Each layout published NLAs come in (``tests.fixtures.released_layouts``) loads with ``load_pair`` and
computes what a forward written out by hand over the same files computes: the AV's logits at the first
generated position and its greedy answer, with the vector injected as the release says, and the AR's
reading of texts and of the AV's own answers. A missing or damaged piece is one line naming the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nla.core.errors import ConfigError, NLAError
from nla.models.pair_loading import load_pair, load_verbalizer, read_pair_sidecars
from tests.fixtures.pairs import LAYER, RELEASED_AR, RELEASED_AV
from tests.fixtures.reference_forward import Weights, greedy, logits, lora_from_tensors, peft_lora, rescaled, residual
from tests.fixtures.released_layouts import (CLUSTER_BASE, PER_LAYER_AR, PER_LAYER_AV, PER_LAYER_NORM, PER_LAYERS,
                                             write_easynla_release, write_lora_ar_release, write_per_layer_release,
                                             write_reference_release)
from tests.fixtures.tiny import MARKER_CHAR

pytestmark = pytest.mark.usefixtures("one_thread")

VECTORS = 6.0 * torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
TEXTS = ["Rivers bend around old stones.", "The sailor counts the waves before the storm arrives at night."]
STEPS = 6
# Two float32 implementations of the same sums (sdpa against a written-out softmax, merged against
# unmerged LoRA updates) differ by at most 2e-7 here, on values up to about 1.
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(scope="module")
def layouts(tiny_model_dir, tmp_path_factory):
    source = tiny_model_dir("llama")
    root = tmp_path_factory.mktemp("released")
    return {"source": source, "reference": write_reference_release(root / "reference", source),
            "easynla": write_easynla_release(root, source), "lora_ar": write_lora_ar_release(root, source),
            "per_layer": write_per_layer_release(root, source)}


def copy_of(layout, tmp_path):
    """The layout's two directories copied (tests that damage a file work on their own copy)."""
    av, ar = tmp_path / "av", tmp_path / "ar"
    shutil.copytree(layout.av, av)
    shutil.copytree(layout.ar, ar)
    return av, ar


def replace_embedding(norm: float):
    def at(slot: int, vector: torch.Tensor):
        def inject(where, hidden):
            if where is None:
                hidden = hidden.clone()
                hidden[slot] = rescaled(vector, norm)
            return hidden
        return inject
    return at


def add_after(block: int):
    def at(slot: int, vector: torch.Tensor):
        def inject(where, hidden):
            if where == block:
                hidden = hidden.clone()
                hidden[slot] = hidden[slot] + rescaled(vector, hidden[slot].norm())
            return hidden
        return inject
    return at


def av_prompt(tokenizer, template: str, layer: int | None = None) -> tuple[list[int], int]:
    """The AV prompt by hand: the user message in the chat template with the generation prompt, encoded
    without special tokens again; and the marker's position in it."""
    content = template.format(injection_char=MARKER_CHAR, layer=layer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids, ids.index(tokenizer.encode(MARKER_CHAR, add_special_tokens=False)[0])


def check_av(pair, weights: Weights, template: str, inject_at, layer: int | None = None) -> list[str]:
    """The AV's last-position logits and greedy tokens against the hand-written forward; returns its answers."""
    tokenizer = pair.prompts.tokenizer
    ids, slot = av_prompt(tokenizer, template, layer)
    assert pair.prompts.av_prompt_ids == ids
    batch = torch.tensor([ids] * len(VECTORS))
    with torch.no_grad():
        got = pair.verbalizer(batch, torch.ones_like(batch), VECTORS).logits[:, -1]
    samples = pair.verbalizer.sample(VECTORS, [ids] * len(VECTORS), max_new_tokens=STEPS, greedy=True)
    assert samples.injection.injected_rows == len(VECTORS)
    for row, vector in enumerate(VECTORS):
        inject = inject_at(slot, vector)
        torch.testing.assert_close(got[row], logits(weights, ids, inject)[-1], **TOLERANCE)
        assert samples.tokens[row] == greedy(weights, ids, len(samples.tokens[row]), inject)
    return samples.texts


def check_ar(pair, weights: Weights, head: torch.Tensor, template: str, texts: list[str],
             layer: int | None = None) -> None:
    """The AR's predictions against the head over the hand-written residual after block K at the last token."""
    tokenizer, blocks = pair.prompts.tokenizer, pair.layer + 1
    expected = torch.stack([head.float() @ residual(weights, tokenizer.encode(template.format(explanation=text,
                                                                                              layer=layer)), blocks)[-1]
                            for text in texts])
    torch.testing.assert_close(pair.reconstruct(texts), expected, **TOLERANCE)


# ---- layout 1: the reference release --------------------------------------------------------------

def test_reference_release_matches_the_written_out_forward(layouts):
    layout = layouts["reference"]
    pair = load_pair(layout.av, layout.ar, dtype="float32")
    assert pair.verbalizer.site.mode == "replace" and pair.verbalizer.site.layer is None
    answers = check_av(pair, Weights.read(layout.av), RELEASED_AV, replace_embedding(30.0))
    check_ar(pair, Weights.read(layout.ar), load_file(str(layout.ar / "value_head.safetensors"))["weight"],
             RELEASED_AR, TEXTS + answers)


def test_reference_release_without_or_with_a_damaged_value_head(layouts, tmp_path, monkeypatch):
    av, ar = copy_of(layouts["reference"], tmp_path)
    head = ar / "value_head.safetensors"
    save_file({"weight": torch.zeros(32, 16)}, str(head))
    with pytest.raises(NLAError, match=r"value_head\.safetensors: weight has shape \(32, 16\)") as caught:
        load_pair(av, ar, dtype="float32")
    assert "\n" not in str(caught.value)
    head.unlink()
    no_weights(monkeypatch)
    with pytest.raises(ConfigError, match=rf"^ar: {head} is missing") as caught:
        load_pair(av, ar, dtype="float32")
    assert "\n" not in str(caught.value)


def no_weights(monkeypatch) -> None:
    """From here on, loading any model's weights fails the test: the error must come before."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the error")

    monkeypatch.setattr("nla.models.loading.AutoModelForCausalLM.from_pretrained", refuse)


# ---- layout 2: EasyNLA-style, stacked adapters, added after block 1 ------------------------------

def test_easynla_release_matches_the_written_out_forward(layouts):
    layout, source = layouts["easynla"], layouts["source"]
    pair = load_pair(layout.av, layout.ar, dtype="float32", base=str(source))
    assert (pair.verbalizer.site.mode, pair.verbalizer.site.layer, pair.verbalizer.site.norm) == ("add", 1, "matched")
    assert pair.layer == LAYER and pair.base_model == str(source)
    base = Weights.read(source)
    # The GRPO adapter on top of the AV-SFT one, each with its own scaling (rsLoRA: alpha / sqrt(r)).
    base.loras = [peft_lora(layout.av / "sft_adapter"), peft_lora(layout.av)]
    assert base.loras[1].scaling == pytest.approx(16 / 8 ** 0.5)
    answers = check_av(pair, base, RELEASED_AV, add_after(1))
    # The full-depth bf16 AR, read after block K.
    check_ar(pair, Weights.read(layout.ar), load_file(str(layout.ar / "value_head.safetensors"))["weight"],
             RELEASED_AR, TEXTS + answers)


def test_easynla_release_asks_for_base_and_names_its_missing_pieces(layouts, tmp_path, monkeypatch):
    layout, source = layouts["easynla"], str(layouts["source"])
    av, ar = copy_of(layout, tmp_path)
    no_weights(monkeypatch)
    with pytest.raises(ConfigError) as caught:
        load_pair(av, ar, dtype="float32")
    assert str(caught.value) == (f"base: the adapter's base model '{CLUSTER_BASE}' does not exist here; "
                                 "pass --base NAME_OR_DIR")
    warm = av / "sft_adapter" / "adapter_model.safetensors"
    warm.unlink()
    with pytest.raises(ConfigError, match=rf"^warm_start_adapter: {warm} is missing") as caught:
        load_pair(av, ar, dtype="float32", base=source)
    assert "\n" not in str(caught.value)


def test_easynla_adapter_of_another_shape_is_named(layouts, tmp_path):
    av, ar = copy_of(layouts["easynla"], tmp_path)
    path = av / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 32)
    save_file(tensors, str(path))
    with pytest.raises(ConfigError, match=rf"^av: {path} holds {key} of shape \(4, 32\) where") as caught:
        load_pair(av, ar, dtype="float32", base=str(layouts["source"]))
    assert "\n" not in str(caught.value)


def test_an_av_that_adds_its_vector_is_not_trained(layouts):
    with pytest.raises(ConfigError, match=r"^extraction\.injection_mode: .*is added to the output of block 1"):
        load_verbalizer(layouts["easynla"].av, dtype="float32", trainable_adapter=True, base=str(layouts["source"]))


# ---- layout 3: a LoRA AR over a truncated base ----------------------------------------------------

def test_lora_ar_release_matches_the_written_out_forward(layouts):
    layout, source = layouts["lora_ar"], layouts["source"]
    pair = load_pair(layout.av, layout.ar, dtype="float32", base=layout.base)
    assert pair.reconstructor.layer == LAYER and pair.sidecars["ar"].role == "ar"
    answers = check_av(pair, Weights.read(layout.av), RELEASED_AV, replace_embedding(30.0))
    tensors = load_file(str(layout.ar / "ar_lora_value_head.safetensors"))
    head = tensors.pop("value_head.weight")
    base = Weights.read(source)
    base.loras = [lora_from_tensors(tensors, "backbone.", 16 / 8 ** 0.5)]
    check_ar(pair, base, head, RELEASED_AR, TEXTS + answers)


@pytest.mark.parametrize("change, message", [
    (lambda meta: meta.pop("lora_r"), r"^lora_r: missing from {meta}"),
    (lambda meta: meta.update(ar_num_layers="3"), r"^ar_num_layers: is '3' in {meta}"),
    (lambda meta: meta.update(final_norm_stripped=False), r"^final_norm_stripped: is False in {meta}"),
    (lambda meta: meta.update(ar_num_layers=2), r"^extraction_layer_index: the AV says 2 but the AR says 1"),
])
def test_lora_ar_meta_fields_are_checked_before_any_weights(layouts, tmp_path, monkeypatch, change, message):
    av, ar = copy_of(layouts["lora_ar"], tmp_path)
    meta = ar / "ar_meta.json"
    raw = json.loads(meta.read_text())
    change(raw)
    meta.write_text(json.dumps(raw))
    no_weights(monkeypatch)
    with pytest.raises(ConfigError, match=message.format(meta=meta)) as caught:
        load_pair(av, ar, dtype="float32", base=layouts["lora_ar"].base)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", ["no head", "lora shape", "extra tensor"])
def test_lora_ar_tensors_are_checked(layouts, tmp_path, damage):
    av, ar = copy_of(layouts["lora_ar"], tmp_path)
    path = ar / "ar_lora_value_head.safetensors"
    tensors = load_file(str(path))
    key = "backbone.model.layers.0.self_attn.v_proj.lora_B.default.weight"
    if damage == "no head":
        del tensors["value_head.weight"]
        pattern = rf"^ar: {path} holds no value_head\.weight"
    elif damage == "lora shape":
        tensors[key] = torch.zeros(32, 8)
        pattern = rf"^ar: {path} holds {key} of shape \(32, 8\)"
    else:
        key = key.replace("layers.0", "layers.3")
        tensors[key] = torch.zeros(16, 8)
        pattern = rf"^ar: {path} holds {key}, which this base model lacks"
    save_file(tensors, str(path))
    with pytest.raises(ConfigError, match=pattern) as caught:
        load_pair(av, ar, dtype="float32", base=layouts["lora_ar"].base)
    assert "\n" not in str(caught.value)


# ---- layout 4: per-layer heads, the layer named in the prompt -------------------------------------

@pytest.mark.parametrize("layer", PER_LAYERS)
def test_per_layer_release_matches_the_written_out_forward_at_each_layer(layouts, layer):
    layout, source = layouts["per_layer"], layouts["source"]
    pair = load_pair(layout.av, layout.ar, dtype="float32", layer=layer)
    assert pair.layer == layer == pair.reconstructor.layer and pair.verbalizer.injection_scale == PER_LAYER_NORM
    assert f"from layer {layer} of" in pair.prompts.av_content
    av = Weights.read(source)
    av.loras = [peft_lora(layout.av)]
    answers = check_av(pair, av, PER_LAYER_AV, replace_embedding(PER_LAYER_NORM), layer)
    ar = Weights.read(source)
    ar.loras = [peft_lora(layout.ar)]
    head = load_file(str(layout.ar / "value_heads.safetensors"))[f"layer_{layer}.weight"]
    check_ar(pair, ar, head, PER_LAYER_AR, TEXTS + answers, layer)


def test_per_layer_release_needs_one_of_its_layers(layouts, monkeypatch):
    layout = layouts["per_layer"]
    sidecar = layout.av / "nla_meta.yaml"
    no_weights(monkeypatch)
    for layer, state in ((None, "is missing"), (0, "is 0")):
        with pytest.raises(ConfigError) as caught:
            load_pair(layout.av, layout.ar, dtype="float32", layer=layer)
        assert str(caught.value) == f"layer: {state}; {sidecar} serves layers 1, 2, 3: pass --layer with one of them"
    av, ar = read_pair_sidecars(layout.av, layout.ar, layer=3)
    assert (av.extraction_layer_index, ar.extraction_layer_index) == (3, 3) and "{layer}" not in ar.prompt_templates.ar


def test_per_layer_heads_without_the_chosen_layer_are_named(layouts, tmp_path):
    av, ar = copy_of(layouts["per_layer"], tmp_path)
    path = ar / "value_heads.safetensors"
    heads = load_file(str(path))
    del heads["layer_2.weight"]
    save_file(heads, str(path))
    with pytest.raises(ConfigError) as caught:
        load_pair(av, ar, dtype="float32", layer=2)
    assert str(caught.value).startswith(f"ar: {path} holds no layer_2.weight (heads for layers [1, 3])")
    assert "\n" not in str(caught.value)
