"""The measurements of ``check.sh``, one step per call so the script can cap each in time.

    python tools/gpu/check.py STEP --shape SHAPE --device cuda --out results.jsonl [options]

Steps (each appends one JSON line per measurement to ``--out``):
- ``sampler``: rollout sampling tokens/s, B x G rows x exactly ``--tokens`` new tokens: the static
  engine (CUDA-graph decode), the plain loop (``--loop``), HF ``generate`` with its default cache and
  with a static cache (transformers compiles the decode step then); plus the decode time per step
  against the weight-streaming floor (bytes of weights / ``--hbm-tbps``).
- ``sft``: AV (labelled loss, packed on ``nla_varlen``) and AR training steps, MFU on the device's peak.
- ``grpo``: one GRPO step's phases (sampling / scoring / AV update / AR update) and peak memory; random
  weights never close their answers, so every answer is given a dummy explanation for the AR phases.
- ``varlen``: the AR's forward and backward, packed through ``nla_varlen`` against padded SDPA.
- ``report``: ``--out`` rendered as markdown (``--markdown``), led by the targets (``report.py``).

Random-weight models of real shapes (``tools/gpu/shapes.py``); bf16 compute. The trained weights'
dtype, the optimizer and LoRA (``--masters``, ``--optimizer``, ``--lora``) are built as training
builds them (``TrainingArgs``, ``nla.modules.optim``), so a combination training refuses is refused
here too. ``--device cpu`` with ``--shape tiny`` is the dry run the test suite makes, so the script
keeps working.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "gpu")]

from nla.core.errors import ConfigError  # noqa: E402
from nla.models import lora, sampling, varlen  # noqa: E402
from nla.models.packing import pack_layout  # noqa: E402
from nla.models.reconstructor import Reconstructor  # noqa: E402
from nla.models.verbalizer import Verbalizer  # noqa: E402
from nla.core.prompts import PromptArgs, Prompts  # noqa: E402
from nla.modules import flops, optim  # noqa: E402
from nla.modules.settings import TrainingArgs  # noqa: E402
import report  # noqa: E402
from shapes import LAYERS, build_model, tokenizer_for  # noqa: E402

DUMMY = ("The text describes a quiet harbour town where fishermen mend their nets at dawn and the "
         "baker opens early; the next words likely continue the description of the morning routine.")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device, repeats: int = 2) -> float:
    """Best wall seconds of ``run`` over ``repeats`` runs after one warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - began)
    return best


