"""The user manual: README.md, CONTRIBUTING.md and docs/*.md.

Short README with a table of contents, every relative link and anchor resolving, every
option of an example command existing in that script's --help, the test command CI runs
shown in the README, and one package map naming exactly the modules of virnucpro/.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
from pathlib import Path

import pytest

from virnucpro import commands

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_MAX_LINES = 250
PAGES = [README, REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
OTHER_TOOLS_OPTIONS = {"--no-build-isolation"}  # pip's, named in the README's install section
EXPECTED_DOCS = ["architecture", "clusters", "performance", "prediction", "provenance", "reliability", "training",
                 "troubleshooting"]

FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
SCRIPT = re.compile(r"(?<![\w/.-])(?:\./)?(\w+)\.py\b|\bvirnucpro ([a-z][a-z0-9-]*)")
COMMAND_END = re.compile(r"&&|\|\||\s\|\s|;|(?:^|\s)#")  # `a|b` in a synopsis is no pipe


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _code_blocks(text: str) -> list[str]:
    return [block.split("\n", 1)[1].rsplit("\n", 1)[0] for block in FENCE.findall(text)]


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (duplicates get -1, -2, ...)."""
    anchors: set[str] = set()
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", _prose(text), re.M):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_the_manual_pages_exist():
    assert sorted(p.stem for p in (REPO / "docs").glob("*.md")) == EXPECTED_DOCS
    assert (REPO / "CONTRIBUTING.md").is_file()


def test_readme_is_short_and_has_a_table_of_contents():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    contents = text.split("\n## Contents\n", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = [m.group(1) for m in re.finditer(r"^## (.+)$", _prose(text), re.M) if m.group(1) != "Contents"]
    assert sections, "no sections"
    for title in sections:
        (anchor,) = github_anchors(f"## {title}\n")
        assert anchor in linked, f"section '{title}' is not in the table of contents"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in github_anchors(path.read_text(encoding="utf-8")):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_the_link_checker_sees_a_broken_link_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("## Real heading\n[x](b.md) [y](#real-heading) [z](#nowhere)\n")
    text = (tmp_path / "a.md").read_text()
    assert LINK.findall(text) == ["b.md", "#real-heading", "#nowhere"]
    assert github_anchors(text) == {"real-heading"}
    assert github_anchors("## The `virnucpro` command (x, y)\n## build_model.py\n## A\n## A\n") == {
        "the-virnucpro-command-x-y", "build_modelpy", "a", "a-1"}


def _commands_in(text: str) -> list[str]:
    """Example command lines: code blocks (continuations joined) and inline code spans."""
    found = []
    for block in _code_blocks(text):
        block = re.sub(r"\\\n", " ", block)
        block = re.sub(r"\n(?=[ \t]+\[)", " ", block)  # a synopsis continued on indented lines
        found += block.splitlines()
    found += re.findall(r"`([^`\n]+)`", _prose(text))
    return found


@functools.lru_cache(maxsize=None)
def _help_options(module_name: str) -> frozenset[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        importlib.import_module(module_name).main(["--help"])
    return frozenset(OPTION.findall(out.getvalue()))


def _script_options(line: str, scripts: set[str]) -> list[tuple[str, str]]:
    """(script module, option) for each option written after a script (or virnucpro command) name."""
    pairs = []
    matches = [m for m in SCRIPT.finditer(line) if m.group(1) in scripts or m.group(2) in commands.COMMANDS]
    for i, match in enumerate(matches):
        module = match.group(1) or commands.COMMANDS[match.group(2)].module
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        tail = line[match.end():end]
        cut = COMMAND_END.search(tail)
        pairs += [(module, option) for option in OPTION.findall(tail[:cut.start()] if cut else tail)]
    return pairs


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_example_commands_use_options_the_scripts_have(page):
    scripts = {p.stem for p in REPO.glob("*.py")}
    pairs = [pair for line in _commands_in(page.read_text(encoding="utf-8")) for pair in _script_options(line, scripts)]
    unknown = sorted({f"{module}.py {option}" for module, option in pairs if option not in _help_options(module)})
    assert not unknown, unknown


def test_the_option_check_finds_options_and_refuses_unknown_ones():
    scripts = {"prediction", "evaluate"}
    line = "torchrun --standalone prediction.py in.fa 300 out/ --model m.pth --device cuda  # --not-this"
    assert _script_options(line, scripts) == [("prediction", "--model"), ("prediction", "--device")]
    assert _script_options("virnucpro evaluate --ids x && python prediction.py --force", scripts) == [
        ("evaluate", "--ids"), ("prediction", "--force")]
    assert "--model" in _help_options("prediction") and "--no-such-option" not in _help_options("prediction")
    text = ("```bash\npython evaluate.py --viral v.fa \\\n    --outdir eval/ | less\n```\nand `python prediction.py --fp32`\n"
            "1. item\n   ```\n   prediction.py IN [--device auto|cpu] [--force]\n                 [--compile]\n   ```\n")
    assert [p for line in _commands_in(text) for p in _script_options(line, scripts)] == [
        ("evaluate", "--viral"), ("evaluate", "--outdir"), ("prediction", "--device"), ("prediction", "--force"),
        ("prediction", "--compile"), ("prediction", "--fp32")]


def test_every_option_the_readme_names_exists():
    known = set(OTHER_TOOLS_OPTIONS)
    for module in sorted({p.stem for p in REPO.glob("*.py")} - {"units"}):
        known |= _help_options(module)
    unknown = sorted(set(OPTION.findall(README.read_text(encoding="utf-8"))) - known)
    assert not unknown, unknown


def _ci_test_commands() -> list[str]:
    """The pytest commands .ci/run runs, with the interpreter's path left out."""
    found = []
    for line in (REPO / ".ci" / "run").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"(?:\S*/)?(python\S* -m pytest.*)$", line)
        if match:
            found.append(re.sub(r"^python\S*", "python", match.group(1)))
    return found


def test_readme_shows_the_test_command_ci_runs():
    ci = _ci_test_commands()
    assert ci, ".ci/run runs no pytest command"
    readme_lines = {line.strip() for block in _code_blocks(README.read_text(encoding="utf-8"))
                    for line in block.splitlines()}
    for command in ci:
        assert command in readme_lines, command


def test_the_package_map_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    mapped = re.findall(r"^\| `virnucpro/(\w+\.py)` \|", text, re.M)
    assert len(mapped) == len(set(mapped)), "a module is mapped twice"
    assert sorted(mapped) == sorted(p.name for p in (REPO / "virnucpro").glob("*.py"))
    readme = README.read_text(encoding="utf-8")
    assert "docs/architecture.md" in readme
    assert not re.search(r"^\| `virnucpro/", readme, re.M), "the README repeats the package map"
