# SPDX-License-Identifier: Apache-2.0
"""Prints, one a line, the requirements of gaussfield that the running Python lacks:
the build tools (pyproject.toml's build-system.requires, and CMake and ninja as
[tool.scikit-build] asks for them), the runtime dependencies and those of the extras
named with --extras (an extra may name others: gaussfield[examples]).  Nothing is
printed where everything is installed, so scripts/setup.sh installs nothing and needs
no network then.

    python scripts/missing_requirements.py --extras test --except torch

CMake and ninja count as installed when their programs are on PATH (a system CMake
>= the version asked for, a system ninja), as scikit-build-core accepts them.  The
installed versions are compared with the requirements' specifiers; markers are
evaluated for this Python.
"""
import argparse
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pip's own copy of tomli
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip's own copy of packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def requirements(project: dict, extras) -> list:
    """The build tools, the dependencies and the extras' requirements (self-references
    expanded), as Requirement objects, in order, without repeats."""
    name = canonicalize_name(project["project"]["name"])
    scikit_build = project.get("tool", {}).get("scikit-build", {})
    texts = list(project["build-system"]["requires"])
    texts.append("cmake" + scikit_build.get("cmake", {}).get("version", ""))
    texts.append("ninja" + scikit_build.get("ninja", {}).get("version", ""))
    texts += project["project"].get("dependencies", [])
    optional = project["project"].get("optional-dependencies", {})
    seen_extras, pending = set(), list(extras)
    while pending:
        extra = pending.pop(0)
        if extra in seen_extras:
            continue
        if extra not in optional:
            raise SystemExit(f"missing_requirements: pyproject.toml has no extra {extra!r} "
                             f"(it has {', '.join(sorted(optional))})")
        seen_extras.add(extra)
        for text in optional[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == name:
                pending += sorted(requirement.extras)
            else:
                texts.append(text)
    out, seen = [], set()
    for text in texts:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        if str(requirement) not in seen:
            seen.add(str(requirement))
            out.append(requirement)
    return out


def program_version(program: str):
    """The version a program on PATH reports (`PROGRAM --version`), or None."""
    path = shutil.which(program)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+\.\d+(\.\d+)?)", done.stdout)
    return Version(found.group(1)) if done.returncode == 0 and found else None


def satisfied(requirement: Requirement) -> bool:
    if canonicalize_name(requirement.name) in ("cmake", "ninja"):
        version = program_version(requirement.name)
        if version is not None and requirement.specifier.contains(version, prereleases=True):
            return True
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extras", default="", help="comma-separated extras of pyproject.toml (e.g. test,docs)")
    ap.add_argument("--except", dest="excluded", default="",
                    help="comma-separated names to leave out (e.g. torch, which setup.sh handles itself)")
    args = ap.parse_args(argv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    excluded = {canonicalize_name(n) for n in args.excluded.split(",") if n.strip()}
    for requirement in requirements(project, extras):
        if canonicalize_name(requirement.name) not in excluded and not satisfied(requirement):
            print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
