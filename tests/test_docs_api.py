# SPDX-License-Identifier: Apache-2.0
"""Every public name of gaussfield is in the API reference (docs/api.md): a name added to
a public module without its entry there fails here."""
import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import gaussfield

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"
# The public modules; the others (ops, module, autograd, _common, ...) are the homes of
# names that these export.
PUBLIC_MODULES = ["gaussfield", "gaussfield.notebook", "gaussfield.frontends",
                  "gaussfield.reference", "gaussfield.io", "gaussfield.distributed"]
# Where one object has several public names, the name it is documented under.
DOCUMENTED_AS = {"gaussfield.notebook.fused_forward": "gaussfield.fused_forward",
                 "gaussfield.notebook.GaussianField": "gaussfield.GaussianField",
                 "gaussfield.reference.gaussian_field_reference": "gaussfield.gaussian_field_reference",
                 "gaussfield.reference.inverse_covariance": "gaussfield.inverse_covariance"}


def public_names(module_name):
    """The module's __all__, or else the public names its own source defines at the top
    level (functions, classes, assignments), not those it imports."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    names = []
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_")]


def documented():
    text = API.read_text(encoding="utf-8")
    return set(re.findall(r"^\.\. (?:auto)?(?:function|class|data|py:data|py:function|py:class)"
                          r"::\s*([\w.]+)", text, flags=re.M))


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_documented(module_name):
    entries = documented()
    missing = []
    for name in public_names(module_name):
        full = f"{module_name}.{name}"
        if DOCUMENTED_AS.get(full, full) not in entries:
            missing.append(full)
    assert not missing, f"public names without an entry in docs/api.md: {missing}"


def test_every_registered_op_is_documented():
    import torch
    ops = sorted({name.split("::", 1)[1].split(".")[0]
                  for name in torch._C._dispatch_get_all_op_names() if name.startswith("gaussfield::")})
    assert "gaussian_field" in ops, ops
    text = API.read_text(encoding="utf-8")
    missing = [op for op in ops if not op.startswith("_") and f"torch.ops.gaussfield.{op}(" not in text]
    assert not missing, f"registered ops without an entry in docs/api.md: {missing}"
