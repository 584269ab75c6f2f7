# SPDX-License-Identifier: Apache-2.0
"""`import gaussfield` gives gaussfield.io and gaussfield.distributed on first use (a
module __getattr__), and needs no plyfile: only the functions that read or write a PLY
file do, and without it they raise an ImportError that says what to install."""
import subprocess
import sys

import pytest
import torch

import gaussfield


def test_submodules_are_imported_on_first_use_and_plyfile_only_when_needed():
    code = """
import sys
import gaussfield
assert "gaussfield.io" not in sys.modules and "plyfile" not in sys.modules
assert {"io", "distributed"} <= set(dir(gaussfield))
io = gaussfield.io
assert io is sys.modules["gaussfield.io"] and io.read_3dgs_ply
assert "plyfile" not in sys.modules  # the module imports without it
assert gaussfield.distributed.shutdown
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'gaussfield' has no attribute 'nope'"):
        gaussfield.nope  # noqa: B018


def test_without_plyfile_the_ply_functions_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "plyfile", None)  # `import plyfile` now fails
    path = tmp_path / "scene.ply"
    with pytest.raises(ImportError, match=r"gaussfield.io.read_3dgs_ply needs plyfile, which is not "
                                          r"installed: pip install gaussfield\[io\] \(or pip install plyfile\)"):
        gaussfield.io.read_3dgs_ply(path)
    with pytest.raises(ImportError, match=r"gaussfield.io.write_3dgs_ply needs plyfile.*gaussfield\[io\]"):
        gaussfield.io.write_3dgs_ply(path, torch.zeros(1, 3), torch.zeros(1, 7), torch.zeros(1))
    assert not path.exists()