def autocast(device: torch.device):
    """bf16 compute over float32 master weights, as Lightning's bf16-mixed precision does (on CPU too:
    the dry run takes the device's code paths)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def record(out: Path, **values) -> None:
    print(json.dumps(values), flush=True)
    with out.open("a") as sink:
        sink.write(json.dumps(values) + "\n")


def setup(args):
    device = torch.device(args.device)
    tokenizer = tokenizer_for(args.shape)
    # On CPU nla_varlen attends through its reference kernel: the dry run takes the packed path too.
    attn = varlen.NAME if device.type == "cpu" or varlen.available() else "sdpa"
    return device, tokenizer, attn


def make_verbalizer(args, device, tokenizer, attn, dtype):
    model = build_model(args.shape, tokenizer, str(device), dtype, attn)
    prompts = Prompts.build(tokenizer, PromptArgs(), model)
    return Verbalizer(model, tokenizer, prompts.marker, 100.0), prompts


def peak_memory_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---- sampler -------------------------------------------------------------------------------------------


def step_sampler(args, out: Path) -> None:
    device, tokenizer, attn = setup(args)
    verbalizer, prompts = make_verbalizer(args, device, tokenizer, attn, torch.bfloat16 if device.type == "cuda"
                                          else torch.float32)
    rows, tokens = args.prompts * args.group, args.tokens
    ids = torch.tensor([prompts.av_prompt_ids] * args.prompts, device=device)
    mask = torch.ones_like(ids)
    vectors = torch.randn(args.prompts, verbalizer.model.config.hidden_size, device=device)
    verbalizer.stop_ids = {-1}  # no id stops a row: every engine runs exactly ``tokens`` steps
    common = dict(shape=args.shape, rows=rows, prompt_tokens=ids.shape[1], new_tokens=tokens)

    def ours(engine):
        def run():
            request = sampling.SamplingRequest(ids, mask, vectors, args.group, tokens, 1.0, False, 0)
            with torch.no_grad():
                result = engine.generate(verbalizer, request)
            assert result.shape == (rows, tokens)
        return run

    engines = {"static": sampling.StaticSampler()}
    if args.loop:
        engines["loop"] = sampling.LoopSampler()
    results = {}
    for name, engine in engines.items():
        seconds = timed(ours(engine), device)
        results[name] = seconds
        record(out, step="sampler", engine=name, seconds=seconds, tokens_per_s=rows * tokens / seconds, **common)
    # Decode time per step: a 1-token run is the prefill; the rest is tokens - 1 decode steps.
    prefill = timed(lambda: ours_once(verbalizer, ids, mask, vectors, args.group, 1), device)
    step_ms = (results["static"] - prefill) / (tokens - 1) * 1e3
    floor_ms = weight_bytes(verbalizer.model) / (args.hbm_tbps * 1e12) * 1e3
    record(out, step="decode", engine="static", decode_step_ms=step_ms, weight_streaming_floor_ms=floor_ms,
           ratio_to_floor=step_ms / floor_ms, **common)
    if args.hf:
        full_ids = ids.repeat_interleave(args.group, dim=0)
        for cache in ("dynamic", "static"):
            def hf(cache=cache):
                extra = {"cache_implementation": "static"} if cache == "static" else {}
                generated = verbalizer.model.generate(
                    input_ids=full_ids, attention_mask=torch.ones_like(full_ids), do_sample=True, temperature=1.0,
                    top_k=0, top_p=1.0, max_new_tokens=tokens, min_new_tokens=tokens,
                    pad_token_id=tokenizer.pad_token_id, **extra)
                assert generated.shape[1] - full_ids.shape[1] == tokens
            with torch.no_grad():
                seconds = timed(hf, device)
            record(out, step="sampler", engine=f"hf_generate_{cache}", seconds=seconds,
                   tokens_per_s=rows * tokens / seconds, static_speedup=seconds / results["static"], **common)


def ours_once(verbalizer, ids, mask, vectors, group, tokens):
    request = sampling.SamplingRequest(ids, mask, vectors, group, tokens, 1.0, False, 0)
    with torch.no_grad():
        sampling.StaticSampler().generate(verbalizer, request)


# ---- SFT MFU -----------------------------------------------------------------------------------------------


def training_of(args) -> TrainingArgs:
    """The command line's trained-weight dtype, optimizer and LoRA as a fit config would give them,
    checked by training's own rules (bf16 weights only with the stochastic-rounding AdamW, ...)."""
    adapter = lora.LoraArgs(r=args.lora, alpha=2.0 * args.lora) if args.lora else None
    return TrainingArgs(optimizer=args.optimizer, dtype="float32" if args.masters else "bfloat16",
                        verbalizer_lora=adapter, reconstructor_lora=adapter)


def master_dtype(training: TrainingArgs) -> torch.dtype:
    return torch.float32 if training.trained_dtype == "float32" else torch.bfloat16


def optimizer_for(name: str, module, training: TrainingArgs):
    """Training's optimizer (``nla.modules.optim.adamw``) over ``module``'s trainable parameters."""
    group = optim.param_group(name, module, 1e-5)
    return optim.adamw([group], training.betas, training.weight_decay, training.optimizer)


def synthetic_rows(prompts, count: int, explanation_tokens: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    vocab = min(len(prompts.tokenizer), 50_000)
    return [torch.randint(100, vocab, (explanation_tokens - 20 + int(torch.randint(0, 40, (1,), generator=generator)),),
                          generator=generator).tolist() for _ in range(count)]


def train_steps(name: str, module, forward, training: TrainingArgs, args, device) -> float:
    optimizer = optimizer_for(name, module, training)

    def step():
        with autocast(device):
            loss = forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, device, repeats=args.repeats)


