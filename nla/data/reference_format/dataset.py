"""One dataset in the reference implementation's layout: a parquet file and its ``.nla_meta.yaml``.

Columns: ``activation_vector`` (``fixed_size_list<float32>[d_model]``, raw), ``doc_id``,
``n_raw_tokens`` (1-based count of tokens up to and including the explained one),
``activation_layer``, optionally ``detokenized_text_truncated`` (the document up to that token), and
per stage ``prompt`` (``av_sft``/``rl``: chat messages whose user message holds ``<INJECT>``;
``ar_sft``: the full AR prompt string) and ``response`` (``av_sft``: the teacher's text in
``<explanation>`` tags). The sidecar (``kind: nla_dataset``) records the stage, the extraction
(``base_model``, ``d_model``, ``layer_index``), the injection tokens and the prompt templates.
Every check here fails with one line naming the file and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from nla.core.errors import ConfigError
from nla.core.marker import Marker, marker_problem

STAGES = ("base", "av_sft", "ar_sft", "rl")
INJECT = "<INJECT>"
SIDECAR_SUFFIX = ".nla_meta.yaml"
_EXPLANATION = re.compile(r"<explanation>\s*(.*?)\s*(?:</explanation>|$)", re.DOTALL)


@dataclass
class ReferenceDataset:
    """The rows of one file, checked and in numpy form."""

    path: Path
    stage: str
    meta: dict
    vectors: np.ndarray
    """[n, d] float32, raw."""
    doc_ids: list[str]
    positions: np.ndarray
    """[n] 0-based index of the explained token (``n_raw_tokens - 1``)."""
    texts: list[str | None]
    """The document prefix up to and including the token, when the file has it."""
    explanations: list[str | None]
    """The teacher's explanation (``av_sft``: the response; ``ar_sft``: cut from the AR prompt)."""

    @property
    def layer(self) -> int:
        return int(self.meta["extraction"]["layer_index"])

    @property
    def d_model(self) -> int:
        return int(self.meta["extraction"]["d_model"])


def sidecar_path(parquet: Path) -> Path:
    return parquet.with_name(parquet.name + SIDECAR_SUFFIX)


def read_dataset(path: str | Path) -> ReferenceDataset:
    """Read and check one parquet file against its sidecar (shape, layer column, finite vectors)."""
    import pyarrow.parquet as pq

    path = Path(path)
    field = f"datasets: {path.name}"
    meta = _read_sidecar(path)
    stage = meta["stage"]
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:
        raise ConfigError(field, f"cannot read parquet: {str(error).splitlines()[0]}") from error
    required = ["activation_vector", "doc_id", "n_raw_tokens", "activation_layer"]
    required += {"av_sft": ["prompt", "response"], "ar_sft": ["prompt"], "rl": ["prompt"]}.get(stage, [])
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise ConfigError(field, f"has no column {', '.join(missing)} (a {stage} dataset needs {', '.join(required)})")
    if int(meta.get("row_count", table.num_rows)) != table.num_rows:
        raise ConfigError(field, f"holds {table.num_rows} rows but its sidecar's row_count is {meta['row_count']}")
    vectors = _vectors(table.column("activation_vector"), int(meta["extraction"]["d_model"]), field)
    layers = table.column("activation_layer").to_numpy()
    expected = int(meta["extraction"]["layer_index"])
    if len(layers) and not (layers == expected).all():
        raise ConfigError(f"{field}: activation_layer", f"holds layer {int(layers[layers != expected][0])}, but "
                          f"the sidecar's extraction.layer_index is {expected}")
    positions = table.column("n_raw_tokens").to_numpy().astype(np.int64) - 1
    if len(positions) and positions.min() < 0:
        raise ConfigError(f"{field}: n_raw_tokens", "must be at least 1 (it counts tokens up to the explained one)")
    text_column = "detokenized_text_truncated"
    texts = table.column(text_column).to_pylist() if text_column in table.column_names else [None] * table.num_rows
    explanations = _explanations(table, stage, meta, field)
    return ReferenceDataset(path, stage, meta, vectors, [str(d) for d in table.column("doc_id").to_pylist()],
                            positions, texts, explanations)


