"""The README's set-up commands stay true: CI runs exactly its test command."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list:  # type: ignore[type-arg]
    lines = (ROOT / "README.rst").read_text().splitlines()[:15]
    return [line.strip() for line in lines if line.strip().startswith("python3 -m venv")]


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()
    assert demo.endswith("python -m natsbus demo")
    assert tests.endswith("python -m pytest")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, tests = _readme_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_changelog_and_architecture_render_without_warnings() -> None:
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
