"""Pre-flight: the cheap checks of a run, before any weights load or any activation is cached.

``nla cache`` and ``nla fit`` (and each stage of ``nla quickstart``) call these first, so a mistake that
would otherwise surface hours later, after the cache is built, stops the run within seconds:

- config consistency the modules can judge from their arguments alone (``check_data`` of the module),
  and what each module says it trains, loads, writes and generates (its ``fit_plan``);
- paths that must exist: the target model (its config and tokenizer are read, never its weights; a
  tokenizer with more tokens than the embedding has rows is refused), a local corpus, the export a
  module starts from (GRPO's ``sft_export``);
- ``trainer.val_check_interval`` against the batches an epoch can hold (``preflight_epoch``);
- the teacher, when summaries still have to be written: its API key variable and a reachability
  probe of its endpoint (``PROBE_TIMEOUT_S``; any HTTP answer counts as reachable);
- sequence lengths against the model's position limit (``max_position_embeddings`` from its config):
  documents (``corpus.max_length``), AV prompt + ``max_new_tokens``, AR prompt + explanations (the
  extractive teacher's estimated from a typical summary, ``preflight_lengths``);
- disk space for the cache (when its size is bounded by ``corpus.max_documents``), checkpoints and
  exports, estimated from parameter counts of the model built on the meta device (no memory).

Every failure is a one-line ``ConfigError``/``NLAError`` naming the key; success prints one line.
``nla.data.datamodule.check_val_check_interval`` runs later, once the data is open, for the epochs the
pre-flight cannot bound (no finished cache and no ``corpus.max_documents``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import torch

from nla.commands.preflight_epoch import check_epoch_length
from nla.commands.preflight_lengths import check_extractive_summaries, check_vocabulary
from nla.core.sizes import human_size
from nla.data.cache_check import check_readable
from nla.data.cache_format import META
from nla.data.cache_plan import CacheArgs
from nla.data.cache_writer import vector_bytes
from nla.data.corpora import NAMED_CORPORA
from nla.data.corpus import CorpusArgs, looks_local
from nla.data.summaries import summaries_directory, summary_file
from nla.data.teachers.base import DEFAULT_BASE_URLS, TeacherArgs, api_key_env_name
from nla.core.errors import ConfigError, NLAError, field_scope
from nla.core.prompts import Prompts
from nla.data.datamodule import SOURCE
from nla.models import adapters
from nla.models.loading import ModelArgs, load_config, load_tokenizer
from nla.modules.fit_plan import FitPlan
from nla.commands.preflight_exports import check_exports

PROBE_TIMEOUT_S = 5.0
"""Seconds the teacher endpoint has to answer the reachability probe."""
SAVED_BYTES_PER_TRAINED_PARAMETER = 12
"""A checkpoint keeps a float32 master (4 bytes) and AdamW's two moments (8 bytes) per trained weight."""


def _positions(config) -> str:
    limit = adapters.position_limit(config)
    return f"{limit} positions" if limit else "no position limit"


def _say(text: str) -> None:
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        print(f"pre-flight: {text}", file=sys.stderr, flush=True)


def _model_config(model: ModelArgs, key: str):
    with field_scope(key):
        return load_config(model)


def check_corpus(corpus: CorpusArgs, key: str) -> None:
    if corpus.path not in NAMED_CORPORA and looks_local(corpus.path) and not Path(corpus.path).expanduser().exists():
        raise ConfigError(f"{key}.path", f"{corpus.path!r} does not exist; check the path")


def check_layer(config, cache: CacheArgs, key: str) -> int:
    if cache.layer == -1:
        return adapters.default_layer(config)
    return adapters.check_layer(config, cache.layer, f"{key}.layer")


def check_document_length(config, corpus: CorpusArgs, key: str) -> None:
    adapters.check_length(config, corpus.max_length, f"{key}.max_length", f"corpus.max_length ({corpus.max_length})")