def step_sft(args, out: Path) -> None:
    from nla.core.padding import pad

    if args.lora:
        # Its MFU counts every weight as trained (6 P FLOPs per token).
        raise ConfigError("--lora", "is for the grpo step; the sft step trains every weight")
    training = training_of(args)
    device, tokenizer, attn = setup(args)
    master = master_dtype(training)
    peak = flops.peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    verbalizer, prompts = make_verbalizer(args, device, tokenizer, attn, master)
    examples = [prompts.av_example(prompts.tokenizer.decode(row)) for row in
                synthetic_rows(prompts, args.micro, args.explanation_tokens, 0)]
    ids, mask = pad([e[0] for e in examples], prompts.tokenizer.pad_token_id, "right")
    labels, _ = pad([e[1] for e in examples], -100, "right")
    from nla.core.marker import find_marker_slots

    slots, layout = find_marker_slots(ids, prompts.marker), pack_layout(mask)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    vectors = torch.randn(len(examples), verbalizer.model.config.hidden_size, device=device)
    verbalizer.model.train()
    seconds = train_steps("verbalizer", verbalizer,
                          lambda: verbalizer(ids, mask, vectors, labels, slots=slots, layout=layout).loss,
                          training, args, device)
    report_mfu(out, "sft_av", args, device, peak, seconds, mask, flops.model_counts(verbalizer.model), attn)
    del verbalizer
    torch.cuda.empty_cache() if device.type == "cuda" else None

    layer = LAYERS[args.shape]
    model = build_model(args.shape, tokenizer, str(device), master, attn, layers=layer + 1)
    reconstructor = Reconstructor(model, layer).train()
    rows = [prompts.ar_ids(prompts.tokenizer.decode(row)) for row in
            synthetic_rows(prompts, args.micro, args.explanation_tokens, 1)]
    ids, mask = pad(rows, prompts.tokenizer.pad_token_id, "right")
    layout, last = pack_layout(mask), mask.sum(dim=1) - 1
    ids, mask = ids.to(device), mask.to(device)
    target = torch.randn(len(rows), reconstructor.d_model, device=device)
    seconds = train_steps("reconstructor", reconstructor,
                          lambda: Reconstructor.loss(reconstructor(ids, mask, last, layout), target),
                          training, args, device)
    report_mfu(out, "sft_ar", args, device, peak, seconds, mask, flops.model_counts(model, reconstructor.head), attn)


def report_mfu(out, name, args, device, peak, seconds, mask, counts, attn) -> None:
    lengths = mask.sum(dim=1).tolist()
    step_flops = flops.training_flops(lengths, counts)
    record(out, step=name, shape=args.shape, micro_batch=len(lengths), tokens=sum(lengths), seconds=seconds,
           tokens_per_s=sum(lengths) / seconds, tflops=step_flops / seconds / 1e12,
           mfu=None if peak is None else step_flops / seconds / (peak * 1e12), peak_tflops=peak, attention=attn,
           masters="float32" if args.masters else "bfloat16", optimizer=args.optimizer, lora=None,
           peak_memory_gb=peak_memory_gb(device))


# ---- GRPO step ---------------------------------------------------------------------------------------------


