"""The README stays true: its set-up commands are CI's, it renders on PyPI, every file it names ships."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text()


def _readme_commands() -> List[str]:
    lines = README.splitlines()[:15]
    return [line.strip() for line in lines if line.strip().startswith("python3 -m venv")]


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()
    assert demo.endswith("python -m natsbus demo")
    assert tests.endswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, tests = _readme_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_changelog_and_architecture_render_without_warnings() -> None:
    """As PyPI renders the long description: plain docutils, no Sphinx roles."""
    import io

    import docutils.core

    for name in ("README.rst", "CHANGELOG.rst", "docs/architecture.rst"):
        warnings = io.StringIO()
        docutils.core.publish_string(
            (ROOT / name).read_text(),
            writer="html",
            settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": warnings},
        )
        assert warnings.getvalue() == "", f"{name}: {warnings.getvalue()}"


def _shipped(path: str) -> bool:
    """Whether MANIFEST.in puts ``path`` in the source distribution (its include directives)."""
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "include" and any(fnmatch.fnmatch(path, pattern) for pattern in words[1:]):
            return True
        if words[0] == "recursive-include":
            folder, patterns = words[1], words[2:]
            if path.startswith(folder + "/") and any(fnmatch.fnmatch(Path(path).name, p) for p in patterns):
                return True
    return False


def _named_files() -> List[str]:
    """The repository files the README names as literals: ``docs/cli.rst``, ``CHANGELOG.rst``..."""
    literals = re.findall(r"``([^`\s]+)``", README)
    return sorted({lit for lit in literals if re.fullmatch(r"([\w.-]+/)*[\w-]+\.(rst|md|py|in|txt)|LICENSE", lit)})


def test_every_file_the_readme_names_exists_and_ships_in_the_sdist() -> None:
    named = _named_files()
    assert "docs/quickstart.rst" in named and "CHANGELOG.rst" in named
    for path in named:
        assert (ROOT / path).is_file(), f"README names {path}, which does not exist"
        assert _shipped(path), f"README names {path}, which MANIFEST.in leaves out of the sdist"


def test_the_readme_links_only_to_absolute_urls() -> None:
    """On PyPI a relative link resolves against pypi.org: files are named, not linked."""
    targets = re.findall(r"`[^`]*<([^>]+)>`_", README) + re.findall(r"^\.\. _[^:]+: *(\S+)", README, re.M)
    assert [t for t in targets if not t.startswith("https://")] == []


def test_every_docs_page_the_readme_lists_is_in_the_toctree() -> None:
    index = (ROOT / "docs" / "index.rst").read_text()
    pages = [p for p in _named_files() if p.startswith("docs/") and p.endswith(".rst")]
    for page in pages:
        assert re.search(rf"^   {re.escape(Path(page).stem)}$", index, re.M), f"{page} is not in docs/index.rst"