def free_bytes(path: Path) -> tuple[Path, int]:
    """The nearest existing ancestor of ``path`` (where it will be created) and its free bytes."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path, shutil.disk_usage(path).free


def check_disk(needs: dict[str, tuple[Path, int]]) -> str:
    """``needs`` maps a key to (directory, bytes). Needs on the same file system add up; the first
    file system short of space is an error naming its keys. Returns a summary."""
    by_device: dict[int, list] = {}
    for key, (directory, size) in needs.items():
        existing, free = free_bytes(directory)
        by_device.setdefault(os.stat(existing).st_dev, []).append((key, existing, size, free))
    parts = []
    for entries in by_device.values():
        total, free, existing = sum(e[2] for e in entries), entries[0][3], entries[0][1]
        keys = ", ".join(e[0] for e in entries)
        if total > free:
            raise NLAError(f"{keys}: needs about {human_size(total)} on {existing} but {human_size(free)} are free; "
                           "free space or point it elsewhere")
        parts.append(f"{human_size(total)} of {human_size(free)} free on {existing}")
    return "; ".join(parts)


def parameter_count(config, keep_layers: int | None = None) -> int | None:
    """Parameters of the causal LM ``config`` describes (its first ``keep_layers`` blocks), counted on
    the meta device; None when transformers cannot build it from the config alone."""
    from transformers import AutoModelForCausalLM

    if keep_layers is not None:
        config = adapters.truncated_config(config, keep_layers)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError, ImportError):
        return None
    return sum(p.numel() for p in model.parameters())


def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url`` cannot be reached (None when any HTTP answer came back, error statuses included)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return str(reason) or type(reason).__name__


def check_teacher(teacher: TeacherArgs, key: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """A remote teacher's key variable is set and its server answers; a local ``hf`` teacher's
    directory exists. Returns a summary."""
    if teacher.provider in DEFAULT_BASE_URLS:
        variable = api_key_env_name(teacher)
        if variable is not None and not os.environ.get(variable):
            raise ConfigError(f"{key}.api_key_env", f"the {teacher.provider} teacher needs an API key: set the "
                              f"environment variable {variable}")
        root = (teacher.base_url or DEFAULT_BASE_URLS[teacher.provider]).rstrip("/")
        if not root.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.base_url", f"'{teacher.base_url}' is not an http:// or https:// URL")
        problem = probe(root, timeout_s)
        if problem is not None:
            raise NLAError(f"{key}.base_url: cannot reach {root} ({problem}) within {timeout_s:g} s; start the "
                           "server, fix the URL or check the network")
        return f"teacher {root} reachable"
    if teacher.provider == "hf" and teacher.model and looks_local(teacher.model):
        if not Path(teacher.model).expanduser().exists():
            raise ConfigError(f"{key}.model", f"'{teacher.model}' does not exist; check the path")
    return f"teacher {teacher.provider}"


def preflight_cache(target: ModelArgs, corpus: CorpusArgs, cache: CacheArgs,
                    key: str = "") -> tuple[object, object, int]:
    """The checks ``nla cache`` needs before reading the corpus or loading the model; returns the
    model's config, its tokenizer and K. ``key`` prefixes the keys in messages (``data.`` inside ``nla fit``)."""
    config = _model_config(target, f"{key}target")
    with field_scope(f"{key}target"):
        tokenizer = load_tokenizer(target)
    check_vocabulary(config, tokenizer, f"{key}target.name_or_path", target.name_or_path)
    layer = check_layer(config, cache, f"{key}cache")
    check_corpus(corpus, f"{key}corpus")
    check_readable(Path(cache.directory), f"{key}cache")
    check_document_length(config, corpus, f"{key}corpus")
    return config, tokenizer, layer


def _cache_disk(corpus: CorpusArgs, cache: CacheArgs, config) -> int:
    """An upper bound on the cache's size when ``corpus.max_documents`` bounds it, else 0."""
    if corpus.max_documents is None or (Path(cache.directory) / META).is_file():
        return 0
    return vector_bytes(corpus.max_documents * cache.positions_per_document, adapters.hidden_size(config),
                        cache.store_dtype)


def run_cache_preflight(target: ModelArgs, corpus: CorpusArgs, cache: CacheArgs) -> None:
    """``nla cache``: the checks above and the disk bound, then one summary line."""
    config, _, _ = preflight_cache(target, corpus, cache, "source.")
    disk = check_disk({"source.cache.directory": (Path(cache.directory), _cache_disk(corpus, cache, config))})
    _say(f"ok: {target.name_or_path}, {_positions(config)}, corpus.max_length {corpus.max_length}; disk {disk}")


