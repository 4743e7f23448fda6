"""Sphinx configuration of rnnkern's documentation: python -m sphinx -W -b html docs OUT
(requirements-docs.txt). The API pages come from the docstrings of the installed package."""

import os
import sys

# `python -m sphinx` run in the checkout's root puts that folder first on sys.path, and its
# rnnkern/ (no compiled part) would shadow the installed package the API pages document.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]

import rnnkern  # noqa: E402

project = "rnnkern"
author = "The rnnkern authors"
copyright = "2026, The rnnkern authors"
release = version = rnnkern.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = f"rnnkern {release}"

# Napoleon's "Attributes:" sections as fields, so that a dataclass's attributes are not
# described twice (once by the section, once by autodoc's members).
napoleon_use_ivar = True
# LSTMOutput.y and GRUOutput.y share a field name that napoleon's return types cross-reference.
suppress_warnings = ["ref.python"]
