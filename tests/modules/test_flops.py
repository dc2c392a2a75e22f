import pytest
import torch

from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm
from nla.modules.flops import ModelCounts, model_counts, peak_tflops, training_flops
from nla.models.reconstructor import Reconstructor


def test_training_flops_hand_computed():
    counts = ModelCounts(dense=100, trained=100, layers=2, attention_width=8)
    # Dense: (4 x 100 + 2 x 100) x 4 tokens = 2400. Attention: 6 x 2 x 8 x (3 x 4 + 1 x 2) = 1344.
    assert training_flops([3, 1], counts) == 2400 + 1344
    # LoRA-like: 10 trained parameters; the frozen ones still cost their forward and input gradients.
    assert training_flops([3, 1], ModelCounts(100, 10, 2, 8)) == (400 + 20) * 4 + 1344
    # Attention grows with the square of the length: one sequence of 4 costs more than two of 2.
    assert training_flops([4], counts) - training_flops([2, 2], counts) == 6 * 2 * 8 * (20 - 12)


def test_peak_table_matches_device_names():
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA GeForce GTX 1080") is None


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_model_counts_leave_the_embedding_lookups_out(family, tiny_model_dir):
    model = load_causal_lm(ModelArgs(str(tiny_model_dir(family)), dtype="float32"))
    decoder, head = adapters.decoder(model), model.get_output_embeddings()
    lookups = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Embedding))
    tied = head.weight is adapters.input_embeddings(model).weight
    language = sum(p.numel() for p in decoder.parameters()) + (0 if tied else head.weight.numel())
    counts = model_counts(model)
    assert counts.dense == language - lookups + (head.weight.numel() if tied else 0)
    assert counts.trained == counts.dense and counts.layers == 4 and counts.attention_width == 32
    # gpt2 and gemma tie their head to the token embedding: the matmul is counted once; gpt2's
    # position lookup is not counted, nor gemma3's vision tower.
    assert tied == (family != "llama")
    model.requires_grad_(False)
    assert model_counts(model).trained == 0


def test_model_counts_of_the_reconstructor(tiny_model_dir):
    ar = Reconstructor.from_target(ModelArgs(str(tiny_model_dir("llama")), dtype="float32"), 1)
    counts = model_counts(ar.model, ar.head)
    blocks = sum(p.numel() for p in adapters.decoder_layers(ar.model).parameters())
    assert counts.dense == blocks + 32 * 32 and counts.layers == 2
