"""``nla import``: reference-format datasets into an activation cache that ``nla fit`` trains on."""

from __future__ import annotations

from pathlib import Path

from nla.data.reference_format.convert import check_output, write_imported_cache
from nla.data.reference_format.dataset import check_against, read_dataset
from nla.core.errors import ConfigError, field_scope
from nla.models import adapters
from nla.models.fingerprint import model_fingerprint
from nla.models.loading import ModelArgs, load_config, load_tokenizer


def import_datasets(datasets: list[str], target: ModelArgs, output: str, layer: int | None = None,
                    heldout_fraction: float = 0.05, seed: int = 0, shard_documents: int = 1000) -> None:
    """Convert reference-format datasets (parquet files with ``.nla_meta.yaml`` sidecars) into an
    activation cache; their teacher explanations become its summaries, so SFT needs no teacher.

    Args:
        datasets: The parquet files, one per stage (``av_sft``, ``ar_sft``, ``rl``; ``base`` files
            become rl rows); each needs its ``<file>.nla_meta.yaml`` beside it.
        target: The target model the vectors came from: its tokenizer and width are checked against
            the sidecars (only config and tokenizer files are read, no weights).
        output: The cache directory to write: new, empty, or a cache (replaced once the new one is
            complete); a folder of other files is refused. Point ``data.source.cache.directory`` at it.
        layer: K; the sidecars' ``extraction.layer_index`` must equal it (default: theirs).
        heldout_fraction: Share of the av_sft documents kept out of training as the held-out split.
        seed: Seed of the held-out draw (a hash of seed and document id).
        shard_documents: Documents per cache shard.
    """
    if not datasets:
        raise ConfigError("datasets", "give at least one parquet file")
    if not 0 <= heldout_fraction < 1:
        raise ConfigError("heldout_fraction", f"must lie in [0, 1), got {heldout_fraction}")
    if shard_documents < 1:
        raise ConfigError("shard_documents", f"must be at least 1, got {shard_documents}")
    check_output(Path(output))
    read = [read_dataset(path) for path in datasets]
    layers = {ds.layer for ds in read}
    if len(layers) > 1:
        raise ConfigError("datasets", f"mix layers {sorted(layers)}; import one layer at a time")
    wanted = layers.pop() if layer is None else layer
    with field_scope("target"):
        config, tokenizer = load_config(target), load_tokenizer(target)
        adapters.check_layer(config, wanted, "layer")
    for dataset in read:
        check_against(dataset, tokenizer, adapters.hidden_size(config), wanted)
    identity = {"name_or_path": target.name_or_path, "gguf_file": target.gguf_file, "revision": target.revision,
                "quantization": target.quantization, "fingerprint": model_fingerprint(target)}
    meta = write_imported_cache(
        read, Path(output), identity, config.model_type, adapters.num_layers(config), heldout_fraction, seed,
        shard_documents, lambda text: tokenizer.encode(text, add_special_tokens=True))
    counts = ", ".join(f"{split} {meta['stats'].get(split, {}).get('count', 0):,}"
                       for split in ("av_sft", "ar_sft", "rl", "heldout"))
    print(f"nla import: {meta['counts']['vectors']:,} vectors from {len(read)} file(s) into {output} ({counts}); "
          f"train with data.source.cache.directory: {output} and data.source.cache.layer: {wanted}")
