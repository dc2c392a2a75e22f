"""GRPO step time, phase by phase, and rollout sampling speed against plain HF ``generate``.

    python tools/bench/grpo_step.py [--pair runs/smollm2-sft/export | --model DIR] [--steps 3]
        [--prompts 4] [--samples 8] [--max-new-tokens 150] [--micro-batch 8] [--device auto]

Without ``--pair`` the target (``--model``, default ``packaged:smollm2``) is wrapped as a fresh AV and
AR, the marker chosen as in training; the vectors are random, scaled to the injection norm, so no
activation cache is needed. Each step runs the real ``collect`` / ``av_loss`` / ``ar_loss`` with two
AdamW optimizers, as ``GRPOModule.training_step`` does without a Lightning Trainer. A fresh AV rarely
writes explanation tags, so its answers are invalid and the AR phases then have nothing to do: pass
an SFT export to time those. ``score (AR)`` is the time inside the AR's forward calls; ``ref+old
logprobs`` is the rest of the rollout after sampling: the policy's and the reference's passes plus the
padding, tokenizing and reward bookkeeping around them.

The generation comparison runs B x G rows for exactly T new tokens on every side: HF through
``min_new_tokens``, ``Verbalizer.sample`` (which has no such option) through a stop set no sampled id
can match, so it cannot stop early either; ours once per sampling engine (``loop``, ``static``).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from nla.core.padding import pad_token_id
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.pair import Pair
from nla.models.reconstructor import Reconstructor
from nla.modules.grpo.reference import FrozenCopy
from nla.modules.grpo.rollout import ar_loss, av_loss, collect
from nla.modules.grpo.settings import RolloutArgs
from nla.models.verbalizer import Verbalizer
from nla.core.prompts import PromptArgs, Prompts

DEFAULT_SCALE = 250.0
PHASES = ("generate", "score", "logprobs", "av_update", "ar_update", "total")
HEADERS = ("generate", "score (AR)", "ref+old logprobs", "AV update", "AR update", "total")


def sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously; without a sync the clock stops before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardTimer:
    """Wall time spent inside one module's forward calls while it is attached."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.seconds, self.device, self._began = 0.0, device, 0.0
        self._handles = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._stop)]

    def _start(self, module, inputs) -> None:
        sync(self.device)
        self._began = time.perf_counter()

    def _stop(self, module, inputs, output) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._began

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def build_pair(args, device: torch.device) -> tuple[Verbalizer, Reconstructor, Prompts, str]:
    """The AV, AR and prompts to time, on ``device``, and a name for the header line."""
    if args.pair is not None:
        from nla.models.pair_loading import load_pair

        root = Path(args.pair)
        loaded = load_pair(root / "av", root / "ar", dtype=args.dtype)
        verbalizer, reconstructor, prompts = loaded.verbalizer, loaded.reconstructor, loaded.prompts
        if args.injection_scale is not None:
            verbalizer.injector.scale = verbalizer.injection_scale = float(args.injection_scale)
        name = str(root)
    else:
        name = args.model or "packaged:smollm2"
        backbone = ModelArgs(name, dtype=args.dtype)
        model, tokenizer = load_causal_lm(backbone), load_tokenizer(backbone)
        # The model is passed so a tokenizer without a one-token marker character gets one added.
        prompts = Prompts.build(tokenizer, PromptArgs(), model)
        depth = adapters.num_layers(model.config)
        layer = args.layer if args.layer is not None else min(depth - 1, round(depth * 2 / 3))
        verbalizer = Verbalizer(model, tokenizer, prompts.marker, args.injection_scale or DEFAULT_SCALE)
        reconstructor = Reconstructor.from_target(backbone, layer)
    return verbalizer.to(device), reconstructor.to(device), prompts, name


