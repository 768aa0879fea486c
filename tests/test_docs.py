"""The README fits a screen, every relative link of README.md and docs/*.md leads somewhere,
and docs/configuration.md lists every key of the defaults files with its default.

(The commands of the docs' bash blocks are checked by tests/test_documented_commands.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 150

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> list[str]:
    """``text``'s lines outside fenced code blocks, inline code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: Markdown code marks, links and emphasis dropped,
    lower case, punctuation but ``-`` and ``_`` removed, spaces made hyphens.

    Example:
        >>> slug("What the paper leaves open, and what this project chose")
        'what-the-paper-leaves-open-and-what-this-project-chose'
        >>> slug("## `s3prl_ser/finetuning/config.yaml`".lstrip("# "))
        's3prl_serfinetuningconfigyaml'
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of ``path`` (outside code blocks), repeats numbered as GitHub does."""
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def broken_links(path: Path) -> list[str]:
    """``path``'s relative links whose file, or whose ``#anchor`` in that file, does not exist."""
    broken = []
    for line in _prose(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no file {file_part})")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.name}: {target} (no heading #{anchor} in {linked.name})")
    return broken


def test_readme_fits_a_screen():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}); move detail to docs/"


def test_docs_exist_and_are_linked_from_the_readme():
    pages = {path.name for path in DOCS[1:]}
    assert pages, "no docs/*.md"
    linked = {
        Path(target.partition("#")[0]).name for line in _prose(README.read_text()) for target in LINK.findall(line)
    }
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_link_check_finds_broken_links(tmp_path):
    """The checker is not vacuous: a missing file and a missing heading are both reported,
    links inside code are not links, and an existing file and heading pass."""
    (tmp_path / "other.md").write_text("# Title\n\n## The `x` part\n\n```\n## not a heading\n```\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](other.md) [ok](other.md#the-x-part) [ok](#here) [web](https://example.com/x)\n"
        "[gone](missing.md) [bad](other.md#not-a-heading) `[code](nowhere.md)`\n\n## Here\n"
    )
    assert broken_links(doc) == [
        "doc.md: missing.md (no file missing.md)",
        "doc.md: other.md#not-a-heading (no heading #not-a-heading in other.md)",
    ]


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value for every non-mapping value (a ``null`` section is a leaf)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _documented_defaults() -> dict[str, dict[str, object]]:
    """docs/configuration.md's tables: defaults file (the ``## `path` `` heading above the
    table) -> dotted key -> documented default (parsed as YAML); section rows left out."""
    tables: dict[str, dict[str, object]] = {}
    current = None
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        heading = re.fullmatch(r"## `([^`]+\.yaml)`", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
            continue
        row = re.match(r"\| `([\w.]+)` \| `(.*?)` \|", line)
        if row and current is not None:
            current[row.group(1)] = yaml.safe_load(row.group(2))
    return tables


def test_configuration_reference_lists_every_key_with_its_default():
    tables = _documented_defaults()
    assert {"downstream/emotion_ecapa/config.yaml"} <= set(tables), sorted(tables)
    assert len(tables) == 2, f"expected stage 1's and stage 2's defaults files, got {sorted(tables)}"
    for path, documented in tables.items():
        assert (REPO / path).is_file(), f"docs/configuration.md documents {path}, which does not exist"
        defaults = _leaves(yaml.safe_load((REPO / path).read_text()))
        assert set(documented) == set(defaults), (
            f"{path}: keys missing from docs/configuration.md: {sorted(set(defaults) - set(documented))}; "
            f"documented but not in the file: {sorted(set(documented) - set(defaults))}"
        )
        wrong = {key: (documented[key], value) for key, value in defaults.items() if documented[key] != value}
        assert not wrong, f"{path}: documented default != file's (documented, file): {wrong}"


# A module named by path (s3prl_ser/data/audio.py, s3prl_ser/cli/) or dotted
# (s3prl_ser.data.audio.resample); not inside another path (~/.cache/s3prl_ser/features) and
# not a format tag (s3prl_ser.manifest/1).
MODULE_PATH = re.compile(r"(?<![\w/.~-])s3prl_ser(?:/[\w.-]+)+/?")
DOTTED = re.compile(r"(?<![\w/.~-])s3prl_ser(?:\.[A-Za-z_]\w*)+(?![\w/])")
WHEEL_ONLY = ("s3prl_ser/_downstream/",)  # the wheel's name for downstream/ (setup.py), not a checkout path


def missing_modules(path: Path, repo: Path = REPO) -> list[str]:
    """The ``s3prl_ser/...`` paths and ``s3prl_ser.x.y`` names of ``path`` (code included) that
    the checkout ``repo`` lacks. A dotted name resolves to its longest prefix that is a module or
    package; what follows must be a name that module's source mentions (a function, a class).

    Example:
        >>> import tempfile
        >>> repo = Path(tempfile.mkdtemp())
        >>> (repo / "s3prl_ser" / "data").mkdir(parents=True)
        >>> for name in ("__init__.py", "data/__init__.py"):
        ...     _ = (repo / "s3prl_ser" / name).write_text("# deploy, decode: words, not names")
        >>> _ = (repo / "s3prl_ser" / "data" / "audio.py").write_text("def resample(): ...")
        >>> doc = repo / "x.md"
        >>> _ = doc.write_text("s3prl_ser/data/audio.py, `s3prl_ser.data.audio.resample`, s3prl_ser/hub/, "
        ...                    "s3prl_ser.data.audio.decode, s3prl_ser.deploy.x. ~/.cache/s3prl_ser/features")
        >>> missing_modules(doc, repo)
        ['x.md: s3prl_ser/hub/', 'x.md: s3prl_ser.data.audio.decode', 'x.md: s3prl_ser.deploy.x']
    """
    text = path.read_text()
    missing = []
    for named in MODULE_PATH.findall(text):
        named = named.rstrip(".")  # a sentence's full stop
        if not named.startswith(WHEEL_ONLY) and not (repo / named).exists():
            missing.append(f"{path.name}: {named}")
    for named in DOTTED.findall(text):
        parts = named.rstrip(".").split(".")
        for n in range(len(parts), 0, -1):
            module = repo.joinpath(*parts[:n])
            source = module / "__init__.py" if module.is_dir() else module.with_suffix(".py")
            if source.is_file():
                break
        else:
            raise AssertionError(f"{repo} has no s3prl_ser package")
        attribute = parts[n] if n < len(parts) else None  # defined, or imported, in that module
        defines = rf"^\s*(?:def|class)\s+{attribute}\b|^{attribute}\s*[:=]|^\s*(?:from|import)\b.*\b{attribute}\b"
        if attribute and not re.search(defines, source.read_text(), re.MULTILINE):
            missing.append(f"{path.name}: {'.'.join(parts)}")
    return missing


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_named_modules_exist(path):
    assert missing_modules(path) == []
