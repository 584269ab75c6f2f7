# SPDX-License-Identifier: Apache-2.0
"""Sphinx configuration of gaussfield's docs: Markdown pages (MyST) and the API reference
from the docstrings (autodoc; the docstrings are Google style, read by napoleon).

Built by ``make docs`` (``python -m sphinx -E -W --keep-going -b html docs build/docs``:
warnings are errors).  autodoc imports the installed package, so build and install it
first (``make install``).  Every Python code block of these pages runs in CI as written
(tests/test_docs_blocks.py).
"""
from pathlib import Path

try:
    import gaussfield
except ImportError as e:  # the compiled ops come with the installed package only
    raise RuntimeError(
        "the docs import gaussfield for its API reference: build and install it first "
        "(make install), and build the docs from outside python/") from e

project = "gaussfield"
author = "the gaussfield authors"
release = version = gaussfield.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"

# Markdown: $...$ maths, and anchors for headings so that pages can link to sections
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# The docstrings are Google style (Args:, Returns:)
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = f"gaussfield {release}"

# Pages that other branches write (install: installing, extras, switches; migration:
# 0.1 -> 0.2; distributed-example: the walk-through of examples/train_distributed.py).
# index.md lists them in its toctree; where a page's file does not exist yet, its line
# is dropped from the toctree before Sphinx reads it, so the build passes with or
# without them.  (A toctree :glob: pattern that matches nothing is itself a warning, so
# a glob cannot do this under -W.)
PENDING_PAGES = ("install", "migration", "distributed-example")


def _drop_missing_pending_pages(app, docname, source):
    if docname != root_doc:
        return
    here = Path(app.srcdir)
    missing = {name for name in PENDING_PAGES if not (here / f"{name}.md").exists()}
    lines = source[0].splitlines(keepends=True)
    source[0] = "".join(line for line in lines if line.strip() not in missing)


def setup(app):
    app.connect("source-read", _drop_missing_pending_pages)