def rl_batch(prompts: Prompts, rows: int, d: int, scale: float, device: torch.device, seed: int) -> dict:
    """An ``rl`` batch as the datamodule yields it: the AV prompt per row and a vector of norm ``scale``."""
    ids = torch.tensor([prompts.av_prompt_ids] * rows, device=device)
    vectors = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed))
    vectors = vectors / vectors.norm(dim=1, keepdim=True) * scale
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "vector": vectors.to(device)}


def grpo_step(verbalizer, reconstructor, reference, prompts, optimizers, batch, args: RolloutArgs, seed: int,
              clip: float, device: torch.device) -> tuple[dict[str, float], int]:
    """One GRPO step; the seconds of each phase and the number of generated tokens."""
    opt_av, opt_ar = optimizers
    pair = Pair(verbalizer, reconstructor, prompts, reconstructor.layer)
    # Dropout stays off in every pass, as in GRPOModule, so the update's ratio starts at exactly 1.
    verbalizer.eval()
    reconstructor.eval()
    ar_timer = ForwardTimer(reconstructor, device)
    sync(device)
    began = time.perf_counter()
    try:
        rollout = collect(pair, reference, batch, args, seed)
        sync(device)
    finally:
        ar_timer.remove()
    collected = time.perf_counter()
    seconds = {"generate": rollout.seconds["generate"], "score": ar_timer.seconds}
    seconds["logprobs"] = collected - began - seconds["generate"] - seconds["score"]

    opt_av.zero_grad()
    av_loss(verbalizer, rollout, args, lambda loss: loss.backward())
    torch.nn.utils.clip_grad_norm_(verbalizer.parameters(), clip)
    opt_av.step()
    sync(device)
    updated = time.perf_counter()
    opt_ar.zero_grad()
    if ar_loss(pair, rollout, args.micro_batch_size, lambda loss: loss.backward()) is not None:
        torch.nn.utils.clip_grad_norm_(reconstructor.parameters(), clip)
        opt_ar.step()
    sync(device)
    done = time.perf_counter()
    seconds.update(av_update=updated - collected, ar_update=done - updated, total=done - began)
    return seconds, int(rollout.mask.sum())


def best_seconds(run, repeats: int, device: torch.device) -> float:
    run()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def generation_seconds(verbalizer: Verbalizer, batch: dict, group: int, tokens: int, repeats: int,
                       pad: int, device: torch.device) -> tuple[dict[str, float], float]:
    """Best seconds of ``Verbalizer.sample`` per engine (``nla.models.sampling``) and of HF ``generate``
    for B x G rows and exactly ``tokens`` new tokens each, plain temperature-1 sampling on all sides."""
    ids = batch["input_ids"].repeat_interleave(group, dim=0)
    mask = batch["attention_mask"].repeat_interleave(group, dim=0)
    stops = verbalizer.stop_ids
    # -1 is no token id, so no row ever finishes: the loop runs all ``tokens`` steps, like min_new_tokens.
    verbalizer.stop_ids = {-1}
    ours_s = {}
    try:
        for engine in ("loop", "static"):
            def ours(engine=engine):
                samples = verbalizer.sample(batch["vector"], batch["input_ids"], batch["attention_mask"],
                                            max_new_tokens=tokens, temperature=1.0, seed=0, group=group,
                                            sampler=engine)
                assert all(len(row) == tokens for row in samples.tokens), "Verbalizer.sample stopped early"

            ours_s[engine] = best_seconds(ours, repeats, device)
    finally:
        verbalizer.stop_ids = stops

    def hf():
        # top_k, top_p and repetition_penalty are set explicitly: generate would otherwise take the
        # checkpoint's generation config, and the two sides would not sample the same way.
        out = verbalizer.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                        top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=tokens,
                                        min_new_tokens=tokens, pad_token_id=pad)
        assert out.shape[1] - ids.shape[1] == tokens, "HF generate did not produce exactly max_new_tokens"

    with torch.no_grad():
        hf_s = best_seconds(hf, repeats, device)
    return ours_s, hf_s


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def row_text(label: str, seconds: dict[str, float], tokens: float) -> str:
    cells = " ".join(f"{seconds[p]:>{max(10, len(h))}.3f}" for p, h in zip(PHASES, HEADERS))
    return f"{label:>5} {cells} {tokens:>10.0f} {tokens / max(seconds['generate'], 1e-9):>10.0f}"



