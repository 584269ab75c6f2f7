# SPDX-License-Identifier: Apache-2.0
"""The loader (python/gaussfield/_library.py): the build record beside the library says
which torch it was built against, and loading it into another torch raises an error that
names both versions and the command that rebuilds gaussfield; the library is found in
any directory of the package's __path__ (an editable install keeps it apart from the
Python files; tests/test_packaging.py does a real one)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gaussfield
from gaussfield import _library

INFO = gaussfield.build_info()
LIBRARY = Path(INFO["library"])
RECORD = json.loads((LIBRARY.parent / "gaussfield_build.json").read_text())


def test_build_info_is_the_record_of_the_loaded_library():
    assert {k: INFO[k] for k in RECORD} == RECORD
    assert INFO["torch"] == torch.__version__ and INFO["torch_cuda"] == torch.version.cuda
    assert INFO["gaussfield"] == gaussfield.__version__
    assert isinstance(INFO["cuda_kernels"], bool) and INFO["cuda_note"]
    # CUDA kernels only where torch has CUDA; then the record names their architectures
    assert not INFO["cuda_kernels"] or (torch.version.cuda and INFO["cuda_architectures"])
    assert (Path(INFO["source_dir"]) / "pyproject.toml").is_file()
    copy = gaussfield.build_info()
    copy["torch"] = "changed"  # a copy: the loaded record stays as it is
    assert gaussfield.build_info()["torch"] == torch.__version__


def _package_copy(root: Path, record=None) -> Path:
    """gaussfield's Python files and its library in root/gaussfield, with the given
    build record (None: none)."""
    package = root / "gaussfield"
    package.mkdir(parents=True)
    for source in Path(gaussfield.__file__).parent.glob("*.py"):
        shutil.copy(source, package)
    shutil.copy(LIBRARY, package)
    if record is not None:
        (package / _library.BUILD_RECORD).write_text(json.dumps(record))
    return root


def _import(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import gaussfield; print(gaussfield.build_info()['library'])"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(root)))


def test_a_copy_with_the_true_record_loads(tmp_path):
    done = _import(_package_copy(tmp_path, RECORD))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "gaussfield" / LIBRARY.name)


@pytest.mark.parametrize("field,value,says", [
    ("torch", "2.99.0+fake", "built against torch 2.99.0+fake"),
    ("torch_cuda", "99.9", "(CUDA 99.9)"),
])
def test_another_torch_is_refused_with_both_versions_and_the_rebuild_command(tmp_path, field, value, says):
    record = dict(RECORD, **{field: value})
    done = _import(_package_copy(tmp_path, record))
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: gaussfield was built against"), done.stderr
    assert says in message
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
    assert f"but this process runs torch {torch.__version__} ({cuda})" in message
    assert f"-m pip install --no-build-isolation {INFO['source_dir']}`" in message
    assert f"or go back to torch {record['torch']}" in message


def test_a_library_without_its_record_is_refused(tmp_path):
    done = _import(_package_copy(tmp_path, record=None))
    assert done.returncode != 0
    assert f"{_library.BUILD_RECORD} is missing" in done.stderr and "reinstall gaussfield" in done.stderr


def test_the_library_is_found_in_any_directory_of_the_package_path(tmp_path):
    sources, built = tmp_path / "src" / "gaussfield", tmp_path / "site" / "gaussfield"
    sources.mkdir(parents=True)
    built.mkdir(parents=True)
    (built / LIBRARY.name).write_bytes(b"")
    assert _library._find_library([str(sources), str(built)]) == built / LIBRARY.name
    (built / LIBRARY.name).unlink()
    with pytest.raises(ImportError, match=r"was not found in .*src/gaussfield or .*site/gaussfield\..*"
                                          r"pip install --no-build-isolation \."):
        _library._find_library([str(sources), str(built)])
