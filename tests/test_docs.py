"""Every code example in README.rst and docs/*.rst works: Python runs, ``natsbus`` commands parse.

What is checked, per document (a new ``docs/*.rst`` is picked up by the glob):

* ``.. code-block:: python`` blocks run, in the order of the document, in one
  module namespace per document (a later block uses what an earlier one
  defined), against the suite's real nats-server: ``NATS_URL`` is set to it,
  so ``Bus()`` connects there, and ``nats://127.0.0.1:4222`` in an example
  is replaced by its URL. A traceback names the document and the line.
  Whatever the examples left running (a ``Bus``, a started ``WorkerPool``) is
  closed after the document.
* ``.. code-block:: console`` blocks: each ``natsbus ...`` command (also
  ``python -m natsbus ...``; after a ``$`` prompt when the block has prompts)
  is parsed by natsbus's real argument parser, as the shell would split it
  (up to a pipe or a redirection). Parsing only: nothing is run, no ``--help``.

A block that must not run says so, and why, in a comment just before it::

    .. not-run: a Django view: needs a Django project and its database

    .. code-block:: python

The reason is required (and shows in the test's output): use it for a
deliberate fragment (a function body, a settings file), or for what the
suite does not have where the example would run (a Django project, a
systemd unit, a command that runs for minutes). Everything else runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

import pytest

from natsbus import Bus, WorkerPool
from natsbus.cli.main import _parser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
#: The address the examples use; the tests replace it with their server's.
EXAMPLE_URL = "nats://127.0.0.1:4222"

DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. code-block:: *(?P<lang>\S+) *$")
NOT_RUN = re.compile(r"^ *\.\. not-run:(?P<reason>.*)$")


class Block(NamedTuple):
    path: Path
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    not_run: Optional[str]  # the reason, when the block is marked not to run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> List[Block]:
    """The ``.. code-block::`` blocks of one reStructuredText file, in order."""
    lines = path.read_text().splitlines()
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        match = DIRECTIVE.match(lines[i])
        if not match:
            i += 1
            continue
        not_run = None
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = NOT_RUN.match(lines[before]) if before >= 0 else None
        if marker:
            not_run = marker.group("reason").strip()
            assert not_run, f"{path.name}:{before + 1}: '.. not-run:' needs a reason"
        indent = len(match.group("indent"))
        i += 1
        while i < len(lines) and re.match(r"^ +:[\w-]+:", lines[i]):  # the directive's options
            i += 1
        body: List[str] = []
        start = None
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            if start is None and lines[i].strip():
                start = i
            if start is not None:
                body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        assert start is not None, f"{path.name}:{i}: an empty code block"
        width = min(len(line) - len(line.lstrip()) for line in body if line.strip())
        code = "\n".join(line[width:] for line in body) + "\n"
        blocks.append(Block(path, start + 1, match.group("lang"), code, not_run))
    return blocks


def _blocks(lang: str) -> Dict[str, List[Block]]:
    found = {}
    for path in DOCUMENTS:
        blocks = [block for block in code_blocks(path) if block.lang == lang]
        if blocks:
            found[str(path.relative_to(ROOT))] = blocks
    return found


PYTHON = _blocks("python")
CONSOLE = _blocks("console")  # the documents with natsbus commands: see natsbus_commands(), below


# -- Python ------------------------------------------------------------------------------


def run_python(blocks: List[Block], url: str) -> Dict[str, Any]:
    """Run the blocks in order in one fresh module; return its namespace."""
    name = "docs_example_" + re.sub(r"\W", "_", str(blocks[0].path.relative_to(ROOT)))
    module = types.ModuleType(name)
    module.__file__ = str(blocks[0].path)
    sys.modules[name] = module  # attrs and cattrs resolve annotations through it
    try:
        for block in blocks:
            # Line numbers in a traceback are the document's own.
            source = "\n" * (block.line - 1) + block.code.replace(EXAMPLE_URL, url)
            exec(compile(source, str(block.path), "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module.__dict__


def close_what_is_left(namespace: Dict[str, Any]) -> None:
    """Stop the pools and close the buses an example left open (it may have failed half-way)."""
    values = list(namespace.values())
    for value in values:
        if isinstance(value, WorkerPool) and value.running:
            value.stop(drain_timeout=5.0)
    for value in values:
        if isinstance(value, Bus):
            value.close()


@pytest.fixture()
def examples_env(natsbus_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """``NATS_URL`` set to the suite's server, a scratch working directory."""
    monkeypatch.setenv("NATS_URL", natsbus_url)
    monkeypatch.chdir(tmp_path)
    yield natsbus_url


