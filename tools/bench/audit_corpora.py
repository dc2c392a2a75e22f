"""``nla audit`` over passages of both named corpora, the worked example of docs/audit.md: writes the
dataset (``corpus`` as the group column), runs the audit, prints its explanations per second, then
the queries and the page.

    python tools/bench/audit_corpora.py --pair runs/quickstart/grpo/export --out runs/audit-corpora

Passages are the first ``--words`` words of ``--per_corpus`` documents spread evenly over each
corpus (Jane Austen's novels, the World English Bible; both fetched as the quickstart fetches them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from nla.data.audit_table import read_table
from nla.data.corpora import NAMED_CORPORA


def passages(corpus: str, count: int, words: int) -> list[dict]:
    documents = NAMED_CORPORA[corpus](500)
    step = len(documents) / count
    chosen = [documents[int(i * step)] for i in range(count)]
    return [{"id": document.doc_id, "corpus": corpus, "text": " ".join(document.text.split()[:words])}
            for document in chosen]


def nla(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "nla", *argv], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", required=True)
    parser.add_argument("--out", default="runs/audit-corpora")
    parser.add_argument("--per_corpus", type=int, default=24)
    parser.add_argument("--words", type=int, default=80)
    parser.add_argument("--max_per_text", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--queries", default="[]", help="JSON list of [label, argv list] for nla audit query")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "passages.jsonl"
    rows = [row for corpus in ("austen", "bible") for row in passages(corpus, args.per_corpus, args.words)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    started = time.perf_counter()
    nla("audit", "--pair", args.pair, "--data", str(data), "--id_column", "id", "--group_column", "corpus",
        "--max_per_text", str(args.max_per_text), "--max_new_tokens", str(args.max_new_tokens),
        "--out", str(out / "audit"))
    seconds = time.perf_counter() - started
    explained = read_table(out / "audit").num_rows
    print(f"\naudit: {len(rows)} passages, {explained} positions explained in {seconds:.0f} s wall (loading the "
          f"models included): {explained / seconds:.2f} explanations/s")
    for label, argv in json.loads(args.queries):
        print(f"\n# {label}")
        nla("audit", "query", "--table", str(out / "audit"), *argv)
    nla("audit", "page", "--table", str(out / "audit"), "--out", str(out / "audit.html"))


if __name__ == "__main__":
    main()
