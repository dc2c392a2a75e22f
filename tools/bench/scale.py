"""Peak memory and step time of one SFT step and one GRPO step under each memory-saving setting.

    python tools/bench/scale.py [--model packaged:smollm2] [--layer K] [--batch 8] [--prompts 4]
        [--samples 8] [--max-new-tokens 64] [--steps 3] [--device auto] [--settings baseline,lora,...]

The target (``--model``: hub id, HF directory or packaged:NAME) is wrapped as a fresh AV and AR; the
vectors are random, scaled to the injection norm, so no activation cache is needed. An SFT step is one
AV and one AR forward+backward on ``--batch`` rows labelled with a fixed explanation, then one
optimizer step over both, as ``SFTModule`` does. A GRPO step runs the real ``collect`` / ``av_loss`` / ``ar_loss``
with one optimizer per model, as ``GRPOModule.training_step`` does. A fresh AV rarely writes parseable
explanations, so rows without one train the AR on the fixed explanation: the AR update is always paid.

Every setting runs in its own subprocess (SFT, then GRPO with the SFT objects freed), so peaks of
different settings never mix. Step time: median of ``--steps`` steps after one warm-up step. Peak
memory: on CUDA ``max_memory_allocated`` from just before the warm-up (weights included); on CPU the
peak resident set size over the steps minus the resident size once the models were built (what the
steps add: activations, gradients, optimizer state, sampling cache; Linux, read from /proc).

Settings (``SETTINGS``): baseline (fp32 weights, torch AdamW, full fine-tuning), adamw8bit,
paged_adamw8bit (CUDA), lora and lora+adamw8bit (adapters on AV and AR), grad_ckpt (each decoder
block recomputed in backward), reference_8bit / reference_4bit (GRPO only: the frozen KL reference is
the target loaded again in those bits) and bf16 (CUDA: bf16 weights with the stochastic-rounding AdamW
that keeps them training, fp32 AR head). A setting this
machine cannot run, or one that fails or runs out of memory, gets an ``n/a (reason)`` row.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import torch

from nla.models import adapters, lora

from nla.modules import optim
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.pair import Pair
from nla.models.reconstructor import Reconstructor
from nla.modules.grpo.reference import AdapterReference, FrozenCopy, FrozenModel
from nla.modules.grpo.rollout import ar_loss, av_loss, collect
from nla.modules.grpo.settings import RolloutArgs
from nla.models.verbalizer import Verbalizer
from nla.core.padding import pad, pad_token_id
from nla.core.prompts import PromptArgs, Prompts

DEFAULT_SCALE = 250.0
EXPLANATION = "Mentions of a river crossing at night, in a story told by a ferryman."
LEARNING_RATES = {"verbalizer": 1e-5, "reconstructor": 5e-5}


@dataclass(frozen=True)
class Setting:
    """One combination of memory-saving switches, as the training YAML would select it."""

    optimizer: str = "adamw"
    """``model.training.optimizer``: adamw, adamw8bit, paged_adamw8bit or adamw_bf16_stochastic."""
    lora: bool = False
    """LoRA adapters (``LoraArgs`` defaults) on the AV and the AR."""
    checkpointing: bool = False
    """Recompute each decoder block in backward."""
    reference: str = "none"
    """``model.reference_quantization`` of the GRPO reference; not none makes the setting GRPO only."""
    dtype: str = "float32"
    """Weights' dtype (the AR head stays fp32 whatever it is)."""


SETTINGS = {
    "baseline": Setting(),
    "adamw8bit": Setting(optimizer="adamw8bit"),
    "paged_adamw8bit": Setting(optimizer="paged_adamw8bit"),
    "lora": Setting(lora=True),
    "lora+adamw8bit": Setting(lora=True, optimizer="adamw8bit"),
    "grad_ckpt": Setting(checkpointing=True),
    "reference_8bit": Setting(reference="8bit"),
    "reference_4bit": Setting(reference="4bit"),
    # bf16 trained weights need an optimizer that compensates bf16 rounding (nla.modules.precision).
    "bf16": Setting(dtype="bfloat16", optimizer="adamw_bf16_stochastic"),
}


def unavailable(setting: Setting, device: str) -> str | None:
    """Why this machine cannot run ``setting`` at all, or None."""
    if setting.optimizer == "paged_adamw8bit" and device != "cuda":
        return "paged optimizer needs CUDA"
    if setting.dtype == "bfloat16" and device != "cuda":
        return "bf16 is measured on CUDA only"
    bnb = setting.optimizer in ("adamw8bit", "paged_adamw8bit") or setting.reference != "none"
    if bnb and not importlib.util.find_spec("bitsandbytes"):
        return "needs bitsandbytes"
    if setting.lora and not importlib.util.find_spec("peft"):
        return "needs peft"
    return None


def sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously; without a sync the clock stops before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds of ``step(i)`` over ``steps`` calls after one warm-up, and the peak memory of all."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _release_free_heap()
        # Writing 5 resets the kernel's peak RSS, so the loading peak does not hide the steps' peak.
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        built = _rss_bytes()
    times = []
    for index in range(steps + 1):
        sync(device)
        began = time.perf_counter()
        step(index)
        sync(device)
        times.append(time.perf_counter() - began)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - built
    return {"seconds": statistics.median(times[1:]), "peak_mib": peak / 2**20}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS, so the next phase's resident size starts from what it holds."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only; other allocators keep their pages
    if trim is not None:
        trim(0)


def build_pair(args, setting: Setting, device: torch.device, train: bool):
    backbone = ModelArgs(args.model, dtype=setting.dtype)
    tokenizer, model = load_tokenizer(backbone), load_causal_lm(backbone)
    # The model is passed so a tokenizer without a one-token marker character gets one added.
    prompts = Prompts.build(tokenizer, PromptArgs(), model)
    depth = adapters.num_layers(model.config)
    layer = args.layer if args.layer is not None else min(depth - 1, round(depth * 2 / 3))
    verbalizer = Verbalizer(model, tokenizer, prompts.marker, DEFAULT_SCALE)
    reconstructor = Reconstructor.from_target(backbone, layer)
    for name, module in (("verbalizer", verbalizer.model), ("reconstructor", reconstructor.model)):
        if setting.lora:
            lora.wrap(module, lora.LoraArgs(), f"{name}_lora")
        if setting.checkpointing:
            # Composable checkpointing, as NLAFSDPStrategy applies it per block: unlike HF's own
            # gradient_checkpointing_enable it also recomputes in eval mode, where GRPO's passes run.
            from torch.distributed._composable import checkpoint

            for block in adapters.decoder_layers(module):
                checkpoint(block)
    verbalizer.train(train)
    reconstructor.train(train)
    return verbalizer.to(device), reconstructor.to(device), prompts, backbone


def vectors(rows: int, d: int, device: torch.device, seed: int) -> torch.Tensor:
    drawn = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed))
    return (drawn / drawn.norm(dim=1, keepdim=True) * DEFAULT_SCALE).to(device)


def optimizer(setting: Setting, named: list[tuple[str, torch.nn.Module]]) -> torch.optim.Optimizer:
    groups = [optim.param_group(name, module, LEARNING_RATES[name]) for name, module in named]
    return optim.adamw(groups, (0.9, 0.95), 0.0, setting.optimizer)


def trainable(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters() if p.requires_grad)


def sft(args, setting: Setting, device: torch.device) -> dict:
    verbalizer, reconstructor, prompts, _ = build_pair(args, setting, device, train=True)
    pad_id = pad_token_id(prompts.tokenizer)
    ids, labels = prompts.av_example(EXPLANATION)
    av_ids, av_mask = (t.to(device) for t in pad([ids] * args.batch, pad_id))
    av_labels = torch.tensor([labels] * args.batch, device=device)
    ar_ids, ar_mask = (t.to(device) for t in pad([prompts.ar_ids(EXPLANATION)] * args.batch, pad_id))
    target = vectors(args.batch, reconstructor.d_model, device, args.seed)
    opt = optimizer(setting, [("verbalizer", verbalizer), ("reconstructor", reconstructor)])

    def step(_: int) -> None:
        opt.zero_grad()
        av = verbalizer(av_ids, av_mask, target, av_labels).loss
        ar = Reconstructor.loss(reconstructor(ar_ids, ar_mask), target)
        (av + ar).backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()

    result = measure(step, args.steps, device)
    return dict(result, trainable=trainable(verbalizer, reconstructor))


def reference_for(setting: Setting, verbalizer: Verbalizer, backbone: ModelArgs, prompts):
    """The reference ``build_reference`` would pick; a quantized one is the target itself loaded again
    in those bits (a fresh pair has no SFT export to reload)."""
    if setting.reference != "none":
        model = load_causal_lm(replace(backbone, quantization=setting.reference))
        return FrozenModel(Verbalizer(model, prompts.tokenizer, prompts.marker, verbalizer.injection_scale))
    if setting.lora:
        return AdapterReference(verbalizer)
    return FrozenCopy(verbalizer, "same")