@pytest.mark.parametrize("document", sorted(PYTHON))
def test_the_python_examples_run(document: str, examples_env: str) -> None:
    runnable = [block for block in PYTHON[document] if block.not_run is None]
    if not runnable:
        pytest.skip("every Python block is marked not-run: " + "; ".join(b.not_run or "" for b in PYTHON[document]))
    namespace: Dict[str, Any] = {}
    try:
        namespace = run_python(runnable, examples_env)
    finally:
        close_what_is_left(namespace)


def test_a_failing_example_fails_and_names_its_line(tmp_path: Path) -> None:
    doc = tmp_path / "broken.rst"
    doc.write_text("Title\n=====\n\n.. code-block:: python\n\n    x = 1\n    assert x == 2, 'wrong'\n")
    blocks = code_blocks(doc)
    with pytest.raises(AssertionError, match="wrong") as raised:
        run_python([b._replace(path=ROOT / "docs" / "broken.rst") for b in blocks], "nats://unused")
    assert raised.traceback[-1].lineno + 1 == 7  # pytest counts from 0


def test_a_block_marked_not_run_needs_a_reason(tmp_path: Path) -> None:
    doc = tmp_path / "marked.rst"
    doc.write_text(".. not-run: a fragment\n\n.. code-block:: python\n\n    return x\n")
    assert code_blocks(doc)[0].not_run == "a fragment"
    doc.write_text(".. not-run:\n\n.. code-block:: python\n\n    return x\n")
    with pytest.raises(AssertionError, match="needs a reason"):
        code_blocks(doc)


# -- console ------------------------------------------------------------------------------

_PYTHON = re.compile(r"(\S*/)?python3?(\.\d+)?")
_SHELL_STOP = {"|", "||", "&&", ";", "<", ">", ">>", "&"}


def natsbus_commands(block: Block) -> List[List[str]]:
    """The argv (after ``natsbus``) of each ``natsbus`` command in a console block."""
    lines = block.code.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    commands: List[List[str]] = []
    joined: List[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
    for line in joined:
        if prompted:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value natsbus ...
            words.pop(0)
        if len(words) >= 3 and _PYTHON.fullmatch(words[0]) and words[1:3] == ["-m", "natsbus"]:
            words[:3] = ["natsbus"]
        if not words or words[0] != "natsbus":
            continue
        argv = []
        for word in words[1:]:
            if word in _SHELL_STOP or word[:1] in "<>|" or re.fullmatch(r"\d?>+&?\d*", word):
                break
            argv.append(word)
        commands.append(argv)
    return commands


class ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # not exit(2): the test says which command and why
        raise ParseError(message)


def parse(argv: List[str]) -> argparse.Namespace:
    parser = _parser()
    for action in [parser, *_subparsers(parser)]:
        action.error = types.MethodType(_Parser.error, action)  # type: ignore[method-assign]
    return parser.parse_args(argv)


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


WITH_COMMANDS = sorted(doc for doc, blocks in CONSOLE.items() if any(natsbus_commands(b) for b in blocks))


@pytest.mark.parametrize("document", WITH_COMMANDS)
def test_the_natsbus_commands_parse(document: str) -> None:
    checked = 0
    for block in CONSOLE[document]:
        if block.not_run is not None:
            continue
        for argv in natsbus_commands(block):
            try:
                args = parse(argv)
            except ParseError as exc:
                pytest.fail(f"{block.where}: natsbus {shlex.join(argv)}: {exc}")
            assert args.command, f"{block.where}: natsbus {shlex.join(argv)}: no command"
            checked += 1
    if checked == 0:
        pytest.skip("every natsbus command is in a block marked not-run")


def test_a_wrong_command_does_not_parse(tmp_path: Path) -> None:
    doc = tmp_path / "cli.rst"
    doc.write_text(
        ".. code-block:: console\n\n"
        "    $ natsbus ls user-service | head\n    output\n"
        "    $ NATS_URL=nats://h:4222 python -m natsbus worker \\\n        app:pool --max-workers 4 > log\n"
        "    $ natsbus ls --no-such-flag\n"
    )
    commands = natsbus_commands(code_blocks(doc)[0])
    assert commands == [["ls", "user-service"], ["worker", "app:pool", "--max-workers", "4"], ["ls", "--no-such-flag"]]
    assert parse(commands[1]).max_workers == 4
    with pytest.raises(ParseError, match="no-such-flag"):
        parse(commands[2])
    with pytest.raises(ParseError):
        parse(["worker", "app:pool", "--max-workers", "0"])


def test_every_document_with_examples_is_found() -> None:
    assert "README.rst" in {str(p.relative_to(ROOT)) for p in DOCUMENTS}
    assert os.path.exists(ROOT / "docs" / "index.rst")
    assert PYTHON, "no Python example found in the docs"
    assert "docs/cli.rst" in WITH_COMMANDS
