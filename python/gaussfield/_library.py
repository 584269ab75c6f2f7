# SPDX-License-Identifier: Apache-2.0
"""Finds and loads the compiled ops library (a plain shared library, no Python module),
after checking that it was built against the torch this process runs.

The build writes a record beside the library, ``gaussfield_build.json`` (CMakeLists.txt):
the torch version and CUDA version it was compiled against, whether it has CUDA kernels,
for which GPU architectures, and the source directory it was built from.  The library
is tied to that exact torch (torch's C++ ABI changes between releases, and a library
built against another release fails to load with an undefined symbol, or worse), so the
loader compares the record with the running torch first and, where they differ, raises
an error that names both and the command that rebuilds gaussfield.

Where the library is: beside this file in an ordinary install (site-packages, or
``pip install --target``); in an editable install (``pip install -e``) the Python files
stay in the source tree and the built files are installed into site-packages, and the
package's ``__path__`` holds both directories (scikit-build-core's redirecting finder),
so the library is looked for in every ``__path__`` entry, in order.
"""
import json
import sys
from pathlib import Path
from typing import Iterable, Optional

import torch

BUILD_RECORD = "gaussfield_build.json"
_LIBRARY_PATTERNS = ("libgaussfield_ops.*", "gaussfield_ops.*")
_LIBRARY_SUFFIXES = (".so", ".dylib", ".dll")

_build_info: Optional[dict] = None


def _find_library(package_dirs: Iterable[str]) -> Path:
    searched = []
    for directory in map(Path, package_dirs):
        searched.append(str(directory))
        libs = [p for pattern in _LIBRARY_PATTERNS for p in sorted(directory.glob(pattern))
                if p.suffix in _LIBRARY_SUFFIXES]
        if libs:
            return libs[0]
    raise ImportError(
        "gaussfield: the compiled ops library (libgaussfield_ops) was not found in "
        f"{' or '.join(searched)}. gaussfield must be built and installed before it is "
        "imported: `pip install --no-build-isolation .` from its source directory (`-e .` for "
        "an editable install; see docs/install.md). Importing it from the source tree "
        "(python/ on sys.path) does not work: the library is not built there.")


def _rebuild_command(record: dict) -> str:
    source = record.get("source_dir")
    if source and (Path(source) / "pyproject.toml").is_file():
        where = source
    else:
        where = "<gaussfield's source directory>"
    return f"{Path(sys.executable).name} -m pip install --no-build-isolation {where}"


def _describe(version: str, cuda: Optional[str]) -> str:
    return f"torch {version} ({f'CUDA {cuda}' if cuda else 'no CUDA'})"


def _read_record(library: Path) -> dict:
    path = library.with_name(BUILD_RECORD)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ImportError(
            f"gaussfield: {path} is missing: the build writes it beside the library "
            f"({library.name}), to say which torch the library was built against. The "
            "install is incomplete or from an older build: reinstall gaussfield (`pip install "
            "--no-build-isolation .` from its source directory; see docs/install.md).") from None
    except (OSError, ValueError) as e:
        raise ImportError(f"gaussfield: cannot read the build record {path}: {e}. Reinstall "
                          "gaussfield (see docs/install.md).") from None
    if not isinstance(record, dict) or not isinstance(record.get("torch"), str):
        raise ImportError(f"gaussfield: the build record {path} does not name the torch it was "
                          "built against. Reinstall gaussfield (see docs/install.md).")
    return record


def load_library(package_dirs: Iterable[str]) -> dict:
    """Loads the ops library found in ``package_dirs`` (the package's ``__path__``) into
    torch, after checking its build record against the running torch; returns the record."""
    global _build_info
    library = _find_library(package_dirs)
    record = _read_record(library)
    built = (record["torch"], record.get("torch_cuda"))
    running = (torch.__version__, torch.version.cuda)
    if built != running:
        raise ImportError(
            f"gaussfield was built against {_describe(*built)}, but this process runs "
            f"{_describe(*running)}. Its compiled library ({library}) works only with the torch "
            "it was built against (torch's C++ ABI changes between releases). Rebuild gaussfield "
            f"against the torch you have: `{_rebuild_command(record)}` (with `-e` before the "
            f"directory for an editable install), or go back to torch {built[0]}.")
    try:
        torch.ops.load_library(str(library))
    except OSError as e:
        raise ImportError(
            f"gaussfield: loading {library} failed: {e}. It was built against "
            f"{_describe(*built)}, which this process runs, so the library itself or a library "
            f"it needs is at fault: rebuild gaussfield (`{_rebuild_command(record)}`).") from e
    _build_info = dict(record, library=str(library))
    return _build_info


def build_info() -> dict:
    """How the loaded gaussfield library was built: ``torch`` and ``torch_cuda`` (the
    torch version and its CUDA version, ``None`` without CUDA, that it was compiled
    against and only loads into), ``cuda_kernels`` (whether it has CUDA kernels),
    ``cuda_architectures`` (the GPUs they were compiled for, CMake's notation),
    ``cuda_note`` (why there are CUDA kernels or none: the GF_WITH_CUDA setting, the
    CUDA compiler),
    ``gaussfield`` (the version), ``source_dir`` (where it was built from) and
    ``library`` (the file loaded)."""
    if _build_info is None:  # pragma: no cover - __init__ loads the library first
        raise RuntimeError("gaussfield's library is not loaded")
    return dict(_build_info)
