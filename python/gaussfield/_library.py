"""Finds and loads the compiled ops library (a plain shared library, no Python module)."""
from pathlib import Path

import torch


def load_library() -> None:
    here = Path(__file__).resolve().parent
    candidates = sorted(here.glob("libgaussfield_ops.*")) + sorted(here.glob("gaussfield_ops.*"))
    libs = [p for p in candidates if p.suffix in (".so", ".dylib", ".dll")]
    if not libs:
        raise ImportError(
            f"gaussfield: the compiled ops library was not found in {here}. Build and install "
            "the package with `pip install --no-build-isolation --no-deps .` from the source tree "
            "(see README), and import it from outside the source tree."
        )
    torch.ops.load_library(str(libs[0]))
