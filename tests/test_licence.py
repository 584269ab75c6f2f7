# SPDX-License-Identifier: Apache-2.0
"""The licence: Apache-2.0 in LICENSE, pyproject's SPDX expression, and the SPDX line at
the top of every source file of the tree (C, C++, CUDA, Python, shell)."""
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TAG = "SPDX-License-Identifier: Apache-2.0"
SOURCE = {".c", ".h", ".cpp", ".hpp", ".cu", ".cuh", ".py", ".sh"}


def tracked():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out]


def test_licence_file_and_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"


def test_every_source_file_says_its_licence():
    files = [p for p in tracked() if p.suffix in SOURCE or p.relative_to(ROOT).as_posix() == ".ci/run"]
    assert len(files) > 50, len(files)
    missing = [str(p.relative_to(ROOT)) for p in files
               if p.exists() and TAG not in "\n".join(p.read_text().splitlines()[:3])]
    assert not missing, f"source files without '{TAG}' in their first lines: {missing}"
