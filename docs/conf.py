"""Sphinx configuration of the natsbus documentation.

Build it as CI does (warnings are errors)::

    pip install -e '.[dev]'
    sphinx-build -W --keep-going -b html docs build/docs
"""

from __future__ import annotations

import sys
from pathlib import Path

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


def setup(app: object) -> None:
    app.connect("autodoc-process-docstring", _note_module)  # type: ignore[attr-defined]
    app.connect("autodoc-skip-member", _skip_reexported)  # type: ignore[attr-defined]
