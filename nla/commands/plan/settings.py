"""What ``nla plan`` needs from a config file, read without building anything.

A fit config (SFT or GRPO, by ``model.class_path``) or an ``nla cache`` config is read as YAML, its data
block read from the file it names (``nla.commands.config_files``); a key it leaves out takes the
default of the class that would receive it (the modules' signatures and the argument dataclasses), so
the plan sees what ``nla fit`` would run.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from nla.commands.config_files import read_config
from nla.commands.plan.memory import OPTIMIZER_BYTES, Setting
from nla.core.errors import ConfigError
from nla.modules.grpo.settings import RolloutArgs
from nla.modules.settings import TrainingArgs

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
EXPLANATION_TOKENS = {("extractive", "brief"): 40, ("extractive", "full"): 110}
"""Typical explanation length per teacher (tokens): the extractive styles as measured on Austen; real
teachers write the reference's 2-3 features, about 130 tokens (NLA_METHOD: 120-150)."""
REAL_TEACHER_TOKENS = 130
CHAT_TEMPLATE_TOKENS = 30
"""Tokens a chat template adds around one user message (role headers, Llama-3's system preamble)."""
LONGEST_ROW = 1.25
"""A padded batch is as long as its longest row: this many times the typical explanation."""


@dataclass(frozen=True)
class Lora:
    rank: int
    targets: list[str]


