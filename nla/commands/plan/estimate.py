"""A run's memory per device, tokens per step and time per step, from its ``Run`` and ``Shapes``.

Time: training FLOPs are 6 x (trained parameters) per token for full fine-tuning and 4 x (all
parameters) with LoRA (the backward still computes input gradients), plus 2 x parameters per token
for every pass without gradients (GRPO's policy, reference and reward passes), at ``mfu`` of the
devices' peak. GRPO's sampling runs at ``sampling_tokens_per_s`` per device (HF ``generate`` with a
KV cache is memory-bound, so the default scales with the AV's size from a stated 8B figure).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nla.commands.plan.memory import activations, gathered_units, kv_cache, model_state, reference_state
from nla.commands.plan.settings import Run
from nla.commands.plan.shapes import Shapes

SAMPLING_TOKENS_PER_S_8B = 1000.0
"""Sampled tokens per second per device for an 8B AV (HF generate, batch of 64-128 sequences, KV
cache, one H100); smaller models scale up, larger down, with the weight bytes read per decode step."""


@dataclass(frozen=True)
class Estimate:
    memory: dict[str, float]
    """Bytes per device by component; activations are the peak phase's (GRPO: its working set)."""
    phase: str
    """The phase whose activations peak (SFT: ``forward+backward``; GRPO: sampling, AV or AR update)."""
    host: dict[str, float]
    """Bytes of host memory beyond the runtime (offloaded state, rank 0's export copy)."""
    tokens_per_step: dict[str, int]
    step_seconds: float

    @property
    def total(self) -> float:
        return sum(self.memory.values())


def estimate(run: Run, shapes: Shapes, runtime_bytes: float, mfu: float,
             sampling_tokens_per_s: float | None) -> Estimate:
    s = run.setting
    memory: dict[str, float] = {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0}
    host: dict[str, float] = {}
    if run.stage == "cache":
        memory = {"weights": shapes.ar.params * _frozen_bytes(run), "activations":
                  activations(shapes.ar, 1, run.cache_tokens, s, grad=False)}
        memory["runtime"] = runtime_bytes
        return Estimate(memory, "forward", host, {"target": run.cache_tokens}, 0.0)
    trained = [(shapes.av, run.av_lora is not None) if run.train_av else None,
               (shapes.ar, run.ar_lora is not None) if run.train_ar else None]
    for entry in filter(None, trained):
        for key, value in model_state(*entry, s).items():
            memory[key] += value
    if s.cpu_offload:
        host["offloaded state"] = sum(sum(model_state(*entry, replace(s, cpu_offload=False)).values()) * s.shards
                                      for entry in filter(None, trained))
    units = max(gathered_units(shapes.av, s) if run.train_av else 0, gathered_units(shapes.ar, s) if run.train_ar else 0)
    if run.stage == "grpo":
        memory["reference"] = reference_state(shapes.av, s)
        if s.reference == "cpu":
            host["reference"] = shapes.av.params * s.frozen_bytes
        phases = _grpo_phases(run, shapes)
        phase = max(phases, key=phases.get)
        memory[f"{phase} working set"] = phases[phase]
        seconds, tokens = _grpo_time(run, shapes, mfu, sampling_tokens_per_s)
    else:
        phase = "forward+backward"
        memory["activations"] = ((activations(shapes.av, run.batch_size, run.sft_av_length, s) if run.train_av else 0)
                                 + (activations(shapes.ar, run.batch_size, run.sft_ar_length, s) if run.train_ar else 0))
        seconds, tokens = _sft_time(run, shapes, mfu)
    memory["gathered FSDP units"] = units
    memory["runtime"] = runtime_bytes
    host["export copy (rank 0)"] = (shapes.av.params + shapes.ar.params) * 4
    return Estimate(memory, phase, host, tokens, seconds)


def _frozen_bytes(run: Run) -> float:
    return {"8bit": 1.0, "4bit": 0.5}.get(run.setting.reference, run.setting.frozen_bytes)


def _grpo_phases(run: Run, shapes: Shapes) -> dict[str, float]:
    s = run.setting
    sequences = run.batch_size * run.samples_per_prompt
    sampling = kv_cache(shapes.av, sequences, run.rollout_length, s) + sequences * shapes.av.vocab * 4
    if s.shards > 1:
        # The AV is gathered whole for the token-by-token loop (nla.modules.fsdp.gathered).
        sampling += shapes.av.params * s.compute_bytes
    micro = min(run.micro_batch_size, sequences)
    av_update = activations(shapes.av, micro, run.rollout_length, s)
    ar_update = activations(shapes.ar, micro, run.ar_prompt_tokens + run.max_new_tokens, s)
    return {"sampling": sampling, "AV update": av_update, "AR update": ar_update}


def _flops_per_token(params: int, grad_params: int, lora: bool) -> float:
    return 4.0 * params if lora else 6.0 * grad_params


def _sft_time(run: Run, shapes: Shapes, mfu: float) -> tuple[float, dict[str, int]]:
    rows = run.batch_size * run.accumulate * run.processes
    tokens = {}
    flops = 0.0
    if run.train_av:
        tokens["AV"] = rows * (run.prompt_tokens + run.explanation_tokens + 4)
        flops += tokens["AV"] * _flops_per_token(shapes.av.params, shapes.av.grad_params, run.av_lora is not None)
    if run.train_ar:
        tokens["AR"] = rows * (run.ar_prompt_tokens + run.explanation_tokens)
        flops += tokens["AR"] * _flops_per_token(shapes.ar.params, shapes.ar.grad_params, run.ar_lora is not None)
    return flops / (run.processes * run.peak_tflops * 1e12 * mfu), tokens


def _grpo_time(run: Run, shapes: Shapes, mfu: float, rate: float | None) -> tuple[float, dict[str, int]]:
    sequences = run.batch_size * run.processes * run.samples_per_prompt
    completion = min(run.max_new_tokens, run.explanation_tokens)
    sampled = sequences * completion
    av_tokens = sequences * (run.prompt_tokens + completion)
    ar_tokens = sequences * (run.ar_prompt_tokens + completion)
    av, ar = shapes.av, shapes.ar
    # Passes without gradients: the policy's log-probs, and the reference's unless there is none.
    frozen_passes = 1 if run.setting.reference == "none" else 2
    flops = av_tokens * (_flops_per_token(av.params, av.grad_params, run.av_lora is not None)
                         + frozen_passes * 2 * av.params)
    flops += ar_tokens * (_flops_per_token(ar.params, ar.grad_params, run.ar_lora is not None) + 2 * ar.params)
    rate = rate or SAMPLING_TOKENS_PER_S_8B * 8e9 / av.params
    seconds = sampled / (rate * run.processes) + flops / (run.processes * run.peak_tflops * 1e12 * mfu)
    return seconds, {"sampled": sampled, "AV": av_tokens, "AR": ar_tokens}
