"""``nla plan``: parameter counts, memory per device, tokens and time per step, before any download."""

from __future__ import annotations

import os
from dataclasses import replace

from nla.core.errors import ConfigError, NLAError
from nla.commands.plan.architectures import model_config
from nla.commands.plan.estimate import Estimate, estimate
from nla.commands.plan.memory import GIB
from nla.commands.plan.settings import Lora, Run, read_run
from nla.commands.plan.shapes import Shapes, model_shapes

RUNTIME_GIB = {"gpu": 1.5, "cpu": 1.3}
"""Memory the process holds before any model: on a GPU the CUDA context and allocator slack; on a
CPU the Python process with torch, transformers and lightning imported, a tokenizer and the cache's
memory maps (measured: docs/scaling.md)."""
HEADROOM = 0.95
"""A plan fits when its total is at most this share of the device: fragmentation takes the rest."""
LORA_FIX = Lora(16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def plan(config: str, gpus: int | None = None, gpu_memory: float | None = None, mfu: float = 0.35,
         sampling_tokens_per_s: float | None = None) -> None:
    """Print a config's parameter counts, memory per device, tokens and time per step; exit 2 when it
    does not fit, with the cheapest changes that would.

    Args:
        config: A fit config (SFT or GRPO) or an ``nla cache`` config.
        gpus: Devices to plan for (default: ``trainer.devices`` x ``trainer.num_nodes``); with the
            FSDP strategy the model state is sharded over all of them.
        gpu_memory: Memory of one device in GiB (default: 80, an H100/A100 80GB; on a CPU config the
            machine's RAM).
        mfu: Model FLOPs utilisation the time estimate assumes (the reference measured 0.44 for AV
            SFT and 0.31 for AR SFT on H100s).
        sampling_tokens_per_s: GRPO sampled tokens per second per device (default: 1000 for an 8B
            AV, scaled by the AV's size).
    """
    _check_numbers(gpu_memory, mfu, sampling_tokens_per_s)
    run = read_run(config)
    if gpus is not None:
        if gpus < 1:
            raise NLAError(f"gpus: must be at least 1, got {gpus}")
        run = replace(run, processes=gpus, setting=replace(run.setting, shards=gpus if run.setting.shards > 1 else 1))
    model_cfg, source = model_config(run.model, run.revision)
    shapes = _shapes(model_cfg, run)
    device = "cpu" if run.accelerator == "cpu" else "gpu"
    capacity = (gpu_memory if gpu_memory is not None else _ram_gib() if device == "cpu" else 80.0) * GIB
    result = estimate(run, shapes, RUNTIME_GIB[device] * GIB, mfu, sampling_tokens_per_s)
    print(_report(config, run, shapes, source, result, capacity, device, mfu))
    if result.total > HEADROOM * capacity:
        fixes = _fixes(run, model_cfg, capacity, device, mfu, sampling_tokens_per_s)
        print("cheapest changes (GiB per device after the change):")
        for line in fixes or ["none of the single changes fits; combine them, or use GPUs with more memory"]:
            print(f"  - {line}")
        raise NLAError(f"plan: {config} needs {result.total / GIB:.1f} GiB per device, more than "
                       f"{HEADROOM:.0%} of {capacity / GIB:.0f} GiB; see the changes listed above")


def _check_numbers(gpu_memory: float | None, mfu: float, sampling_tokens_per_s: float | None) -> None:
    """Refuse numbers no device has: a plan against them would print figures that mean nothing."""
    if gpu_memory is not None and not gpu_memory > 0:
        raise ConfigError("gpu_memory", f"must be a positive number of GiB, got {gpu_memory:g}")
    if not 0 < mfu <= 1:
        raise ConfigError("mfu", f"must be a fraction in (0, 1], got {mfu:g}")
    if sampling_tokens_per_s is not None and not sampling_tokens_per_s > 0:
        raise ConfigError("sampling_tokens_per_s", f"must be positive, got {sampling_tokens_per_s:g}")


def _shapes(model_cfg, run: Run) -> Shapes:
    lora = lambda spec: (spec.rank, spec.targets) if spec else None  # noqa: E731
    return model_shapes(model_cfg, run.layer, lora(run.av_lora), lora(run.ar_lora))


def _report(config: str, run: Run, shapes: Shapes, source: str, result: Estimate, capacity: float, device: str,
            mfu: float) -> str:
    s = run.setting
    gib = lambda value: f"{value / GIB:8.2f} GiB"  # noqa: E731
    lines = [f"nla plan: {config}",
             f"  target {run.model} (config from {source}), layer K={shapes.layer}, stage {run.stage}",
             f"  {run.processes} {device}(s) x {capacity / GIB:.0f} GiB; "
             + (f"FSDP over {s.shards}" if s.shards > 1 else "no sharding")
             + f"; weights {'fp32' if s.trained_bytes == 4 else 'bf16'} masters, compute "
             f"{'bf16' if s.compute_bytes == 2 else 'fp32'}, frozen copies {_dtype(s.frozen_bytes)}; "
             f"optimizer {s.optimizer}" + ("; activation checkpointing" if s.checkpointing else ""),
             "parameters:"]
    lora = lambda shape, spec: f" (LoRA r={spec.rank}: {shape.lora_params / 1e6:.1f}M trained)" if spec else ""  # noqa: E731
    if run.stage == "cache":
        lines.append(f"  target, first K+1 blocks: {shapes.ar.params / 1e9:.3f}B")
    else:
        lines.append(f"  AV (whole model):          {shapes.av.params / 1e9:.3f}B{lora(shapes.av, run.av_lora)}")
        lines.append(f"  AR (K+1 blocks + head):    {shapes.ar.params / 1e9:.3f}B{lora(shapes.ar, run.ar_lora)}")
        if run.stage == "grpo" and s.reference != "none":
            lines.append(f"  reference AV (frozen):     {shapes.av.params / 1e9:.3f}B ({s.reference})")
    lines.append(f"memory per device ({result.phase} peak):")
    lines += [f"  {name:<22}{gib(value)}" for name, value in result.memory.items() if value]
    verdict = "fits" if result.total <= HEADROOM * capacity else "DOES NOT FIT"
    lines.append(f"  {'total':<22}{gib(result.total)}  of {capacity / GIB:.0f} GiB: {verdict}")
    if run.stage != "cache":
        no_ckpt = replace(run, setting=replace(s, checkpointing=not s.checkpointing))
        key = "activations" if run.stage == "sft" else f"{result.phase} working set"
        other = estimate(no_ckpt, shapes, 0.0, mfu, None).memory.get(key, 0.0)
        lines.append(f"  {key} {'without' if s.checkpointing else 'with'} activation checkpointing: "
                     f"{other / GIB:.2f} GiB")
    lines += [f"host memory: {name} {value / GIB:.1f} GiB" for name, value in result.host.items() if value]
    tokens = ", ".join(f"{name} {count:,}" for name, count in result.tokens_per_step.items())
    lines.append(f"tokens per step: {tokens}")
    if device == "cpu":
        lines.append("time per step: not estimated on a CPU (the MFU model is for accelerators)")
    elif result.step_seconds:
        lines.append(f"time per step: {result.step_seconds:.1f} s at {mfu:.0%} MFU of {run.peak_tflops:.0f} TFLOP/s"
                     + (" and the stated sampling rate" if run.stage == "grpo" else ""))
    return "\n".join(lines)


def _fixes(run: Run, model_cfg, capacity: float, device: str, mfu: float, rate: float | None) -> list[str]:
    """Single changes in order of cost (what they give up), each with its resulting GiB per device."""
    s = run.setting
    candidates: list[tuple[str, Run]] = []
    if run.stage == "grpo" and run.micro_batch_size > 1:
        candidates.append((f"model.init_args.micro_batch_size: {max(1, run.micro_batch_size // 2)}",
                           replace(run, micro_batch_size=max(1, run.micro_batch_size // 2))))
    if run.stage == "sft" and run.batch_size > 1:
        half = max(1, run.batch_size // 2)
        candidates.append((f"data.init_args.batch_size: {half} with accumulate_grad_batches: {run.accumulate * 2}",
                           replace(run, batch_size=half, accumulate=run.accumulate * 2)))
    if s.shards > 1 and not s.checkpointing:
        candidates.append(("trainer.strategy.init_args.activation_checkpointing: true",
                           replace(run, setting=replace(s, checkpointing=True))))
    if s.optimizer == "adamw":
        candidates.append(("model.init_args.optimizer: adamw8bit", replace(run, setting=replace(s, optimizer="adamw8bit"))))
    if run.stage == "grpo" and s.reference == "copy":
        candidates.append(("model.init_args.reference_device: cpu", replace(run, setting=replace(s, reference="cpu"))))
        candidates.append(("model.init_args.reference_quantization: 8bit",
                           replace(run, setting=replace(s, reference="8bit"))))
    for processes in (2, 4, 8, 16, 32, 64):
        if processes > run.processes:
            candidates.append((f"NLAFSDPStrategy over {processes} GPUs (trainer.devices x trainer.num_nodes)",
                               replace(run, processes=processes, setting=replace(s, shards=processes))))
    if run.av_lora is None or run.ar_lora is None:
        reference = "adapter" if run.stage == "grpo" else s.reference
        candidates.append(("LoRA r=16 on both models (model.init_args.verbalizer_lora / reconstructor_lora)",
                           replace(run, av_lora=run.av_lora or LORA_FIX, ar_lora=run.ar_lora or LORA_FIX,
                                   setting=replace(s, av_lora=True, ar_lora=True, reference=reference))))
    lines, fsdp_listed = [], False
    for text, changed in candidates:
        total = estimate(changed, _shapes(model_cfg, changed), RUNTIME_GIB[device] * GIB, mfu, rate).total
        if total <= HEADROOM * capacity:
            if text.startswith("NLAFSDPStrategy"):
                if fsdp_listed:
                    continue
                fsdp_listed = True
            lines.append(f"{text}: {total / GIB:.1f} GiB")
    return lines[:6]


def _dtype(size: int) -> str:
    return {4: "fp32", 2: "bf16"}.get(size, f"{size} B")


def _ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
