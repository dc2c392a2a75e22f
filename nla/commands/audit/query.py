"""``nla audit query``: how often the explanations of audits say something, per dataset, group or role,
with document-level bootstrap intervals, and the difference between two of them.

An explanation *matches* when a regular expression finds something in it (``--pattern``) or when a
judge (any chat teacher: an OpenAI-compatible endpoint, Anthropic, a local model) says it makes
``--claim`` (``nla.commands.audit.verdicts``). The shares and intervals are
``nla.evaluation.audit_stats``'s: per text (texts with a matching explanation) and per explanation,
resampling whole texts. Every argument, the tables, the sets compared and the judge's settings are
checked before the judge is asked anything, and ``--out`` is written whole at the end.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nla.commands.audit.verdicts import Verdicts, ask, judge_name, missing, read_verdicts
from nla.core.errors import ConfigError
from nla.core.files import atomic_write_bytes
from nla.data.audit_table import read_table
from nla.data.teachers import TeacherArgs, chat_teacher
from nla.evaluation import audit_stats as stats
from nla.evaluation.bootstrap import Interval

BY = ("dataset", "group", "role")
AMONG = ("valid", "all")
NONE = "(none)"
"""The label of rows whose group or role is empty."""


def _check(table, pattern, case_sensitive, claim, judge, verdicts, by, among, compare, paired, resamples, out):
    """The compiled pattern (None with a claim), after every check that reads nothing."""
    if not table:
        raise ConfigError("table", "names no audit directory; give --table DIR (repeat it for several datasets)")
    if len(set(table)) != len(table):
        raise ConfigError("table", "names one directory twice")
    if (pattern is None) == (claim is None):
        raise ConfigError("pattern", "give what to count as either --pattern REGEX or --claim TEXT with a judge, "
                          "not both" if pattern is not None else "nothing to count: give --pattern REGEX or --claim TEXT")
    if claim is None and (judge is not None or verdicts is not None):
        raise ConfigError("judge" if judge is not None else "verdicts", "a judge's verdicts count only with --claim")
    if claim is not None and not claim.strip():
        raise ConfigError("claim", "is empty; write the claim the judge looks for")
    if claim is not None and judge is None and verdicts is None:
        raise ConfigError("judge", "--claim needs a judge: set --judge.provider and --judge.model (or reuse an "
                          "earlier query's verdicts with --verdicts FILE)")
    for field, value, choices in (("by", by, BY), ("among", among, AMONG)):
        if value not in choices:
            raise ConfigError(field, f"is '{value}'; choose from {', '.join(choices)}")
    if resamples < 1:
        raise ConfigError("resamples", f"is {resamples}; it must be at least 1")
    if compare is not None and (len(compare) != 2 or compare[0] == compare[1]):
        raise ConfigError("compare", f"is {compare}; name two different sets, e.g. --compare A --compare B")
    if paired and compare is None:
        raise ConfigError("paired", "pairs the two sets of --compare; give --compare A --compare B")
    if out is not None and (Path(out).is_dir() or not Path(out).parent.is_dir()):
        raise ConfigError("out", f"'{out}' is a directory or in a missing one; give a file in an existing directory")
    if pattern is None:
        return None
    try:
        return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
    except re.error as error:
        raise ConfigError("pattern", f"'{pattern}' is not a regular expression ({error}); fix it (Python's re "
                          "syntax)") from None


def _rows(tables: list[str], by: str) -> dict[str, np.ndarray]:
    """Every row of the tables, as arrays: the set each belongs to (``label``), its text (``unit``),
    explanation and validity. A dataset is named by its directory's name (the paths as given when two
    names are alike); outside ``--by dataset`` a text is its dataset and id, so datasets never merge."""
    names = [Path(path).name for path in tables]
    names = names if len(set(names)) == len(names) else list(tables)
    columns: dict[str, list] = {"label": [], "unit": [], "explanation": [], "valid": []}
    for name, path in zip(names, tables):
        read = read_table(path).to_pydict()
        ids = read["text_id"]
        columns["label"] += [name] * len(ids) if by == "dataset" else [NONE if v is None else v for v in read[by]]
        columns["unit"] += ids if by == "dataset" else [f"{name}\x1f{text}" for text in ids]
        columns["explanation"] += read["explanation"]
        columns["valid"] += read["valid"]
    return {key: np.array(value, dtype=bool if key == "valid" else object) for key, value in columns.items()}


def _labels(rows: dict[str, np.ndarray], by: str) -> list[str]:
    """The sets in the order they are reported: datasets as given, groups and roles sorted."""
    found = list(dict.fromkeys(rows["label"].tolist()))
    return found if by == "dataset" else sorted(found, key=lambda label: (label == NONE, label))


def _check_compare(rows, labels: list[str], compare: list[str] | None, paired: bool) -> None:
    if compare is None:
        return
    for name in compare:
        if name not in labels:
            raise ConfigError("compare", f"no set is named '{name}'; the sets are {', '.join(labels)}")
    a, b = (set(rows["unit"][rows["label"] == name].tolist()) for name in compare)
    if paired and a != b:
        raise ConfigError("paired", f"{compare[0]} holds {len(a)} texts and {compare[1]} {len(b)}, {len(a & b)} "
                          "of them in both; a paired difference needs the same text ids in both (--paired false "
                          "compares them as two samples)")


def _interval(interval: Interval) -> dict:
    # JSON has no NaN: an undefined share travels as null.
    return {key: value if np.isfinite(value) else None for key, value in asdict(interval).items()}


def _percent(interval: Interval, difference: bool = False) -> str:
    """A share as ``12.34% [low, high]``, a difference of shares as ``+12.34 [+low, +high] points``."""
    if not np.isfinite(interval.value):
        return "-"
    sign = "+" if difference else ""
    low, high = (f"{100 * value:{sign}.2f}" if np.isfinite(value) else "-" for value in (interval.low, interval.high))
    value = f"{100 * interval.value:{sign}.2f}"
    return f"{value} [{low}, {high}] points" if difference else f"{value}% [{low}, {high}]"


def _report(results: list[dict], difference: dict | None, title: str, by: str) -> str:
    head = [by, "texts with a match", "", "explanations matching", "", "invalid", "unjudged"]
    lines = [head] + [[r["label"], _percent(r["rates"].per_text), f"{r['rates'].matching_texts}/{r['rates'].texts}",
                       _percent(r["rates"].per_explanation),
                       f"{r['rates'].matching_explanations}/{r['rates'].explanations}", str(r["invalid"]),
                       str(r["unjudged"])] for r in results]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [title] + ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    if difference is not None:
        kind = "paired" if difference["difference"].paired else "two-sample"
        text.append(f"{difference['a']} - {difference['b']} ({kind}): per text "
                    f"{_percent(difference['difference'].per_text, True)}, per explanation "
                    f"{_percent(difference['difference'].per_explanation, True)}")
    return "\n".join(text)


def _match(explanations: np.ndarray, valid: np.ndarray, compiled, found: Verdicts | None, teacher,
           verdicts: str | None) -> tuple[np.ndarray, np.ndarray, Verdicts | None]:
    """Which rows match and which were judged (a pattern judges every valid row; the judge leaves
    rows unjudged where it said neither YES nor NO), with the verdicts after asking the judge."""
    if compiled is not None:
        return np.array([bool(v) and compiled.search(text) is not None for v, text in zip(valid, explanations)],
                        dtype=bool), valid, None
    texts = explanations[valid].tolist()
    if teacher is None and missing(texts, found):
        raise ConfigError("judge", f"{missing(texts, found)} distinct explanations have no verdict in {verdicts}; "
                          "configure --judge.provider and --judge.model to ask about them")
    if teacher is not None:
        found = ask(texts, found, teacher)
    answers = [found.answers.get(text) if v else None for v, text in zip(valid, explanations)]
    return np.array([a is True for a in answers], dtype=bool), np.array([a is not None for a in answers]), found


def query(table: list[str], pattern: str | None = None, case_sensitive: bool = False, claim: str | None = None,
          judge: TeacherArgs | None = None, verdicts: str | None = None, by: str = "dataset", among: str = "valid",
          compare: list[str] | None = None, paired: bool = False, resamples: int = 1000, seed: int = 0,
          out: str | None = None) -> None:
    """Count the explanations of nla audit tables that match a pattern or make a claim, with intervals.

    Args:
        table: Audit directories (``nla audit --out``); each is one dataset. Repeat for several.
        pattern: Count explanations in which this regular expression (Python's ``re``) finds a match.
        case_sensitive: Match ``pattern`` case by case (default: ignoring case).
        claim: Count explanations that the judge says make this claim, e.g. "this text is a constructed
            test or evaluation".
        judge: The chat model that judges ``claim`` (temperature 0 advised); each distinct explanation
            is asked once.
        verdicts: The ``--out`` JSON of an earlier query of the same claim: its verdicts are reused and
            only explanations it lacks are asked.
        by: One line per ``dataset`` (table), ``group`` (the audit's group column) or ``role``.
        among: ``valid``: the explanations that parsed (invalid rows counted apart); ``all``: every row,
            an invalid one counting as not matching.
        compare: Two sets (names of the ``by`` lines) whose difference A - B is reported with an interval.
        paired: The two sets hold the same texts (the same text ids, e.g. the same transcripts under two
            conditions): resample texts once for both (default: each set's texts independently).
        resamples: Bootstrap draws of the texts.
        seed: Seed of the draws: line k uses seed + k (a two-sample difference uses its sets' draws),
            a paired difference uses seed.
        out: JSON file for the counts, intervals, settings and the judge's verdicts.
    """
    compiled = _check(table, pattern, case_sensitive, claim, judge, verdicts, by, among, compare, paired,
                      resamples, out)
    teacher = chat_teacher(judge, "judge")
    found = read_verdicts(verdicts, claim, judge_name(judge)) if claim is not None else None
    rows = _rows(table, by)
    labels = _labels(rows, by)
    _check_compare(rows, labels, compare, paired)
    valid = rows["valid"] & np.array([text is not None for text in rows["explanation"]], dtype=bool)
    matched, judged, found = _match(rows["explanation"], valid, compiled, found, teacher, verdicts)
    counted = judged | (~rows["valid"] if among == "all" else False)
    results, tallies = [], {}
    for k, label in enumerate(labels):
        mine = rows["label"] == label
        tallies[label] = stats.tally(rows["unit"][mine], counted[mine], matched[mine])
        draws = stats.text_resamples(len(tallies[label].texts), resamples, seed + k)
        results.append({"label": label, "rows": int(mine.sum()), "invalid": int((mine & ~rows["valid"]).sum()),
                        "unjudged": int((mine & valid & ~judged).sum()), "draws": draws,
                        "rates": stats.rates(tallies[label], draws)})
    difference = None
    if compare is not None:
        a, b = (tallies[name] for name in compare)
        draws_a, draws_b = (results[labels.index(name)]["draws"] for name in compare)
        difference = {"a": compare[0], "b": compare[1], "difference": stats.paired_difference(
            a, b, stats.text_resamples(len(a.texts), resamples, seed)) if paired else
            stats.two_sample_difference(a, b, draws_a, draws_b)}
    what = (f"explanations matching /{pattern}/" + ("" if case_sensitive else " (ignoring case)")
            if compiled is not None else f"explanations that {found.judge} says make the claim {claim!r}")
    title = (f"nla audit query: {what}, among {among} explanations; {resamples} resamples of whole texts, "
             "95% intervals")
    print(_report(results, difference, title, by))
    if out is not None:
        atomic_write_bytes(Path(out), json.dumps(_document(
            results, difference, found, pattern=pattern, case_sensitive=case_sensitive, claim=claim, tables=table,
            by=by, among=among, resamples=resamples, seed=seed), indent=1, ensure_ascii=False).encode("utf-8"))


def _document(results: list[dict], difference: dict | None, found: Verdicts | None, **settings) -> dict:
    """What ``--out`` holds: the settings, one entry per set, the difference and the verdicts."""
    lines = [{"label": r["label"], "rows": r["rows"], "invalid": r["invalid"], "unjudged": r["unjudged"],
              **{key: value for key, value in asdict(r["rates"]).items() if not key.startswith("per_")},
              "per_text": _interval(r["rates"].per_text), "per_explanation": _interval(r["rates"].per_explanation)}
             for r in results]
    compared = None if difference is None else {
        "a": difference["a"], "b": difference["b"], "paired": difference["difference"].paired,
        "per_text": _interval(difference["difference"].per_text),
        "per_explanation": _interval(difference["difference"].per_explanation)}
    return {"query": settings, "sets": lines, "difference": compared,
            "verdicts": None if found is None else asdict(found)}