def grpo(args, setting: Setting, device: torch.device) -> dict:
    verbalizer, reconstructor, prompts, backbone = build_pair(args, setting, device, train=False)
    reference = reference_for(setting, verbalizer, backbone, prompts)
    pair = Pair(verbalizer, reconstructor, prompts, reconstructor.layer)
    ids = torch.tensor([prompts.av_prompt_ids] * args.prompts, device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "vector": vectors(args.prompts, reconstructor.d_model, device, args.seed)}
    rollout_args = RolloutArgs(samples_per_prompt=args.samples, micro_batch_size=args.micro_batch,
                               max_new_tokens=args.max_new_tokens)
    opt_av = optimizer(setting, [("verbalizer", verbalizer)])
    opt_ar = optimizer(setting, [("reconstructor", reconstructor)])

    def step(index: int) -> None:
        rollout = collect(pair, reference, batch, rollout_args, args.seed + index)
        opt_av.zero_grad()
        av_loss(verbalizer, rollout, rollout_args, lambda loss: loss.backward())
        torch.nn.utils.clip_grad_norm_(verbalizer.parameters(), 1.0)
        opt_av.step()
        rollout.explanations = [text if text is not None else EXPLANATION for text in rollout.explanations]
        rollout.valid = torch.ones_like(rollout.valid)
        opt_ar.zero_grad()
        ar_loss(pair, rollout, args.micro_batch, lambda loss: loss.backward())
        torch.nn.utils.clip_grad_norm_(reconstructor.parameters(), 1.0)
        opt_ar.step()

    result = measure(step, args.steps, device)
    return dict(result, trainable=trainable(verbalizer, reconstructor))


def worker(args, name: str) -> dict:
    setting, device = SETTINGS[name], torch.device(args.device)
    torch.manual_seed(args.seed)
    cells = {}
    phases = (("grpo", grpo),) if setting.reference != "none" else (("sft", sft), ("grpo", grpo))
    for phase, run in phases:
        try:
            cells[phase] = run(args, setting, device)
        except torch.OutOfMemoryError:
            cells[phase] = {"error": "out of memory"}
        except Exception as error:  # noqa: BLE001 - one failing phase must not lose the other's figures
            cells[phase] = {"error": f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:80]}"}
        gc.collect()
    if "sft" not in cells:
        cells["sft"] = {"error": "GRPO only"}
    return cells


def run_setting(args, name: str) -> dict:
    """``worker`` for ``name`` in a fresh interpreter; a crash becomes an error cell with its last line."""
    # The worker parses the same arguments, so the parent's command line is passed on whole.
    command = [sys.executable, __file__, *args.argv, "--worker", name]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:80]
    return {"sft": {"error": f"failed: {last}"}, "grpo": {"error": f"failed: {last}"}}


def table(args, names: list[str]) -> list[str]:
    memory = ("peak allocated CUDA memory, weights included" if args.device == "cuda"
              else "peak RSS the steps add over the built models (CPU)")
    lines = [f"{args.model} on {args.device}: SFT {args.batch} rows; GRPO {args.prompts} prompts x {args.samples} "
             f"samples, {args.max_new_tokens} new tokens, micro-batch {args.micro_batch}; step s = median of "
             f"{args.steps} after a warm-up; peak MiB = {memory}", "",
             "| setting | SFT step s | SFT peak MiB | GRPO step s | GRPO peak MiB | trainable params |",
             "|---|---|---|---|---|---|"]
    for name in names:
        reason = unavailable(SETTINGS[name], args.device)
        cells = {phase: {"error": reason} for phase in ("sft", "grpo")} if reason else run_setting(args, name)
        row = [name]
        for phase in ("sft", "grpo"):
            cell = cells[phase]
            row += ([f"n/a ({cell['error']})", "n/a"] if "error" in cell
                    else [f"{cell['seconds']:.3f}", f"{cell['peak_mib']:.1f}"])
        counted = [cell["trainable"] for cell in cells.values() if "trainable" in cell]
        row.append(f"{counted[0]:,}" if counted else "n/a")
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="packaged:smollm2", help="HF directory, hub id or packaged:NAME")
    parser.add_argument("--layer", type=int, help="the AR's layer (default: about two thirds of the depth)")
    parser.add_argument("--batch", type=int, default=8, help="SFT rows per step (each of AV and AR)")
    parser.add_argument("--prompts", type=int, default=4, help="GRPO B, vectors per step")
    parser.add_argument("--samples", type=int, default=8, help="GRPO G, answers per vector")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8, help="GRPO sequences per forward/backward")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated subset of {', '.join(SETTINGS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or not names:
        parser.error(f"--settings: unknown {unknown or 'empty list'}; choose from {', '.join(SETTINGS)}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    args.names = names
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args, args.worker)))
        return
    print("\n".join(table(args, args.names)))


if __name__ == "__main__":
    main()