def _summaries_needed(datamodule) -> bool:
    meta_path = Path(datamodule.cache_args.directory) / META
    if not meta_path.is_file() or not datamodule.cache_ready():
        return True
    cache = SimpleNamespace(meta=json.loads(meta_path.read_text()), directory=meta_path.parent)
    directory = summaries_directory(datamodule.summaries_root, datamodule.teacher_args, cache)
    return not all(summary_file(directory, split).is_file() for split in datamodule.text_splits)


def _check_prompt_lengths(config, tokenizer, datamodule, plan: FitPlan, name: str, teacher_writes: bool) -> None:
    """AV prompt + generated answer, and AR prompt + explanation, within the position limit (the
    teacher's summaries only when it is about to write them: imported or written ones are what they are)."""
    if adapters.position_limit(config) is None:
        return
    with field_scope(SOURCE):
        prompts = Prompts.build(tokenizer, datamodule.prompt_args)
    av, ar = len(prompts.av_prompt_ids), len(prompts.ar_ids(""))
    teacher = datamodule.teacher_args
    checks = []
    if plan.generated is not None:
        key, generated = plan.generated
        checks.append((key, av, generated, "the AV prompt", key.rpartition(".")[2]))
        if plan.reconstructor_reads_answers:
            checks.append((key, ar, generated, "the AR prompt", f"answers of {key.rpartition('.')[2]}"))
    if not plan.reconstructor_reads_answers and teacher_writes and teacher.provider != "extractive":
        # Both read the teacher's summaries, at most max_tokens long (the extractive teacher's: below).
        for prompt, length in (("the AV prompt", av), ("the AR prompt", ar)):
            checks.append((f"{SOURCE}.teacher.max_tokens", length, teacher.max_tokens, prompt,
                           "summaries of max_tokens"))
    for field, prompt_tokens, extra, prompt, what in checks:
        adapters.check_length(config, prompt_tokens + extra, field,
                              f"{prompt} of {name} ({prompt_tokens} tokens) plus {what} ({extra})")
    if not plan.reconstructor_reads_answers and teacher_writes and teacher.provider == "extractive":
        check_extractive_summaries(config, prompts, teacher, name)


def _fit_disk(trainer, plan: FitPlan, datamodule, config, layer: int) -> dict[str, tuple[Path, int]]:
    from nla.commands.resume import checkpoint_directory

    depth = {"verbalizer": None, "reconstructor": layer + 1}
    counts = [parameter_count(config, depth[model]) for model in plan.trains]
    needs: dict[str, tuple[Path, int]] = {}
    cache_bytes = _cache_disk(datamodule.corpus_args, datamodule.cache_args, config)
    if cache_bytes:
        needs[f"{SOURCE}.cache.directory"] = (Path(datamodule.cache_args.directory), cache_bytes)
    if None in counts or not counts:
        return needs
    parameters = sum(counts)
    if trainer.checkpoint_callbacks:
        # With LoRA almost nothing trains: the checkpoint is about the frozen weights alone.
        per_weight = 4 if plan.adapters_only else SAVED_BYTES_PER_TRAINED_PARAMETER
        needs["checkpoints"] = (checkpoint_directory(trainer, trainer.checkpoint_callbacks[0]), parameters * per_weight)
    for key, directory in plan.exports.items():
        needs[key] = (Path(directory), parameters * 4)
    return needs


def preflight_fit(trainer, module, datamodule, will_exist: tuple[str, ...] = ()) -> None:
    """``nla fit``'s checks for an NLA module on an ``NLADataModule`` (other modules pass untouched).
    ``will_exist`` names paths an earlier stage produces (the quickstart's SFT export for its GRPO)."""
    if datamodule is None or not hasattr(datamodule, "cache_args") or not hasattr(module, "fit_plan"):
        return
    plan = module.fit_plan()
    config, tokenizer, layer = preflight_cache(datamodule.target_args, datamodule.corpus_args, datamodule.cache_args,
                                               f"{SOURCE}.")
    module.check_data(datamodule)
    check_epoch_length(trainer, datamodule)
    check_exports(plan, datamodule, will_exist)
    name = datamodule.target_args.name_or_path
    needed = _summaries_needed(datamodule)
    _check_prompt_lengths(config, tokenizer, datamodule, plan, name, needed)
    teacher = check_teacher(datamodule.teacher_args, f"{SOURCE}.teacher") if needed else "summaries written"
    disk = check_disk(_fit_disk(trainer, plan, datamodule, config, layer))
    _say(f"ok: {name} layer {layer}, {_positions(config)}; {teacher}; disk {disk or 'not estimated'}")
