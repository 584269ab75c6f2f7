# SPDX-License-Identifier: Apache-2.0
"""The install story (docs/install.md), as users type it: real pip runs against the
in-tree build backend (build_backend/), a real editable install into a scratch
environment, the CMake switches (GF_WITH_CUDA, GF_PTXAS_VERBOSE) at configure time, the
Makefile's test path, setup's requirements and the package metadata.

Costs on 2 cores: the editable install compiles the CPU library once (about 1.5 min in
a fresh clone; its build directory, build/test-editable/ under the source tree, is
reused by later runs); the rest takes seconds each. The isolated pip run needs an index
to fetch scikit-build-core from and is skipped, saying so, where there is none."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BACKEND_DIR = ROOT / "build_backend"
NVCC = shutil.which("nvcc")


def run(cmd, *, cwd=ROOT, env=None, timeout=600):
    start = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    done.seconds = time.monotonic() - start
    done.output = done.stdout + done.stderr
    return done


def venv(path: Path, *, system_site_packages: bool, pip: bool = True) -> Path:
    """A scratch environment; its python.  With the system site packages it needs no pip
    of its own (the system's installs into it)."""
    args = [sys.executable, "-m", "venv", str(path)]
    if system_site_packages:
        args.append("--system-site-packages")
    if system_site_packages or not pip:
        args.append("--without-pip")
    done = run(args, timeout=300)
    assert done.returncode == 0, done.output
    return path / "bin" / "python"


def backend_hook(hook: str, *args, env=None):
    """Calls a hook of the in-tree backend in a fresh interpreter at the source root,
    as a frontend does (without the source root itself on sys.path)."""
    code = (f"import sys; sys.path.insert(0, {str(BACKEND_DIR)!r}); import gaussfield_build_backend as b; "
            f"print(b.{hook}(*{args!r}))")
    return run([sys.executable, "-P", "-c", code], env=env)


# ---- the build backend -----------------------------------------------------------------

def test_isolated_pip_install_stops_at_once_naming_build_isolation(tmp_path):
    """`pip install .` (build isolation) cannot see the installed torch: it must stop in
    seconds, before any CMake, and give the command that works."""
    done = run([sys.executable, "-m", "pip", "install", "--target", tmp_path / "target", ROOT])
    if "Getting requirements to build wheel" not in done.output:
        pytest.skip("pip could not set up the isolated build environment (no package index "
                    "to fetch scikit-build-core from?):\n" + done.output[-2000:])
    assert done.returncode != 0
    assert done.seconds < 60, f"took {done.seconds:.0f} s"
    assert "this build cannot see it: pip builds in an isolated environment" in done.output
    assert f"torch {torch.__version__} in " in done.output
    assert "pip install --no-build-isolation ." in done.output
    assert "Traceback" not in done.output and "CMake" not in done.output
    assert not (tmp_path / "target").exists()


def test_without_torch_the_build_says_install_torch_first(tmp_path):
    python = venv(tmp_path / "venv", system_site_packages=False, pip=False)
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    # scikit-build-core and its dependencies visible, torch not: the package's own directory
    for name in ("scikit_build_core", "packaging", "pathspec"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            pytest.skip(f"{name} is not installed")
        shutil.copytree(Path(spec.origin).parent, site / name)
    code = (f"import sys; sys.path.insert(0, {str(BACKEND_DIR)!r}); import gaussfield_build_backend as b; "
            "b.get_requires_for_build_wheel()")
    done = run([python, "-P", "-c", code], env=dict(os.environ, PYTHONNOUSERSITE="1"))
    assert done.returncode == 1
    # (the probe outside pip's isolation finds no torch either: this venv has none)
    assert "torch cannot be imported by" in done.output, done.output
    assert "install torch first" in done.output
    assert "pip install --no-build-isolation ." in done.output


def test_no_build_isolation_without_scikit_build_core_says_what_to_install(tmp_path):
    python = venv(tmp_path / "venv", system_site_packages=False)
    done = run([python, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                "--no-index", "--target", tmp_path / "target", ROOT])
    assert done.returncode != 0
    assert done.seconds < 60, f"took {done.seconds:.0f} s"
    assert "gaussfield is built by scikit-build-core, which" in done.output, done.output
    assert f"{python} -m pip install scikit-build-core ninja cmake" in done.output
    assert "Traceback" not in done.output


def test_no_build_isolation_without_cmake_says_what_to_install(tmp_path):
    for name in ("cmake", "ninja"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        pytest.skip(f"the {name} Python package is installed: the build tools cannot be hidden")
    empty = tmp_path / "bin"
    empty.mkdir()
    done = backend_hook("prepare_metadata_for_build_wheel", str(tmp_path),
                        env=dict(os.environ, PATH=str(empty)))
    assert done.returncode == 1
    assert "gaussfield's build needs cmake>=3.24" in done.output, done.output
    assert re.search(r'pip install "cmake>=3\.24"', done.output)
    assert "Traceback" not in done.output


def test_metadata_has_the_licence_dependencies_and_extras(tmp_path):
    done = backend_hook("prepare_metadata_for_build_wheel", str(tmp_path))
    assert done.returncode == 0, done.output
    metadata = (tmp_path / done.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert "Requires-Dist: torch>=2.11" in metadata and "Requires-Dist: numpy" in metadata
    for extra in ("io", "examples", "test", "docs"):
        assert f"Provides-Extra: {extra}" in metadata
    assert 'Requires-Dist: plyfile; extra == "io"' in metadata
    assert 'Requires-Dist: myst-parser>=4; extra == "docs"' in metadata
    licence = (ROOT / "LICENSE").read_text()
    assert licence.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in licence
    assert "Copyright 2026 The gaussfield authors" in licence


# ---- an editable install ---------------------------------------------------------------

def test_editable_install_imports_and_takes_python_edits(tmp_path):
    """pip install --no-build-isolation -e . gives a package that imports (its library
    is installed apart from the Python files) and runs edits of its Python files."""
    work = ROOT / "build" / "test-editable"
    source = work / "src"
    # a copy of the tree, so that the test can edit it; copy2 keeps the files' times, so
    # the build directory beside it stays up to date from one run to the next
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(ROOT, source, copy_function=shutil.copy2, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "__pycache__", "*.so", ".hypothesis",
                                                  ".pytest_cache", "results"))
    python = venv(tmp_path / "venv", system_site_packages=True)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the scratch environment's gaussfield, not another
    done = run([python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", source,
                "-C", f"build-dir={work / 'build'}", "-C", "cmake.define.GF_WITH_CUDA=OFF"],
               env=env, timeout=1200)
    assert done.returncode == 0, done.output[-4000:]
    probe = ("import gaussfield, torch; x = torch.rand(5, 3, dtype=torch.float64); "
             "f = gaussfield.gaussian_field(x, x[:4] + 0.1, torch.zeros(4, 6, dtype=torch.float64), "
             "torch.ones(4, dtype=torch.float64)); "
             "print(gaussfield.__file__); print(gaussfield.build_info()['library']); print(f.shape[0]); "
             "print(getattr(gaussfield._common, 'EDITED', 'not edited'))")
    first = run([python, "-c", probe], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.output
    module, library, rows, edited = first.stdout.splitlines()
    assert Path(module) == source / "python" / "gaussfield" / "__init__.py"
    assert Path(library).parent == next((tmp_path / "venv" / "lib").glob("python*/site-packages")) / "gaussfield"
    assert rows == "5" and edited == "not edited"
    with open(source / "python" / "gaussfield" / "_common.py", "a") as f:
        f.write('\nEDITED = "edited"\n')
    second = run([python, "-c", probe], cwd=tmp_path, env=env)
    assert second.returncode == 0 and second.stdout.splitlines()[-1] == "edited", second.output


# ---- the CMake switches -----------------------------------------------------------------

def configure(build: Path, *args, env=None):
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    return run(["cmake", "-S", ROOT, "-B", build, *generator, *args], env=env)


def test_gf_with_cuda_takes_only_auto_on_off(tmp_path):
    done = configure(tmp_path, "-DGF_BUILD_TORCH=OFF", "-DGF_WITH_CUDA=MAYBE")
    assert done.returncode != 0 and "GF_WITH_CUDA must be AUTO, ON or OFF, got 'MAYBE'" in done.output


def test_gf_with_cuda_on_without_a_cuda_compiler_is_an_error(tmp_path):
    done = configure(tmp_path, "-DGF_BUILD_TORCH=OFF", "-DGF_WITH_CUDA=ON",
                     env=dict(os.environ, CUDACXX=str(tmp_path / "no-nvcc")))
    assert done.returncode != 0
    assert re.search(r"GF_WITH_CUDA=ON, but no CUDA\s+compiler was found", done.output), done.output


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch has CUDA: AUTO builds the kernels")
def test_auto_builds_no_cuda_kernels_for_a_torch_without_cuda(tmp_path):
    done = configure(tmp_path, f"-DPython3_EXECUTABLE={sys.executable}")
    assert done.returncode == 0, done.output
    assert (f"CUDA kernels OFF (GF_WITH_CUDA=AUTO and torch {torch.__version__} has no CUDA"
            in done.output)
    record = (tmp_path / "gaussfield_build.json").read_text()
    assert f'"torch": "{torch.__version__}"' in record and '"cuda_kernels": false' in record
    assert "not built: GF_WITH_CUDA=AUTO" in record


@pytest.mark.skipif(NVCC is None, reason="no nvcc")
def test_cuda_kernels_without_torch_and_ptxas_report_on_request(tmp_path):
    """AUTO without the torch extension builds the kernels where nvcc is; ptxas -v only
    with GF_PTXAS_VERBOSE=ON."""
    done = configure(tmp_path, "-DGF_BUILD_TORCH=OFF", "-DCMAKE_CUDA_ARCHITECTURES=90-real")
    assert done.returncode == 0, done.output
    assert "CUDA kernels ON (GF_WITH_CUDA=AUTO" in done.output
    rules = tmp_path / ("build.ninja" if shutil.which("ninja") else "cuda/CMakeFiles/gaussfield_cuda.dir/flags.make")
    assert "-Xptxas=-v" not in rules.read_text()
    done = configure(tmp_path, "-DGF_PTXAS_VERBOSE=ON")
    assert done.returncode == 0, done.output
    assert "-Xptxas=-v" in rules.read_text()


def test_make_test_asks_for_cuda_wherever_nvcc_is_and_make_install_for_auto():
    if shutil.which("make") is None:
        pytest.skip("no make")
    test = run(["make", "-n", "test"]).stdout
    install = run(["make", "-n", "install"]).stdout
    assert f"-C cmake.define.GF_WITH_CUDA={'ON' if NVCC else 'AUTO'} ." in test
    assert "-C cmake.define.GF_WITH_CUDA=AUTO ." in install
    assert "-C cmake.define.GF_WITH_CUDA=OFF ." in run(["make", "-n", "install", "GF_WITH_CUDA=OFF"]).stdout


# ---- setup's requirements ---------------------------------------------------------------

def _missing_requirements():
    spec = importlib.util.spec_from_file_location("missing_requirements", ROOT / "scripts" / "missing_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_takes_its_requirements_from_pyproject():
    mr = _missing_requirements()
    project = mr.tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = [str(r) for r in mr.requirements(project, ["test"])]
    for wanted in ("scikit-build-core>=0.11", "cmake>=3.24", "ninja", "torch>=2.11", "numpy",
                   "pytest>=7", "hypothesis>=6", "matplotlib", "tqdm", "plyfile"):
        assert wanted in names, (wanted, names)
    assert len(names) == len(set(names)) and not any(n.startswith("gaussfield") for n in names)
    assert not mr.satisfied(mr.Requirement("pytest>=999"))
    assert mr.satisfied(mr.Requirement(f"torch=={torch.__version__}"))


def test_setup_finds_nothing_missing_where_all_is_installed():
    """What setup.sh relies on to run offline: after it has installed everything, the
    list is empty (here: the test environment, which setup.sh made in CI)."""
    done = run([sys.executable, ROOT / "scripts" / "missing_requirements.py", "--extras", "test",
                "--except", "torch"])
    assert done.returncode == 0 and done.stdout == "", done.output
