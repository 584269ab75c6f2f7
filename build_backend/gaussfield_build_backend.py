# SPDX-License-Identifier: Apache-2.0
"""gaussfield's PEP 517 build backend: scikit-build-core's, with checks that stop a
build that cannot work at once and say why, instead of after minutes of CMake.

gaussfield's library is compiled against the torch it will run with (torch's C++ ABI is
that exact release's), so that torch must be installed first and visible to the build.
pip's default build isolation builds in a fresh environment that holds only the build
tools, where the installed torch cannot be seen; hence

    pip install scikit-build-core ninja cmake     # the build tools, once
    pip install --no-build-isolation .

Every hook that leads to a wheel (``get_requires_for_build_*``, which pip calls first
under isolation; ``prepare_metadata_for_build_*``, which it calls first without; and
``build_wheel`` / ``build_editable``) checks, in this order, that scikit-build-core can be
imported, that torch can, and, without isolation (where nobody installs them for us),
that the build tools scikit-build-core asks for are installed.  The sdist hooks need
no torch and only delegate.  Each check prints its message and exits with status 1:
pip and ``python -m build`` then show the message without a traceback.
"""
import os
import subprocess
import sys
import textwrap

try:
    from scikit_build_core import build as _scikit_build
except ImportError as _error:  # without build isolation nobody installed it
    _scikit_build = None
    _scikit_build_error = _error

COMMAND = "pip install --no-build-isolation ."
TOOLS = "pip install scikit-build-core ninja cmake"
SCIKIT_BUILD_MINIMUM = "0.11"  # pyproject.toml's build-system.requires and minimum-version


def _fail(message: str) -> None:
    """Prints the message (paragraphs refilled, indented command lines kept) and exits."""
    paragraphs = []
    for paragraph in textwrap.dedent(message).strip().split("\n\n"):
        lines = paragraph.splitlines()
        if all(line.startswith("    ") for line in lines):
            paragraphs.append("\n".join("  " + line for line in lines))
        else:
            paragraphs.append(textwrap.fill(" ".join(line.strip() for line in lines), 86,
                                            initial_indent="  ", subsequent_indent="  ",
                                            break_on_hyphens=False, break_long_words=False))
    text = "\n\n".join(paragraphs)
    sys.stderr.write(f"\ngaussfield: the build cannot start.\n\n{text}\n\n")
    sys.stderr.flush()
    raise SystemExit(1)


def _require_scikit_build() -> None:
    if _scikit_build is None:
        _fail(f"""
            gaussfield is built by scikit-build-core, which {sys.executable} cannot import
            ({_scikit_build_error}). With --no-build-isolation pip installs no build tools;
            install them first, into this Python:

                {sys.executable} -m {TOOLS}

            then run `{COMMAND}` again.""")
    from packaging.version import Version

    import scikit_build_core

    if Version(scikit_build_core.__version__) < Version(SCIKIT_BUILD_MINIMUM):
        _fail(f"""
            gaussfield's build needs scikit-build-core >= {SCIKIT_BUILD_MINIMUM}; {sys.executable}
            has {scikit_build_core.__version__}. With --no-build-isolation pip installs no
            build tools; upgrade it first:

                {sys.executable} -m pip install -U "scikit-build-core>={SCIKIT_BUILD_MINIMUM}"

            then run `{COMMAND}` again.""")


def _torch_outside() -> str:
    """Where this Python finds torch without pip's isolation (its PYTHONPATH and
    PYTHONNOUSERSITE), as 'VERSION in DIR'; '' where it finds none."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = ("import importlib.util, importlib.metadata as m, os; s = importlib.util.find_spec('torch'); "
             "print(m.version('torch') + ' in ' + os.path.dirname(os.path.dirname(s.origin)) if s else '')")
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _require_torch() -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        return
    outside = _torch_outside()
    if outside:
        _fail(f"""
            torch {outside} is installed, but this build cannot see it: pip builds in an
            isolated environment by default, which holds only the build tools. gaussfield is
            compiled against the torch it will run with, so it must be built where that
            torch is visible. Install the build tools once and build without isolation:

                {TOOLS}
                {COMMAND}

            (-e . for an editable install; python -m build: --no-isolation; uv: uv pip
            install --no-build-isolation .)""")
    _fail(f"""
        torch cannot be imported by {sys.executable}. gaussfield is compiled against the
        torch it will run with, so install torch first (the CUDA build from pytorch.org for
        GPUs), then build without isolation, so that the build sees that torch:

            pip install torch
            {TOOLS}
            {COMMAND}""")


def _require_build_tools(config_settings) -> None:
    """Without isolation: the tools scikit-build-core asks for (CMake, ninja; it asks
    only for those it cannot find on PATH) must be installed already."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for text in _scikit_build.get_requires_for_build_wheel(config_settings):
        requirement = Requirement(text)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(text)
    if missing:
        wanted = " ".join(f'"{t}"' for t in missing)
        _fail(f"""
            gaussfield's build needs {', '.join(missing)}, which this environment lacks
            (none on PATH either). With --no-build-isolation pip installs no build tools;
            install them first:

                pip install {wanted}

            then run `{COMMAND}` again.""")


def _check(config_settings=None, *, tools: bool) -> None:
    _require_scikit_build()
    _require_torch()
    if tools:
        _require_build_tools(config_settings)


# ---- the PEP 517 / 660 hooks -----------------------------------------------------------

def get_requires_for_build_wheel(config_settings=None):
    _check(config_settings, tools=False)
    return _scikit_build.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_editable(config_settings=None):
    _check(config_settings, tools=False)
    return _scikit_build.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _check(config_settings, tools=True)
    return _scikit_build.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _check(config_settings, tools=True)
    return _scikit_build.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _check(config_settings, tools=True)
    return _scikit_build.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _check(config_settings, tools=True)
    return _scikit_build.build_editable(wheel_directory, config_settings, metadata_directory)


def get_requires_for_build_sdist(config_settings=None):
    _require_scikit_build()
    return _scikit_build.get_requires_for_build_sdist(config_settings)


def build_sdist(sdist_directory, config_settings=None):
    _require_scikit_build()
    return _scikit_build.build_sdist(sdist_directory, config_settings)