def step_grpo(args, out: Path) -> None:
    spec = importlib.util.spec_from_file_location("grpo_bench", ROOT / "tools" / "bench" / "grpo_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from nla.modules.grpo.reference import build_reference
    from nla.modules.grpo.settings import RolloutArgs

    training = training_of(args)
    device, tokenizer, attn = setup(args)
    master = master_dtype(training)
    verbalizer, prompts = make_verbalizer(args, device, tokenizer, attn, master)
    layer = LAYERS[args.shape]
    reconstructor = Reconstructor(build_model(args.shape, tokenizer, str(device), master, attn, layers=layer + 1), layer)
    if training.uses_lora:
        lora.wrap(verbalizer.model, training.verbalizer_lora, "--lora")
        lora.wrap(reconstructor.model, training.reconstructor_lora, "--lora")
    collect = verbalizer._collect

    def with_explanations(generated, stats):
        samples = collect(generated, stats)
        samples.parsed = [DUMMY] * len(samples.parsed)
        samples.truncated = [False] * len(samples.truncated)
        return samples

    verbalizer._collect = with_explanations  # random weights never write tags: the AR phases get dummies
    verbalizer.stop_ids = {-1}
    rollout_args = RolloutArgs(samples_per_prompt=args.group, micro_batch_size=args.micro, max_new_tokens=args.tokens,
                               sampler="static")  # what "auto" picks on CUDA; the dry run samples with it too
    batch = bench.rl_batch(prompts, args.prompts, reconstructor.d_model, verbalizer.injection_scale, device, 0)
    # As GRPOModule builds it under bf16 compute: a frozen copy stored in bf16, or with LoRA a frozen
    # copy of the adapter on the shared base.
    reference = build_reference(verbalizer, None, "none", "same", torch.bfloat16)
    optimizers = [optimizer_for(name, module, training)
                  for name, module in (("verbalizer", verbalizer), ("reconstructor", reconstructor))]
    for step in range(1 + args.repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with autocast(device):
            seconds, generated = bench.grpo_step(verbalizer, reconstructor, reference, prompts, optimizers, batch,
                                                 rollout_args, step, 1.0, device)
        record(out, step="grpo", shape=args.shape, warmup=step == 0, rows=args.prompts * args.group,
               new_tokens=args.tokens, micro_batch=args.micro, generated_tokens=generated,
               sampling_s=seconds["generate"], scoring_s=seconds["score"] + seconds["logprobs"],
               ar_scoring_s=seconds["score"], av_update_s=seconds["av_update"], ar_update_s=seconds["ar_update"],
               total_s=seconds["total"], peak_memory_gb=peak_memory_gb(device), attention=attn,
               masters="float32" if args.masters else "bfloat16", optimizer=args.optimizer, lora=args.lora or None)


# ---- packed varlen against padded SDPA ---------------------------------------------------------------------


def step_varlen(args, out: Path) -> None:
    from nla.core.padding import pad

    device, tokenizer, _ = setup(args)
    layer = LAYERS[args.shape]
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(40, 200, (args.micro,), generator=generator).tolist()
    high = min(5000, len(tokenizer))
    rows = [torch.randint(100, high, (n,), generator=generator).tolist() for n in lengths]
    ids, mask = pad(rows, tokenizer.pad_token_id, "right")
    layout, last = pack_layout(mask), mask.sum(dim=1) - 1
    ids, mask = ids.to(device), mask.to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    predictions = {}
    # On CPU nla_varlen runs its reference kernel: the dry run exercises the registration, not speed.
    for kernel in ("sdpa", varlen.NAME):
        reconstructor = Reconstructor(build_model(args.shape, tokenizer, str(device), dtype, kernel, layers=layer + 1),
                                      layer)

        def run():
            reconstructor.zero_grad(set_to_none=True)
            predicted = reconstructor(ids, mask, last, layout)
            predicted.float().pow(2).mean().backward()
            return predicted

        seconds = timed(run, device, repeats=args.repeats)
        with torch.no_grad():
            predictions[kernel] = reconstructor(ids, mask, last, layout).float()
        record(out, step="varlen", shape=args.shape, kernel=kernel if kernel == "sdpa" else f"{kernel} (packed)",
               sequences=len(lengths), real_tokens=sum(lengths), padded_tokens=len(lengths) * max(lengths),
               seconds=seconds, real_tokens_per_s=sum(lengths) / seconds)
        del reconstructor
    difference = (predictions[varlen.NAME] - predictions["sdpa"]).norm() / predictions["sdpa"].norm()
    record(out, step="varlen", shape=args.shape, kernel="relative difference", value=float(difference))


# ---- report ------------------------------------------------------------------------------------------------


def step_report(args, out: Path) -> None:
    print(report.write(out, Path(args.markdown)))


STEPS = {"sampler": step_sampler, "sft": step_sft, "grpo": step_grpo, "varlen": step_varlen, "report": step_report}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=sorted(STEPS))  # after the options too: check.sh puts them first
    parser.add_argument("--shape", default="qwen2.5-0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="results.jsonl", help="JSON lines, appended to")
    parser.add_argument("--markdown", default="results.md", help="report: where the table goes")
    parser.add_argument("--prompts", type=int, default=64, help="B, prompts (vectors) per step")
    parser.add_argument("--group", type=int, default=8, help="G, answers per prompt")
    parser.add_argument("--tokens", type=int, default=150, help="new tokens per answer")
    parser.add_argument("--micro", type=int, default=8, help="sequences per forward/backward pass")
    parser.add_argument("--explanation-tokens", type=int, default=150, help="about the SFT answer length")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up (best kept)")
    parser.add_argument("--optimizer", default="adamw", choices=optim.OPTIMIZERS,
                        help="model.training.optimizer (sft, grpo)")
    parser.add_argument("--masters", action=argparse.BooleanOptionalAction, default=True,
                        help="float32 master weights under bf16 autocast (else bf16 weights, which training "
                             "accepts only with adamw_bf16_stochastic)")
    parser.add_argument("--lora", type=int, default=0,
                        help="grpo: LoRA rank on both models (alpha 2 x rank; 0: every weight trains)")
    parser.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True, help="sampler: time HF generate")
    parser.add_argument("--loop", action="store_true", help="sampler: time the plain loop too")
    parser.add_argument("--hbm-tbps", type=float, default=4.8, help="memory bandwidth for the decode floor (H200)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    try:
        STEPS[args.step](args, Path(args.out))
    except ConfigError as error:
        raise SystemExit(f"check: {error}") from None


if __name__ == "__main__":
    main()
