"""Padding waste of the SFT batches: tokens a padded batch processes against the real tokens packing keeps.

    python tools/bench/packing.py [--config configs/smollm2/sft.yaml] [--epochs 1] [--documents 40]

Reads the ``data`` section of an SFT config, opens its activation cache (when that cache is missing,
a small one of ``--documents`` documents is built in a temporary directory with the same settings)
and walks the training loaders of the AV (``av_sft``) and AR (``ar_sft``) in their seeded training
order, batch size as configured. No model runs: only token counts.

- padded tokens: B x T per batch, what the padded path feeds through every block;
- real tokens: the attention-mask ones, what a padding-free packed batch feeds;
- the linear layers and MLPs cost FLOPs per token, so their saving is 1 - real/padded; attention
  scores cost per pair of tokens, B x T^2 padded against the sum of squared lengths packed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from jsonargparse import ArgumentParser

from nla.commands.config_files import read_config
from nla.data.datamodule import NLADataModule

SPLITS = ("av_sft", "ar_sft")


def datamodule(config: Path, scratch: Path, documents: int) -> tuple[NLADataModule, str]:
    """The config's DataModule, prepared; on a small scratch cache when its own cache is not built."""
    data = read_config(config)["data"]
    parser = ArgumentParser()
    parser.add_argument("--data", type=NLADataModule)
    dm = parser.instantiate(parser.parse_object({"data": data})).data
    source = f"cache {dm.cache_args.directory}"
    if not dm.cache_ready():
        init = data["init_args"]
        init["source"]["cache"]["directory"] = str(scratch / "cache")
        init["source"]["corpus"]["max_documents"] = documents
        init["progress"] = False
        dm = parser.instantiate(parser.parse_object({"data": data})).data
        source = f"scratch cache of {documents} documents ({config}'s own cache is not built)"
    dm.prepare_data()
    dm.setup("fit")
    return dm, source


def count(dm: NLADataModule, split: str, epochs: int) -> dict[str, int]:
    """Token and attention-pair counts over ``epochs`` of the split's training loader."""
    totals = dict(batches=0, rows=0, padded=0, real=0, padded_pairs=0, packed_pairs=0)
    loader = dm.dataloader(split, train=True)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            mask = batch["attention_mask"]
            rows, width = mask.shape
            lengths = mask.sum(dim=1)
            totals["batches"] += 1
            totals["rows"] += rows
            totals["padded"] += rows * width
            totals["real"] += int(lengths.sum())
            totals["padded_pairs"] += rows * width * width
            totals["packed_pairs"] += int((lengths * lengths).sum())
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/smollm2/sft.yaml"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--documents", type=int, default=40, help="documents of the scratch cache, if one is built")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nla-packing-") as scratch:
        dm, source = datamodule(args.config, Path(scratch), args.documents)
        print(f"{args.config}: {source}, batch size {dm.batch_size}, {args.epochs} epoch(s)")
        header = f"{'split':8} {'batches':>7} {'rows':>6} {'padded tok':>11} {'real tok':>10} {'waste':>7} " \
                 f"{'attn pairs saved':>17}"
        print(header)
        for split in SPLITS:
            c = count(dm, split, args.epochs)
            waste = 1 - c["real"] / c["padded"]
            pairs = 1 - c["packed_pairs"] / c["padded_pairs"]
            print(f"{split:8} {c['batches']:>7} {c['rows']:>6} {c['padded']:>11} {c['real']:>10} {waste:>7.1%} "
                  f"{pairs:>17.1%}")
        print("waste = 1 - real/padded: the share of per-token FLOPs (linears, MLP) packing removes")


if __name__ == "__main__":
    main()
