"""Sphinx configuration for refresher's documentation site.

Build it (warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import refresher  # noqa: E402  (after the path: the docs document the installed package)

project = "refresher"
author = "refresher's authors"
copyright = "2026, refresher's authors"  # noqa: A001  (Sphinx's name)
release = version = refresher.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "refresher_cli",  # docs/_ext: the command line's reference, from its own parser
]

exclude_patterns = ["_build", "_tools", "README.rst"]
nitpicky = False
root_doc = "index"

html_theme = "furo"
html_title = f"refresher {release}"
html_static_path: list[str] = []

autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}

# No network at build time: cross-references to other projects stay plain text.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