def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pair", help="an export directory holding av/ and ar/")
    source.add_argument("--model", help="HF directory, hub id or packaged:NAME wrapped as a fresh pair "
                        "(default packaged:smollm2)")
    parser.add_argument("--layer", type=int, help="the fresh AR's layer (default: about two thirds of the depth)")
    parser.add_argument("--injection-scale", type=float, help=f"default: the pair's own, or {DEFAULT_SCALE:g}")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4, help="B, vectors per step")
    parser.add_argument("--samples", type=int, default=8, help="G, answers per vector")
    parser.add_argument("--max-new-tokens", type=int, default=150)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed generation runs per side (best is kept)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA), float32 or bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    verbalizer, reconstructor, prompts, name = build_pair(args, device)
    rollout_args = RolloutArgs(samples_per_prompt=args.samples, micro_batch_size=args.micro_batch,
                               max_new_tokens=args.max_new_tokens)
    pad = pad_token_id(prompts.tokenizer)
    batch = rl_batch(prompts, args.prompts, reconstructor.d_model, verbalizer.injection_scale, device, args.seed)
    reference = FrozenCopy(verbalizer, "same")
    optimizers = [torch.optim.AdamW(module.parameters(), lr=lr, betas=(0.9, 0.95))
                  for module, lr in ((verbalizer, 1e-5), (reconstructor, 5e-5))]
    dtype = next(verbalizer.model.parameters()).dtype
    print(f"{name}: d {reconstructor.d_model}, AR layer {reconstructor.layer}, injection norm "
          f"{verbalizer.injection_scale:g}, {dtype}; B {args.prompts} x G {args.samples} = "
          f"{args.prompts * args.samples} rows, T {args.max_new_tokens}, micro-batch {args.micro_batch}; "
          f"{machine(device)}, torch {torch.__version__}")
    print(f"{'step':>5} " + " ".join(f"{h:>{max(10, len(h))}}" for h in HEADERS)
          + f" {'gen tokens':>10} {'gen tok/s':>10}")
    rows = []
    for step in range(args.steps):
        seconds, tokens = grpo_step(verbalizer, reconstructor, reference, prompts, optimizers, batch, rollout_args,
                                    args.seed + step, 1.0, device)
        rows.append((seconds, tokens))
        print(row_text(str(step + 1), seconds, tokens))
    # The first step pays one-off allocation and kernel-selection costs; the mean leaves it out when it can.
    steady = rows[1:] or rows
    mean = {phase: sum(s[phase] for s, _ in steady) / len(steady) for phase in PHASES}
    print(row_text("mean", mean, sum(t for _, t in steady) / len(steady)))
    if len(rows) > 1:
        print(f"mean: steps 2-{len(rows)}; step 1 pays the warm-up")

    ours, hf = generation_seconds(verbalizer, batch, args.samples, args.max_new_tokens, args.repeats, pad, device)
    generated = args.prompts * args.samples * args.max_new_tokens
    print(f"\nGeneration, {args.prompts * args.samples} rows x exactly {args.max_new_tokens} new tokens "
          f"(EOS ignored on all sides), best of {args.repeats}:")
    print(f"{'':>30} {'seconds':>8} {'tok/s':>9} {'vs HF':>6}")
    for engine, seconds in ours.items():
        print(f"{'Verbalizer.sample ' + engine:>30} {seconds:>8.3f} {generated / seconds:>9.0f} {hf / seconds:>5.2f}x")
    print(f"{'HF generate':>30} {hf:>8.3f} {generated / hf:>9.0f} {1:>5.2f}x")
    print("ours inject the vectors at the prefill, HF runs the same model without injection; 'static' prefills "
          "each prompt once for its G answers (a CUDA-graph decode step on CUDA)")


if __name__ == "__main__":
    main()