def check_against(dataset: ReferenceDataset, tokenizer, d_model: int, layer: int) -> None:
    """The sidecar against the model's tokenizer and width and the layer asked for."""
    field = f"datasets: {dataset.path.name}"
    if dataset.d_model != d_model:
        raise ConfigError(f"{field}: extraction.d_model", f"is {dataset.d_model} but the model has d={d_model}; "
                          "import it with the model it was extracted from")
    if dataset.layer != layer:
        raise ConfigError(f"{field}: extraction.layer_index", f"is {dataset.layer} but layer {layer} was asked for")
    tokens = dataset.meta.get("tokens") or {}
    if dataset.stage in ("av_sft", "rl") and "injection_char" in tokens:
        marker = Marker(tokens["injection_char"], int(tokens["injection_token_id"]),
                        int(tokens["injection_left_neighbor_id"]), int(tokens["injection_right_neighbor_id"]), "explicit")
        problem = marker_problem(tokenizer, marker, _user_content(dataset, marker.char))
        if problem:
            name = {"char": "injection_char", "token_id": "injection_token_id", "left_id": "injection_left_neighbor_id",
                    "right_id": "injection_right_neighbor_id", "content": "injection_char"}[problem[0]]
            raise ConfigError(f"{field}: tokens.{name}", f"{problem[1]}; the dataset was made with another tokenizer")
    suffix = tokens.get("critic_suffix_ids")
    if dataset.stage == "ar_sft" and suffix and len(dataset.doc_ids):
        ids = list(tokenizer.encode(str(_first_prompt(dataset))))
        if ids[-len(suffix):] != [int(i) for i in suffix]:
            raise ConfigError(f"{field}: tokens.critic_suffix_ids", f"{list(suffix)} do not end the AR prompt as this "
                              f"tokenizer encodes it ({ids[-len(suffix):]}); the dataset was made with another tokenizer")


def _read_sidecar(path: Path) -> dict:
    sidecar = sidecar_path(path)
    field = f"datasets: {sidecar.name}"
    if not path.is_file():
        raise ConfigError(f"datasets: {path}", "does not exist")
    if not sidecar.is_file():
        raise ConfigError(f"datasets: {path.name}", f"has no sidecar {sidecar.name} beside it")
    try:
        meta = yaml.safe_load(sidecar.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(field, f"is not YAML: {str(error).splitlines()[0]}") from error
    if meta.get("kind") != "nla_dataset":
        raise ConfigError(f"{field}: kind", f"is {meta.get('kind')!r}, not nla_dataset")
    if meta.get("stage") not in STAGES:
        raise ConfigError(f"{field}: stage", f"is {meta.get('stage')!r}; expected one of {', '.join(STAGES)}")
    extraction = meta.get("extraction") or {}
    for key in ("d_model", "layer_index"):
        if not isinstance(extraction.get(key), int):
            raise ConfigError(f"{field}: extraction.{key}", "is missing or not an integer")
    if str(extraction.get("norm", "none")) != "none":
        raise ConfigError(f"{field}: extraction.norm", f"is {extraction['norm']!r}; nla stores raw activations (none)")
    return meta


def _vectors(column, d: int, field: str) -> np.ndarray:
    import pyarrow as pa

    if not (pa.types.is_fixed_size_list(column.type) and column.type.list_size == d):
        raise ConfigError(f"{field}: activation_vector", f"is {column.type}; expected fixed_size_list<float32>[{d}] "
                          "(the sidecar's extraction.d_model)")
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(-1, d)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise ConfigError(f"{field}: activation_vector", f"row {int(np.flatnonzero(bad)[0])} is not finite "
                          f"({int(bad.sum())} rows in all); nothing was written")
    return vectors


def _explanations(table, stage: str, meta: dict, field: str) -> list[str | None]:
    if stage == "av_sft" or (stage == "ar_sft" and "response" in table.column_names):
        return [_inside_tags(text) for text in table.column("response").to_pylist()]
    if stage != "ar_sft":
        return [None] * table.num_rows
    prompts = table.column("prompt").to_pylist()
    template = str((meta.get("prompt_templates") or {}).get("critic") or "")
    holes = re.findall(r"\{[^{}]*\}", template)
    if len(holes) != 1:
        raise ConfigError(f"{field}: prompt_templates.critic", "must hold exactly one {placeholder} for the "
                          "explanation, or the file a response column, to recover the teacher's text")
    prefix, suffix = template.split(holes[0])
    explanations = []
    for row, prompt in enumerate(prompts):
        if not (prompt.startswith(prefix) and prompt.endswith(suffix)):
            raise ConfigError(f"{field}: prompt", f"row {row} does not follow prompt_templates.critic")
        explanations.append(prompt[len(prefix) : len(prompt) - len(suffix)].strip())
    return explanations


def _inside_tags(response: str | None) -> str | None:
    if response is None:
        return None
    match = _EXPLANATION.search(response)
    return (match.group(1) if match else response).strip() or None


def _first_prompt(dataset: ReferenceDataset):
    import pyarrow.parquet as pq

    return pq.read_table(dataset.path, columns=["prompt"]).column("prompt")[0].as_py()


def _user_content(dataset: ReferenceDataset, char: str) -> str:
    prompt = _first_prompt(dataset)
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    user = next((m["content"] for m in messages if m.get("role") == "user"), None)
    if user is None or INJECT not in user:
        raise ConfigError(f"datasets: {dataset.path.name}: prompt", f"row 0 has no user message holding {INJECT}")
    return user.replace(INJECT, char)
