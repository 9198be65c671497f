"""Sphinx configuration of the natsbus documentation.

Build it as CI does (warnings are errors)::

    pip install -e '.[docs]'     # or '.[dev]', which has it
    sphinx-build -W --keep-going -b html docs build/docs
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import natsbus  # noqa: E402

project = "natsbus"
author = "natsbus contributors"
copyright = "natsbus contributors"
release = natsbus.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",  # docs/wire-contract.md stays Markdown: the spec other-language clients read
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
# docs/wire-contract.md is the specification other languages' clients read: it stays
# Markdown, byte for byte (tests/test_schema.py parses its examples), and Sphinx reads it
# through myst-parser. Its headings get anchors, so a page can link to a section.
myst_heading_anchors = 3

# autodoc: Google-style docstrings (Args / Returns / Raises), members in source order.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"natsbus {release}"
html_static_path: list[str] = []


# -- one entry per object --------------------------------------------------------
# A name that ``natsbus`` exports is documented under ``natsbus``; the public
# module that defines it (natsbus.cqrs has CommandBus) skips it, so the API
# page has one target per object and no duplicate-description warning.
_documenting = {"module": ""}


def _note_module(app: object, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    if what == "module":
        _documenting["module"] = name


def _skip_reexported(app: object, what: str, name: str, obj: object, skip: bool, options: object) -> bool | None:
    exported = name in natsbus.__all__ and getattr(natsbus, name, None) is obj
    if what == "module" and _documenting["module"] != "natsbus" and exported:
        return True
    return None


# -- re-exported data keeps its doc comment --------------------------------------
# Sphinx reads a ``#:`` doc comment in the module that assigns a name; a module
# that imports and exports it (natsbus.DEFAULT, natsbus.cqrs.TimeoutArg) has none,
# so docs/api.rst names those with ``autodata`` and the comment is looked up where
# the value was assigned.


def _origin_doc(name: str, obj: object) -> list[str] | None:
    from sphinx.pycode import ModuleAnalyzer

    for modname, module in sorted(sys.modules.items()):
        if modname.split(".")[0] != "natsbus" or getattr(module, name, _documenting) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:  # a module without source
            continue
        if ("", name) in docs:
            return list(docs[("", name)])
    return None


def _data_doc(app: object, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    _documented.add(name)
    if what == "data":
        doc = _origin_doc(name.rpartition(".")[2], obj)
        if doc is not None:
            lines[:] = doc


# -- every public name has an entry -------------------------------------------------
# The public API is natsbus.__all__ and the __all__ of each natsbus.PUBLIC_MODULES;
# a name without an entry on the API page (data without a doc comment, a module not
# listed in docs/api.rst) is a warning, so an error in CI's build.
_documented: set[str] = set()
_read: set[str] = set()


def _note_read(app: object, env: object, docnames: list[str]) -> None:
    _read.update(docnames)


def _check_complete(app: Any, exception: BaseException | None) -> None:
    if exception is not None or "api" not in _read:
        return  # an incremental build that did not read the API page has nothing to compare
    from sphinx.util import logging

    wanted = {f"natsbus.{name}" for name in natsbus.__all__}
    for modname in natsbus.PUBLIC_MODULES:
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", ()):
            if not (name in natsbus.__all__ and getattr(natsbus, name, None) is getattr(module, name)):
                wanted.add(f"{modname}.{name}")
    for name in sorted(wanted - _documented):
        logging.getLogger(__name__).warning("the API page has no entry for the public name %s", name)


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _note_module)
    app.connect("autodoc-process-docstring", _data_doc)
    app.connect("autodoc-skip-member", _skip_reexported)
    app.connect("env-before-read-docs", _note_read)
    app.connect("build-finished", _check_complete)