@dataclass(frozen=True)
class Run:
    """One config's training (or caching) shape."""

    stage: str
    """``sft``, ``grpo`` or ``cache``."""
    model: str
    revision: str | None
    layer: int
    accelerator: str
    processes: int
    """``trainer.devices`` x ``trainer.num_nodes``."""
    setting: Setting
    av_lora: Lora | None
    ar_lora: Lora | None
    train_av: bool
    train_ar: bool
    batch_size: int
    """Rows (SFT) or prompts (GRPO) per micro-batch per process; documents per batch for caching."""
    accumulate: int
    samples_per_prompt: int
    micro_batch_size: int
    max_new_tokens: int
    prompt_tokens: int
    """AV prompt tokens (chat template included)."""
    ar_prompt_tokens: int
    """AR template tokens around the explanation."""
    explanation_tokens: int
    """A typical explanation (teacher or AV)."""
    peak_tflops: float
    cache_tokens: int
    """Tokens per caching forward (``cache.batch_tokens``)."""

    @property
    def sft_av_length(self) -> int:
        return self.prompt_tokens + round(self.explanation_tokens * LONGEST_ROW) + 4

    @property
    def sft_ar_length(self) -> int:
        return self.ar_prompt_tokens + round(self.explanation_tokens * LONGEST_ROW)

    @property
    def rollout_length(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


def read_run(path: str | Path) -> Run:
    config = read_config(path)
    if "trainer" not in config and "source" in config:
        return _cache_run(config["source"])
    if "trainer" not in config and "target" in config and "corpus" in config:
        return _cache_run(config)  # a data block (data.yaml) plans as its cache
    model = config.get("model") or {}
    class_path = model.get("class_path", "")
    if class_path.endswith("SFTModule"):
        from nla.modules.sft import SFTModule as module_class
        stage = "sft"
    elif class_path.endswith("GRPOModule"):
        from nla.modules.grpo.module import GRPOModule as module_class
        stage = "grpo"
    else:
        raise ConfigError("model.class_path", f"must name nla.modules.sft.SFTModule or nla.modules.grpo.GRPOModule "
                          f"(or give an `nla cache` config), got {class_path!r}")
    init = model.get("init_args") or {}
    hp = _with_defaults(module_class.__init__, init)
    # Nested settings: the given keys over the dataclass's defaults.
    training = {**_dataclass_defaults(TrainingArgs), **(init.get("training") or {})}
    rollout = {**_dataclass_defaults(RolloutArgs), **(init.get("rollout") or {})} if stage == "grpo" else {}
    trainer = config.get("trainer") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    from nla.data.datamodule import NLADataModule

    dm = _with_defaults(NLADataModule.__init__, data)
    source = dm.get("source") or {}
    target = source.get("target") or {}
    if "name_or_path" not in target:
        raise ConfigError("data.init_args.source.target.name_or_path", "is missing")
    strategy = trainer.get("strategy")
    strategy_args = (strategy.get("init_args") or {}) if isinstance(strategy, dict) else {}
    fsdp = isinstance(strategy, dict) and strategy.get("class_path", "").endswith("NLAFSDPStrategy")
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    processes = (devices if isinstance(devices, int) and devices > 0 else 1) * int(nodes)
    precision = str(trainer.get("precision", "32-true"))
    bf16_compute = precision.startswith("bf16") or (fsdp and strategy_args.get("param_dtype", "bfloat16") == "bfloat16")
    # The frozen reference is stored in the policy's compute dtype (nla.modules.precision), whatever
    # data.target.dtype (the caching forward's) says.
    frozen = 2 if bf16_compute else 4
    optimizer = training["optimizer"]
    if optimizer not in OPTIMIZER_BYTES:
        raise ConfigError("model.init_args.training.optimizer", f"must be one of {', '.join(OPTIMIZER_BYTES)}, "
                          f"got {optimizer!r}")
    av_lora, ar_lora = _lora(training.get("verbalizer_lora")), _lora(training.get("reconstructor_lora"))
    reference = "copy"
    if stage == "grpo":
        quantized = hp.get("reference_quantization", "none")
        reference = ("none" if (hp.get("rollout") or {}).get("kl_coef", 0.01) == 0 else "adapter" if av_lora
                     else quantized if quantized != "none" else "cpu" if hp.get("reference_device") == "cpu" else "copy")
    accelerator = str(trainer.get("accelerator", "auto"))
    setting = Setting(
        shards=processes if fsdp else 1,
        trained_bytes=2 if precision == "bf16-true" or training.get("dtype") == "bfloat16" else 4,
        frozen_bytes=frozen, compute_bytes=2 if bf16_compute else 4, optimizer=optimizer,
        av_lora=av_lora is not None, ar_lora=ar_lora is not None,
        checkpointing=bool(fsdp and strategy_args.get("activation_checkpointing", False)),
        flash=accelerator != "cpu", reference=reference, cpu_offload=bool(fsdp and strategy_args.get("cpu_offload")))
    teacher = source.get("teacher") or {}
    prompts = source.get("prompts") or {}
    return Run(
        stage=stage, model=str(target["name_or_path"]), revision=target.get("revision"),
        layer=int((source.get("cache") or {}).get("layer", -1)), accelerator=accelerator, processes=processes,
        setting=setting, av_lora=av_lora, ar_lora=ar_lora,
        train_av=bool(hp.get("train_verbalizer", True)), train_ar=bool(hp.get("train_reconstructor", True)),
        batch_size=int(dm.get("batch_size", 8)), accumulate=int(trainer.get("accumulate_grad_batches", 1) or 1),
        samples_per_prompt=int(rollout.get("samples_per_prompt", 1)),
        micro_batch_size=int(rollout.get("micro_batch_size", 1)),
        max_new_tokens=int(rollout.get("max_new_tokens", hp.get("max_new_tokens", 150))),
        prompt_tokens=_prompt_tokens(prompts, "av_template") + CHAT_TEMPLATE_TOKENS,
        ar_prompt_tokens=_prompt_tokens(prompts, "ar_template"),
        explanation_tokens=EXPLANATION_TOKENS.get((teacher.get("provider", "extractive"), teacher.get("model") or "full"),
                                                  REAL_TEACHER_TOKENS),
        peak_tflops=float(hp.get("peak_tflops") or 989.0), cache_tokens=0)


def _cache_run(source: dict) -> Run:
    from nla.data.cache_plan import CacheArgs

    target, cache = source.get("target") or {}, {**_dataclass_defaults(CacheArgs), **(source.get("cache") or {})}
    if "name_or_path" not in target:
        raise ConfigError("source.target.name_or_path", "is missing")
    frozen = DTYPE_BYTES.get(target.get("dtype", "auto"), 2)
    quantized = target.get("quantization", "none")
    setting = Setting(frozen_bytes=frozen, compute_bytes=min(frozen, 4), flash=True,
                      reference=quantized if quantized != "none" else "copy")
    return Run(stage="cache", model=str(target["name_or_path"]), revision=target.get("revision"),
               layer=int(cache.get("layer", -1)), accelerator="auto", processes=1, setting=setting, av_lora=None,
               ar_lora=None, train_av=False, train_ar=False, batch_size=1, accumulate=1, samples_per_prompt=1,
               micro_batch_size=1, max_new_tokens=0, prompt_tokens=0, ar_prompt_tokens=0, explanation_tokens=0,
               peak_tflops=989.0, cache_tokens=int(cache.get("batch_tokens", 8192)))


def _with_defaults(function, given: dict) -> dict:
    defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **given}


def _dataclass_defaults(cls) -> dict:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def _lora(value) -> Lora | None:
    if not value:
        return None
    from nla.models.lora import LoraArgs

    args = {**_dataclass_defaults(LoraArgs), **value}
    targets = args.get("target_modules") or LoraArgs().target_modules
    return Lora(int(args.get("r", LoraArgs.r)), list(targets))


def _prompt_tokens(prompts: dict, key: str) -> int:
    from nla.core.prompts import PromptArgs

    template = prompts.get(key) or getattr(PromptArgs, key)
    # About four characters per token in English BPE vocabularies.
    return max(1, round(len(template.replace("{explanation}", "")) / 4))
