"""What the unfinished answers are: greedy answers of exported AVs on held-out rows, the ones cut at
the cap counted, and how many of those loop.

    python tools/bench/unfinished_answers.py --fit_config runs/quickstart/grpo/version_0/config.yaml \
        --av runs/quickstart/sft/export/av runs/quickstart/grpo/export/av [--split validation] [--rows 192]

The quickstart's table scores a cut answer as an orthogonal guess; whether GRPO's lost valid answers
are long explanations that need a higher cap or repetition loops (which no cap finishes) decides the
fix. An answer loops when some three-word sequence occurs at least ``--repeats`` times in it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

from heldout_fve import datamodule_from  # this script's directory is on the path when run

from nla.models.pair import Pair
from nla.models.pair_loading import load_verbalizer
from nla.commands.quickstart_report import heldout_rows


def loops(text: str, repeats: int) -> bool:
    """Whether a three-word sequence occurs ``repeats`` times or more in ``text``."""
    words = re.findall(r"\w+", text.lower())
    counts = Counter(zip(words, words[1:], words[2:]))
    return max(counts.values(), default=0) >= repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit_config", required=True, help="a run's saved config (its data section is read)")
    parser.add_argument("--av", nargs="+", required=True, help="exported AV directories")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--rows", type=int, default=192)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--examples", type=int, default=2, help="cut answers printed per AV")
    args = parser.parse_args()

    datamodule = datamodule_from(args.fit_config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    vectors = heldout_rows(datamodule, args.rows, args.split)[0]
    lines, examples = [], []
    for directory in args.av:
        verbalizer, prompts = load_verbalizer(directory, dtype="float32")
        pair = Pair(verbalizer, None, prompts, layer=datamodule.layer)
        answers = pair.explain(vectors, max_new_tokens=args.max_new_tokens, batch_size=datamodule.eval_batch_size)
        texts, cut = answers.answers, [not done for done in answers.finished]
        cut_texts = [text for text, was_cut in zip(texts, cut) if was_cut]
        finished_loops = sum(loops(text, args.repeats) for text, was_cut in zip(texts, cut) if not was_cut)
        lines.append(f"| {directory} | {len(texts)} | {len(cut_texts)} | {sum(loops(t, args.repeats) for t in cut_texts)} "
                     f"| {finished_loops} |")
        examples += [f"{directory}: {text[:300]!r}" for text in cut_texts[:args.examples]]
    print(f"| AV | rows ({args.split}) | cut at {args.max_new_tokens} tokens | cut and looping | finished and looping |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    print("\n".join(["", "Cut answers:", *examples]))


if __name__ == "__main__":
    main()
