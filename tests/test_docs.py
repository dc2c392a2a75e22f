"""The documentation points at things that exist: relative links (and their #anchors), config files
named anywhere in the text, and ``nla`` subcommands. Pure text scanning, no imports of torch."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from nla.commands.cli import SUBCOMMANDS, TRAINER_SUBCOMMANDS
from tests.fixtures.paths import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCED = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# Preceded by neither a word character nor a hyphen, so `../configs/x.yaml` counts and `myconfigs/` does not.
CONFIG_PATH = re.compile(r"(?<![\w-])configs/[\w.-]+(?:/[\w.-]+)*\.yaml")
# `python -m nla SUB` anywhere, and `nla SUB` as the start of a code span or a shell line.
COMMAND = re.compile(r"(?:python -m nla|(?:^|`|\$ )nla)[ \t]+([A-Za-z][\w-]*)", re.MULTILINE)
SUBCOMMAND_NAMES = {*TRAINER_SUBCOMMANDS, *SUBCOMMANDS}


def prose(text: str) -> str:
    """The text with code blocks and code spans removed: a link written inside code is an example."""
    return INLINE_CODE.sub("", FENCED.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*_]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; repeated headings get -1, -2... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCED.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    body = prose(text)
    return INLINE_LINK.findall(body) + REFERENCE_LINK.findall(body)


def link_problems(path: Path, root: Path) -> list[str]:
    problems = []
    for target in links(path.read_text(encoding="utf-8")):
        if SCHEME.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{path.name}: link to missing {target}")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{path.name}: link to missing heading #{fragment} in {resolved.name}")
    return problems


def config_problems(path: Path, root: Path) -> list[str]:
    named = set(CONFIG_PATH.findall(path.read_text(encoding="utf-8")))
    return [f"{path.name}: names missing {name}" for name in sorted(named) if not (root / name).is_file()]


def command_problems(path: Path) -> list[str]:
    named = set(COMMAND.findall(path.read_text(encoding="utf-8")))
    return [f"{path.name}: `nla {name}` is not a subcommand" for name in sorted(named - SUBCOMMAND_NAMES)]


def problems(path: Path, root: Path = ROOT) -> list[str]:
    return link_problems(path, root) + config_problems(path, root) + command_problems(path)


@pytest.mark.parametrize("path", DOCS, ids=[str(path.relative_to(ROOT)) for path in DOCS])
def test_documentation_points_at_things_that_exist(path):
    assert problems(path) == []


def test_the_method_and_configuration_pages_link_each_other_and_the_figure():
    method = links((ROOT / "docs" / "method.md").read_text(encoding="utf-8"))
    configuration = links((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8"))
    assert "figures/method.svg" in method
    assert "configuration.md#choosing-a-teacher" in method
    assert "scaling.md" in configuration


def test_method_figure_is_well_formed_svg():
    root = ElementTree.parse(ROOT / "docs" / "figures" / "method.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    labels = {"".join(node.itertext()).strip() for node in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"AV", "AR", "h", "ĥ", "explanation"} <= labels


def test_checker_reports_each_kind_of_broken_reference(tmp_path):
    (tmp_path / "configs" / "real").mkdir(parents=True)
    (tmp_path / "configs" / "real" / "sft.yaml").write_text("seed_everything: 0\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Second part\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n"
        "[fine](other.md#second-part) [gone](missing.md) [bad anchor](other.md#third-part)\n"
        "[self](#page) [web](https://example.org/nowhere.md) ![figure](figures/none.svg)\n"
        "`[inside code](ignored.md)`\n"
        "```bash\n"
        "python -m nla fit --config configs/real/sft.yaml\n"
        "python -m nla fitt --config configs/missing/grpo.yaml\n"
        "```\n"
        "Run `nla explain` or `nla explian`; see ../configs/real/sft.yaml.\n"
    )
    assert problems(page, tmp_path) == [
        "page.md: link to missing missing.md",
        "page.md: link to missing heading #third-part in other.md",
        "page.md: link to missing figures/none.svg",
        "page.md: names missing configs/missing/grpo.yaml",
        "page.md: `nla explian` is not a subcommand",
        "page.md: `nla fitt` is not a subcommand",
    ]
