"""The judge of ``nla audit query --claim``: every distinct explanation asked once, its verdicts kept.

The verdicts travel in the query's ``--out`` JSON under ``verdicts``: the claim, the judge
(``provider/model``) and one verdict per distinct explanation, true, false, or null when the answer
held no YES or NO or the request failed. ``--verdicts FILE`` reads them back, so a rerun asks only
about the explanations the file lacks or left null (without a judge, it needs every explanation in
the file, and the null ones stay unjudged). A file about another claim, or from another
judge, is refused: one count mixing two judges' verdicts would be neither's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from nla.core.errors import ConfigError
from nla.data.teachers import TeacherArgs
from nla.evaluation.claims import verdict

JUDGE = """\
Below is a note that a tool wrote about what a language model was thinking at one moment while it \
read a text.

<note>
{explanation}
</note>

Does the note say or suggest the following, in these or other words?

<claim>{claim}</claim>

Answer with one word: YES or NO."""


@dataclass
class Verdicts:
    """The judge's verdicts on one claim."""

    claim: str
    """The claim put to the judge."""
    judge: str | None
    """``provider/model`` of the judge that gave them (None: unknown, none asked yet)."""
    answers: dict[str, bool | None]
    """Verdict per distinct explanation: YES, NO, or None when the answer said neither."""


def judge_name(args: TeacherArgs | None) -> str | None:
    return None if args is None else f"{args.provider}/{args.model}"


def read_verdicts(path: str | None, claim: str, judge: str | None) -> Verdicts:
    """The verdicts of an earlier query's ``--out`` (``path``; none when None), checked to be about
    ``claim`` and from ``judge`` (when one is configured)."""
    if path is None:
        return Verdicts(claim, judge, {})
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))["verdicts"]
        saved = Verdicts(found["claim"], found["judge"], dict(found["answers"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError("verdicts", f"cannot read verdicts from {path} ({type(error).__name__}); give the --out "
                          "JSON of an earlier nla audit query --claim") from None
    if saved.claim != claim:
        raise ConfigError("verdicts", f"{path} judged the claim {saved.claim!r}, not {claim!r}; drop --verdicts or "
                          "ask the same claim")
    if judge is not None and saved.judge is not None and saved.judge != judge:
        raise ConfigError("verdicts", f"{path} holds the verdicts of {saved.judge}, and the judge now is {judge}; "
                          "drop --verdicts or configure the same judge")
    if any(value not in (True, False, None) for value in saved.answers.values()):
        raise ConfigError("verdicts", f"{path} holds verdicts other than true, false and null; write it again "
                          "with nla audit query --claim")
    return Verdicts(claim, judge or saved.judge, saved.answers)


def ask(explanations: list[str], verdicts: Verdicts, teacher) -> Verdicts:
    """``verdicts`` with every explanation of ``explanations`` judged: those without a verdict yet
    (missing or None) are put to ``teacher`` (any provider with ``answer``), each distinct one once."""
    todo = sorted({text for text in explanations if verdicts.answers.get(text) is None})
    answers = dict(verdicts.answers)
    if todo:
        print(f"nla audit query: asking {verdicts.judge} about {len(todo)} distinct explanations", file=sys.stderr,
              flush=True)
        replies = teacher.answer([JUDGE.format(explanation=text, claim=verdicts.claim) for text in todo])
        answers.update({text: verdict(reply) for text, reply in zip(todo, replies)})
    return Verdicts(verdicts.claim, verdicts.judge, answers)


def missing(explanations: list[str], verdicts: Verdicts) -> int:
    """How many distinct explanations of ``explanations`` were never put to a judge (an unclear
    answer, None, was: without a judge to ask again, it stays unjudged)."""
    return len({text for text in explanations if text not in verdicts.answers})
