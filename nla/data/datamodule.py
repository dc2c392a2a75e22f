"""``NLADataModule``: activation cache, teacher summaries, prompts and loaders shared by the SFT and GRPO modules.

``prepare_data`` (once per node) builds the cache when it is missing and writes the teacher summaries
of the splits that need text; ``setup`` opens both, picks the marker and builds the datasets. Training
batches come as a dict keyed by what they feed (``av``, ``ar``, ``rl``; layouts in
``nla.data.datasets``), one key per entry of ``train_splits``, so the SFT module gets ``{"av", "ar"}``
and the GRPO module ``{"rl"}`` from the same class.

Resuming: every training loader is stateful. Lightning saves its position (epoch, batches finished)
in each checkpoint and restores it when it restarts mid-epoch, so a resumed run sees exactly the
batches an uninterrupted one would have seen. The DataModule itself keeps no other state.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from nla.data.activation_cache import ActivationCache
from nla.data.cache_check import check_metadata, check_readable, validate_cache
from nla.data.cache_format import META
from nla.data.cache_meta import CacheDamage
from nla.data.cache_writer import build_cache
from nla.data.datasets import CacheRows, Collator, EpochSampler, ResumableLoader
from nla.data.source import DataSource
from nla.core.padding import pad_token_id
from nla.data.splits import HELDOUT_PARTS, evaluation_order
from nla.data.sequence_lengths import check_summary_lengths
from nla.data.summaries import read_summaries, summaries_directory, summary_file, write_summaries
from nla.core.errors import ConfigError, field_scope
from nla.models import adapters
from nla.models.fingerprint import model_fingerprint
from nla.models.loading import load_config, load_tokenizer
from nla.core.prompts import Prompts, explanation_text

log = logging.getLogger(__name__)

SOURCE = "data.source"
"""Where the ``DataSource`` sits in a fit config: the prefix of its keys in error messages."""

KINDS = {"av_sft": "av", "ar_sft": "ar", "rl": "rl", "heldout": "heldout", "validation": "heldout", "test": "heldout"}
"""The dataset kind (and training batch key) each split is served as."""

TRAINABLE = ("av_sft", "ar_sft", "rl")


class NLADataModule(LightningDataModule):
    """Serves the activation cache to the NLA training modules (see the module docstring).

    After ``setup``: ``tokenizer``, ``cache``, ``prompts`` (with the ``marker``), ``d``, ``layer``, the
    statistics ``auto_injection_scale`` and ``heldout_variance``, and ``excluded``: rows per split left
    out because the teacher's answer was dropped (fewer than two features) or failed.
    """

    def __init__(
        self,
        source: DataSource,
        train_splits: tuple[str, ...] = ("av_sft", "ar_sft"),
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        shuffled: bool = False,
        summaries_dir: str | None = None,
        progress: bool = True,
        val_shuffled: bool = False,
    ) -> None:
        """
        Args:
            source: Where the rows come from: target, corpus, cache, splits, teacher and prompts
                (``nla.data.source.DataSource``), usually the family's ``data.yaml``.
            train_splits: Splits served by ``train_dataloader``: ``av_sft`` (batch key ``av``), ``ar_sft``
                (``ar``) and/or ``rl`` (``rl``). SFT uses the first two, GRPO ``rl``.
            batch_size: Rows per training batch of each key (per process under data parallelism).
            eval_batch_size: Rows per held-out batch; unset: ``batch_size``.
            num_workers: DataLoader worker processes (each maps the cache files itself).
            pin_memory: Page-lock batches for faster copies to the GPU.
            seed: Seed of the training order (a permutation per epoch) and of the shuffled pairing.
            shuffled: Pair every training text with another row's vector: the shuffled-activation
                control. Held-out batches keep the true pairing.
            summaries_dir: Where teacher summaries are written; unset: ``summaries`` inside the cache.
            progress: Show progress bars while the teacher works.
            val_shuffled: ``val_dataloader`` also returns the held-out rows with shuffled vectors (as
                dataloader 1), so a module can log the real-vs-shuffled loss gap.
        """
        super().__init__()
        served = tuple(train_splits)
        if not served or len(set(served)) != len(served) or not set(served) <= set(TRAINABLE):
            names = ", ".join(TRAINABLE)
            raise ConfigError("data.train_splits", f"must be distinct names among {names}, got {list(served)}")
        eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        for name, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                   ("num_workers", num_workers, 0)):
            if value < least:
                raise ConfigError(f"data.{name}", f"must be at least {least}, got {value}")
        self.source = source
        self.target_args, self.corpus_args, self.cache_args = source.target, source.corpus, source.cache
        self.split_args, self.teacher_args, self.prompt_args = source.splits, source.teacher, source.prompts
        self.train_splits, self.batch_size, self.eval_batch_size = served, batch_size, eval_batch_size
        self.num_workers, self.pin_memory, self.seed, self.shuffled = num_workers, pin_memory, seed, shuffled
        self.summaries_root = Path(summaries_dir) if summaries_dir else Path(self.cache_args.directory) / "summaries"
        self.progress, self.val_shuffled = progress, val_shuffled
        self.cache: ActivationCache | None = None
        self.tokenizer = None
        self.prompts: Prompts | None = None
        self.excluded: dict[str, int] = {}
        self._rows: dict[str, tuple[np.ndarray, list[str] | None]] = {}
        self._validated_directory: Path | None = None

    @property
    def text_splits(self) -> list[str]:
        """Splits whose rows need a teacher summary: the SFT splits served, and heldout for evaluation."""
        return [split for split in self.train_splits if split != "rl"] + ["heldout"]

    def _layer(self, config) -> int:
        layer = self.cache_args.layer
        return adapters.default_layer(config) if layer == -1 else adapters.check_layer(config, layer,
                                                                                       f"{SOURCE}.cache.layer")

    def _cache_is_current(self, meta: dict) -> bool:
        """Whether the finished cache was built from this configuration, judged from what its
        ``meta.json`` records, without reading the corpus. On any doubt ``build_cache`` decides, with the
        full fingerprint (which also notices edited document text)."""
        cache, corpus, model = self.cache_args, self.corpus_args, self.target_args
        wanted_corpus = {key: value for key, value in asdict(corpus).items() if key != "streaming"}
        recorded = meta.get("model", {})
        with field_scope(f"{SOURCE}.target"):
            layer = self._layer(load_config(model))
        return (
            [recorded.get(key) for key in ("name_or_path", "gguf_file", "revision")]
            == [model.name_or_path, model.gguf_file, model.revision]
            and recorded.get("quantization", "none") == model.quantization
            and {key: meta.get("corpus", {}).get(key) for key in wanted_corpus} == wanted_corpus
            and meta.get("positions") == {"per_document": cache.positions_per_document, "seed": cache.seed}
            and meta.get("splits") == asdict(self.split_args)
            and meta.get("store_dtype") == cache.store_dtype
            and meta.get("layer") == layer
            and self._same_weights(recorded)
        )

    def _same_weights(self, recorded: dict) -> bool:
        """Whether the cache's vectors came from the weights now at the target's path; a cache of other
        weights is one line (rebuilt instead with ``cache.overwrite``)."""
        now = model_fingerprint(self.target_args)
        if now is None or recorded.get("fingerprint") == now:
            return True
        if self.cache_args.overwrite:
            return False
        was = recorded.get("fingerprint") or "not recorded (a cache from before nla 0.1.0)"
        raise ConfigError(f"{SOURCE}.cache.overwrite", f"{self.cache_args.directory} holds vectors of other weights "
                          f"than those now at {self.target_args.name_or_path} (base model fingerprint {was}, now "
                          f"{now}); set {SOURCE}.cache.overwrite: true to rebuild it, or point {SOURCE}.cache.directory "
                          "elsewhere")

    def cache_ready(self) -> bool:
        """Whether a finished cache of this configuration is on disk (``prepare_data`` then reuses it).
        A cache written by ``nla import`` is used whatever the corpus settings, for the model and layer
        it was imported for only (it cannot be rebuilt from a corpus). Damage to the cache's small files
        (``check_metadata``) is one line here, where the pre-flight asks, unless ``cache.repair`` is set:
        ``prepare_data`` then rebuilds what it can."""
        meta_path = Path(self.cache_args.directory) / META
        check_readable(meta_path.parent, f"{SOURCE}.cache")
        if not meta_path.is_file():
            return False
        try:
            meta = check_metadata(meta_path.parent, f"{SOURCE}.cache")
        except CacheDamage:
            if self.cache_args.repair:
                return False
            raise
        if "imported" in meta:
            with field_scope(f"{SOURCE}.target"):
                layer = self._layer(load_config(self.target_args))
            recorded = meta["model"].get("name_or_path")
            if recorded != self.target_args.name_or_path or meta["layer"] != layer:
                raise ConfigError(f"{SOURCE}.cache.directory", f"{meta_path.parent} was imported for {recorded!r} at "
                                  f"layer {meta['layer']}, not {self.target_args.name_or_path!r} at layer {layer}; "
                                  f"point {SOURCE}.target and {SOURCE}.cache.layer at those, or import again")
            weights, now = meta["model"].get("fingerprint"), model_fingerprint(self.target_args)
            if weights and now and weights != now:
                raise ConfigError(f"{SOURCE}.target.name_or_path", f"{meta_path.parent} was imported for other weights "
                                  f"than those now at {recorded} (base model fingerprint {weights}, now {now}); point "
                                  f"{SOURCE}.target at the model the datasets came from, or import again")
            return True
        return self._cache_is_current(meta)

    def prepare_data(self) -> None:
        """Build the cache if it is missing or from another configuration, then write the teacher
        summaries that are missing. Runs in one process per node, so the cache is written by that
        process alone; run ``nla cache`` under torchrun first to spread caching over several GPUs."""
        directory = Path(self.cache_args.directory)
        if self.cache_args.repair or not self.cache_ready():
            with field_scope(SOURCE):
                build_cache(self.target_args, self.corpus_args, self.cache_args, self.split_args, rank=0, world_size=1,
                            key=f"{SOURCE}.cache")
        cache = self._validated(ActivationCache(directory, field=f"{SOURCE}.cache.directory"))
        if "imported" in cache.meta:
            return  # its summaries came with the datasets (nla import)
        with field_scope(f"{SOURCE}.target"):
            tokenizer = load_tokenizer(self.target_args)
        write_summaries(cache, tokenizer, self.teacher_args, self.summaries_root, self.text_splits, self.progress)

    def setup(self, stage: str | None = None) -> None:
        """Open the cache and summaries, load the tokenizer and choose the marker (once)."""
        if self.cache is not None:
            return
        with field_scope(f"{SOURCE}.target"):
            config, self.tokenizer = load_config(self.target_args), load_tokenizer(self.target_args)
        self.cache = self._validated(ActivationCache(self.cache_args.directory, expect_d=adapters.hidden_size(config),
                                                     expect_layer=self._layer(config), field=f"{SOURCE}.cache.directory"))
        self.prompts = Prompts.build(self.tokenizer, self.prompt_args)
        directory = summaries_directory(self.summaries_root, self.teacher_args, self.cache)
        for split in self.text_splits:
            features = read_summaries(summary_file(directory, split))
            indices = self.cache.split_indices(split)
            kept = np.array([i for i in indices if int(i) in features], dtype=np.int64)
            self.excluded[split] = len(indices) - len(kept)
            texts = [explanation_text(features[int(i)]) for i in kept]
            if split == "heldout":
                documents = np.array([self.cache.record(int(i))["doc_id"] for i in kept])
                for part in ("heldout", *HELDOUT_PARTS):
                    order = evaluation_order(documents, part)
                    self._rows[part] = (kept[order], [texts[i] for i in order])
            else:
                self._rows[split] = (kept, texts)
            if self.excluded[split]:
                log.info("%s: %d of %d rows have no teacher summary and are left out",
                         split, self.excluded[split], len(indices))
        if "rl" in self.train_splits:
            self._rows["rl"] = (self.cache.split_indices("rl"), None)
        texts = {split: self._rows[split][1] for split in self.text_splits}
        check_summary_lengths(config, self.prompts, texts, self.teacher_args, SOURCE)

    def _validated(self, cache: ActivationCache) -> ActivationCache:
        """``cache`` after the checks of ``nla.data.cache_check`` (once per process: prepare_data and
        setup open the same files)."""
        if self._validated_directory != cache.directory:
            validate_cache(cache.directory, cache.meta, self.cache_args.checksums, key=f"{SOURCE}.cache")
            self._validated_directory = cache.directory
        return cache

    @property
    def marker(self):
        return self.prompts.marker

    @property
    def d(self) -> int:
        return self.cache.d

    @property
    def layer(self) -> int:
        return self.cache.layer

    @property
    def base_fingerprint(self) -> str | None:
        """The fingerprint of the weights the cache's vectors came from (``nla.models.fingerprint``)."""
        return self.cache.meta.get("model", {}).get("fingerprint")

    @property
    def auto_injection_scale(self) -> float:
        """``injection_scale: auto``: the 75th percentile of activation norms in av_sft (all vectors
        when that split is empty)."""
        stats = self.cache.stats("av_sft")
        return float((stats if stats["count"] else self.cache.stats("all"))["p75_norm"])

    @property
    def heldout_variance(self) -> float | None:
        """The FVE baseline (rawvar) of the held-out split itself (both halves); None when it is empty."""
        return self.cache.stats("heldout").get("variance")

    def split_documents(self, split: str, rows: int) -> int:
        """Distinct documents among the first ``rows`` rows of ``split`` in the order it is evaluated."""
        indices = self._rows[split][0][:rows] if split in self._rows else self.cache.split_indices(split)[:rows]
        return len({self.cache.record(int(i))["doc_id"] for i in indices})

    def dataset(self, split: str, shuffled: bool = False) -> CacheRows:
        """The rows of ``split`` as its dataset kind; ``shuffled`` pairs texts with other rows' vectors."""
        if split not in self._rows:
            raise ConfigError("data.train_splits", f"split '{split}' is not served; served: {', '.join(self._rows)}")
        indices, explanations = self._rows[split]
        if not len(indices):
            raise ConfigError(f"{SOURCE}.splits.{split}", "has no usable rows; give it a larger fraction or more documents")
        return CacheRows(KINDS[split], self.cache, self.prompts, indices, explanations, self.seed if shuffled else None)

    def dataloader(self, split: str, shuffled: bool = False, train: bool = False) -> DataLoader:
        """A loader over ``split``: seeded, resumable and rank-sharded order when ``train``, else in order."""
        dataset = self.dataset(split, shuffled)
        common = {
            "collate_fn": Collator(dataset.kind, pad_token_id(self.tokenizer), self.marker),
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }
        if not train:
            return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **common)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(dataset, self.seed, num_replicas=replicas, rank=rank)
        return ResumableLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, progress=self._batches_done, **common
        )

    def _batches_done(self) -> int:
        """Batches the training loop has finished in the current epoch (0 outside a trainer)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> CombinedLoader:
        """``{"av": ..., "ar": ..., "rl": ...}`` for the served splits; a shorter loader is cycled so an
        epoch covers every row of the longest."""
        loaders = {KINDS[split]: self.dataloader(split, self.shuffled, train=True) for split in self.train_splits}
        combined = CombinedLoader(loaders, mode="max_size_cycle")
        if self.trainer is not None:
            check_val_check_interval(self.trainer, max(map(len, loaders.values())), self.batch_size)
        return combined

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The ``validation`` half of the held-out rows (``splits.HELDOUT_PARTS``: curves and the best
        checkpoint are chosen on it, never on the ``test`` half a run reports), in a fixed order spread
        over the documents (``splits.evaluation_order``: the first N rows come from N documents, so
        ``limit_val_batches`` reads a fair sample), with the true pairing; with ``val_shuffled``, a
        list of that loader and the same rows with shuffled vectors."""
        if self.val_shuffled:
            return [self.dataloader("validation"), self.dataloader("validation", shuffled=True)]
        return self.dataloader("validation")

    def test_dataloader(self) -> DataLoader:
        """The ``test`` half of the held-out rows, in the same spread order: what ``nla test`` and the
        quickstart's comparison report."""
        return self.dataloader("test")


def check_val_check_interval(trainer, batches: int, batch_size: int) -> None:
    """An integer ``trainer.val_check_interval`` longer than the epoch, which Lightning refuses with a
    traceback once the loaders exist."""
    interval, every_epoch = trainer.val_check_interval, trainer.check_val_every_n_epoch
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    # As Lightning: no validation (limit_val_batches 0) means no interval to check.
    if isinstance(interval, int) and every_epoch is not None and trainer.limit_val_batches and interval > batches:
        raise ConfigError("trainer.val_check_interval", f"is {interval} training batches but an epoch has {batches} "
                          f"(data.batch_size {batch_size}); lower it, or set trainer.check_val_every_n_epoch: null "
                          "to count batches across epochs")
