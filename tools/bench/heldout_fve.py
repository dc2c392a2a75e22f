"""Held-out FVE of an exported reconstructor on the teacher's explanations, with a bootstrap interval.

    python tools/bench/heldout_fve.py --fit_config runs/smollm2-sft/sft/version_0/config.yaml \
        --ar runs/smollm2-sft/export/ar [--shuffled] [--resamples 2000]

Uses every held-out row (not the few batches a training run validates on), the held-out split's own
baseline variance ("rawvar"), and resamples documents to give a 95% interval. With --shuffled, texts are
paired with other rows' vectors: the control an AR that reads nothing from the text scores against.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser

from nla.data.datamodule import NLADataModule
from nla.evaluation.bootstrap import document_resamples, fve_interval
from nla.core.maths import normalized_mse
from nla.models.reconstructor import Reconstructor


def datamodule_from(fit_config: str) -> NLADataModule:
    with open(fit_config) as stream:
        data = yaml.safe_load(stream)["data"]
    parser = ArgumentParser()
    parser.add_class_arguments(NLADataModule, "data")
    config = parser.parse_object({"data": data["init_args"]})
    return parser.instantiate(config).data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit_config", required=True)
    parser.add_argument("--ar", required=True)
    parser.add_argument("--shuffled", action="store_true")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()

    datamodule = datamodule_from(args.fit_config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    reconstructor = Reconstructor.from_pretrained(args.ar).eval()
    mse, documents = [], []
    loader = datamodule.dataloader("heldout", shuffled=args.shuffled)
    with torch.no_grad():
        for batch in loader:
            pred = reconstructor(batch["ar"]["input_ids"], batch["ar"]["attention_mask"])
            mse.append(normalized_mse(pred, batch["vector"]))
            documents += [datamodule.cache.record(i)["doc_id"] for i in batch["index"].tolist()]
    mse = torch.cat(mse).double().numpy()
    variance = datamodule.heldout_variance
    interval = fve_interval(mse, variance, document_resamples(np.array(documents), args.resamples, seed=0))
    label = "shuffled" if args.shuffled else "real"
    print(f"{label}: {len(mse)} held-out rows from {len(set(documents))} documents, baseline variance "
          f"{variance:.4f}, mean MSE {mse.mean():.4f}, FVE {interval.value:.4f} "
          f"(95% bootstrap over documents {interval.low:.4f} to {interval.high:.4f})")


if __name__ == "__main__":
    main()
