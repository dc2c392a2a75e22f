"""The README.md model card written beside each exported AV and AR.

Everything on the card comes from the sidecar: the pair's shape (base model, role, K, d) and what the
trainer put in ``training``. Fields the trainer did not record are shown as "not recorded" rather than
left out, so a reader can tell a missing figure from a zero.
"""

from __future__ import annotations

import yaml

from nla.models.sidecar import Sidecar

CARD_FILENAME = "README.md"

TRAINING_FIELDS = {
    "corpus": "name or path of the document corpus the activations were read from",
    "documents": "number of documents cached",
    "split_sizes": "rows per split, a mapping such as {av_sft: 1000, ar_sft: 1000, rl: 2000, heldout: 200}",
    "teacher": "the model or rule that wrote the warm-start explanations",
    "steps": "optimizer steps of the stage that produced these weights",
    "heldout_variance": "the held-out split's own rawvar: mean ||v - mu||^2 / d of its normalised vectors",
    "figures": "held-out figures by name (nla.models.sidecar.FIGURES: ar_on_teacher_text, round_trip), each with what it "
               "measures, FVE, MSE, rows, documents, baseline, step and the settings that reproduce it",
}
"""Keys of a sidecar's ``training`` mapping that the card and ``nla explain`` understand."""

ROLE_TEXT = {
    "av": ("activation verbalizer (AV)", "reads one layer-{K} activation through a marker token and writes an "
           "explanation of it in English"),
    "ar": ("activation reconstructor (AR)", "reads an explanation and predicts the layer-{K} activation it "
           "describes; it holds the base model's first {K1} blocks and a {d} x {d} linear head"),
}

NOT_RECORDED = "not recorded"


def _number(value) -> str:
    if value is None:
        return NOT_RECORDED
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _splits(value) -> str:
    if not isinstance(value, dict) or not value:
        return NOT_RECORDED
    return ", ".join(f"{name} {count}" for name, count in value.items())


FIGURE_TITLES = {"round_trip": "round trip (AV -> AR)", "ar_on_teacher_text": "AR on teacher text"}


def _figure_line(name: str, record: dict) -> str:
    documents = record.get("documents") or "an unrecorded number of"
    where = f"{record.get('rows', NOT_RECORDED)} held-out rows from {documents} documents"
    line = f"- {FIGURE_TITLES.get(name, name)}: FVE {_number(record.get('fve'))} on {where}, step {record.get('step')}"
    if name == "round_trip":
        line += (f"; {record.get('decoding', NOT_RECORDED)} decoding, at most "
                 f"{record.get('max_new_tokens', NOT_RECORDED)} new tokens, valid answers "
                 f"{_number(record.get('valid_rate'))}")
    interval = record.get("interval")
    line += "; no interval" if not interval else f"; 95% interval {interval}"
    return line + f". Measures {record.get('what', NOT_RECORDED)}."


def figure_lines(training: dict) -> list[str]:
    """One line per recorded figure, named for what it is; the round trip first, marked as not
    recorded when missing (it is the pair's own figure)."""
    figures = training.get("figures") if isinstance(training.get("figures"), dict) else {}
    lines = [_figure_line(name, figures[name]) for name in ("round_trip", "ar_on_teacher_text") if name in figures]
    if "round_trip" not in figures:
        lines.insert(0, f"- round trip (AV -> AR): {NOT_RECORDED} (`nla evaluate` measures it)")
    if "heldout_fve" in training:
        # Sidecars written before figures were named: what the number measured was not recorded.
        lines.append(f"- held-out FVE (what it measures not recorded): {_number(training.get('heldout_fve'))}")
    return lines


def model_card(meta: Sidecar) -> str:
    """The card's Markdown, YAML front matter first (the hub reads ``base_model`` and tags there)."""
    k, d = meta.extraction_layer_index, meta.d_model
    name, does = ROLE_TEXT[meta.role]
    does = does.format(K=k, K1=k + 1, d=d)
    training = meta.training
    base = meta.base_model or NOT_RECORDED
    front = {"license": "other", "library_name": "nla", "tags": ["nla", "natural-language-autoencoder", meta.role]}
    if meta.base_model:
        front["base_model"] = meta.base_model
    other = "av" if meta.role == "ar" else "ar"
    variance = training.get("heldout_variance")
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# NLA {name} for {base}, layer {k}",
        "",
        f"One half of a natural language autoencoder trained with `nla`. This model {does}. It is meant "
        f"to be used with its partner ({other.upper()}), exported beside it as `../{other}`.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {base} |",
        f"| role | {meta.role} |",
        f"| layer K | {k} (output of decoder block {k}, `hidden_states[{k + 1}]`) |",
        f"| d_model | {d} |",
        f"| stage | {meta.stage or NOT_RECORDED} |",
        f"| marker | `{meta.tokens.injection_char}` (id {meta.tokens.injection_token_id}, "
        f"{meta.tokens.marker_rule}) |",
    ]
    if meta.extraction.injection_scale is not None:
        lines.append(f"| injection scale | {meta.extraction.injection_scale:g} |")
    if meta.role == "av":
        lines.append(f"| injection | the vector {meta.extraction.site.describe()} |")
    lines += [
        "",
        "## Data",
        "",
        f"- corpus: {training.get('corpus') or NOT_RECORDED}",
        f"- documents: {_number(training.get('documents'))}",
        f"- rows per split: {_splits(training.get('split_sizes'))}",
        f"- teacher explanations: {training.get('teacher') or NOT_RECORDED}",
        "",
        "## Metrics",
        "",
        "FVE = 1 - MSE / Var, MSE the normalised MSE (2(1 - cos): 0 same direction, 2 orthogonal), Var = mean "
        f"||v - mu||^2 / d over the held-out split's vectors normalised to norm sqrt(d) (\"rawvar\"; here "
        f"{_number(variance)}).",
        "",
        *figure_lines(training),
        f"- steps: {_number(training.get('steps'))}",
        "",
        "## Use",
        "",
        "```python",
        "from nla.models.pair_loading import load_pair",
        "",
        'pair = load_pair("path/to/av", "path/to/ar")',
        "explanations = pair.explain(vectors)  # vectors: [n, d] residuals after block K",
        "```",
        "",
        "or from the command line, on the base model's own activations:",
        "",
        "```",
        'nla explain --av path/to/av --ar path/to/ar --text "Some text to explain."',
        "```",
        "",
        "Settings the pair needs (marker, prompt templates, K, scales) are in `nla_meta.yaml`.",
        "",
        "## License",
        "",
        f"These weights are derived from {base} and inherit the base model's license; read it before use.",
        "",
    ]
    return "\n".join(lines)
