"""Held-out FVE of an UNTRAINED reconstructor under different AR prompt shapes and tail lengths.

    python tools/bench/ar_prompt.py [--cache cache/quickstart-smollm2-L10] [--rows 96] [--tails 4 6 8]

The AR starts as the target's first K+1 blocks with an identity head, so before any training its
prediction is the target's own residual at the AR prompt's last token. This measures how much that
start is worth for two prompt shapes: the default (a suffix after the explanation, so the last token
is a tag) and one that ends with the explanation, where the brief extractive style's last feature is
the text's final words (so the last token is the target's own final token in a few words of context).
"""

from __future__ import annotations

import argparse

import torch

from nla.data.activation_cache import ActivationCache
from nla.data.teachers.extractive import describe_briefly
from nla.core.maths import fve, fve_variance, normalized_mse
from nla.models.loading import ModelArgs, load_tokenizer
from nla.models.reconstructor import Reconstructor
from nla.core.padding import pad, pad_token_id
from nla.core.prompts import DEFAULT_AR_TEMPLATE, explanation_text

ENDS_WITH_EXPLANATION = "Notes on what a language model was thinking:\n{explanation}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="cache/quickstart-smollm2-L10")
    parser.add_argument("--model", default="packaged:smollm2")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--tails", type=int, nargs="+", default=[4, 6, 8])
    args = parser.parse_args()

    cache = ActivationCache(args.cache)
    backbone = ModelArgs(args.model, dtype="float32")
    tokenizer = load_tokenizer(backbone)
    reconstructor = Reconstructor.from_target(backbone, cache.layer).eval()
    rows = cache.split_indices("heldout")[: args.rows]
    targets = cache.vectors(rows)
    variance = float(fve_variance(targets))
    records = [cache.record(int(i)) for i in rows]
    print(f"{len(rows)} held-out rows of {args.cache} (layer {cache.layer}), baseline variance {variance:.4f}\n")
    print("| AR prompt | " + " | ".join(f"last {n} words" for n in args.tails) + " |")
    print("|---|" + "---|" * len(args.tails))
    for name, template in (("suffix after the explanation (default)", DEFAULT_AR_TEMPLATE),
                           ("ends with the explanation", ENDS_WITH_EXPLANATION)):
        cells = []
        for tail in args.tails:
            texts = [template.format(explanation=explanation_text(
                describe_briefly(r["context"], tokenizer.decode([r["token_id"]]), tail))) for r in records]
            ids, mask = pad([tokenizer(text)["input_ids"] for text in texts], pad_token_id(tokenizer), "right")
            with torch.no_grad():
                predictions = reconstructor(ids, mask)
            cells.append(f"FVE {float(fve(normalized_mse(predictions, targets).mean(), variance)):+.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
