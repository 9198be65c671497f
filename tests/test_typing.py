"""mypy catches misuse of the public API, and accepts correct use (fixtures in tests/typing_fixtures/).

``pass_usage.py`` must type-check clean under ``mypy --strict``; every line of
``fail_misuse.py`` marked ``# E: text`` must get an error containing
``text``, and no other line may get one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "typing_fixtures"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[Tuple[int, str]]]:
    """mypy --strict on both fixtures in one run: {file name: [(line, message)]}."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    files = [FIXTURES / "pass_usage.py", FIXTURES / "fail_misuse.py"]
    stdout, stderr, _ = mypy_api.run(
        [
            *("--config-file", str(ROOT / "pyproject.toml"), "--strict", "--cache-dir", str(cache)),
            *("--no-error-summary", "--show-error-codes", "--hide-error-context", *map(str, files)),
        ]
    )
    assert stderr == ""
    found: Dict[str, List[Tuple[int, str]]] = {f.name: [] for f in files}
    for line in stdout.splitlines():
        match = re.match(r"(.+?):(\d+): error: (.*)", line)
        if match:
            found[Path(match.group(1)).name].append((int(match.group(2)), match.group(3)))
    return found


def test_correct_use_type_checks_clean(errors: Dict[str, List[Tuple[int, str]]]) -> None:
    assert errors["pass_usage.py"] == []


def test_every_misuse_is_an_error_on_its_line(errors: Dict[str, List[Tuple[int, str]]]) -> None:
    expected: Dict[int, str] = {}
    for number, line in enumerate((FIXTURES / "fail_misuse.py").read_text().splitlines(), start=1):
        marker = line.partition("# E: ")[2]
        if marker:
            expected[number] = marker.strip()
    got: Dict[int, List[str]] = {}
    for number, message in errors["fail_misuse.py"]:
        got.setdefault(number, []).append(message)
    assert sorted(got) == sorted(expected)
    for number, text in expected.items():
        assert any(text in message for message in got[number]), (number, got[number])
