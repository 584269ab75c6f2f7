# SPDX-License-Identifier: Apache-2.0
"""Calls that reach a dispatch key gaussfield has no kernel for (sparse tensors, MPS,
XPU, CUDA in a build without CUDA kernels) raise gaussfield's own error, naming the op,
the argument and its layout or device, and what to do (torch_ext/missing_kernels.cpp),
not the dispatcher's generic "Could not run ... If you are a Facebook employee".

A device this machine lacks is reached with OpOverload.redispatch, which runs the kernel
of the key given whatever the tensors' devices: the kernel the dispatcher would pick for
such tensors."""
import warnings

import pytest
import torch

import gaussfield
from conftest import make_inputs

OPS = sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
             if name.startswith("gaussfield::"))
MISSING_KEYS = ["SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA", "MPS", "XPU"]
# CPU-only in every build: its Python wrapper (gaussfield.culling_stats) moves its
# inputs to the CPU first
CPU_ONLY = {"_culling_stats"}


def inputs():
    return make_inputs(7, 5, "full", torch.float64, "cpu", seed=3)


def test_every_op_has_a_kernel_for_each_key_it_does_not_implement():
    """A new op left out of missing_kernels.cpp's list fails here."""
    assert {"gaussian_field", "gaussian_field_backward", "gaussian_field_double_backward"} <= set(OPS)
    for op in OPS:
        for key in MISSING_KEYS + (["CUDA"] if op not in CPU_ONLY else []):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"gaussfield::{op}", key), (op, key)


# every argument as COO; the 2-D ones as CSR too (weights [N] has no CSR form)
@pytest.mark.parametrize("argument,layout", [(i, "coo") for i in range(4)] + [(i, "csr") for i in range(3)])
def test_sparse_input_names_the_argument_and_the_fix(argument, layout):
    args = inputs()
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        args[argument] = args[argument].to_sparse() if layout == "coo" else args[argument].to_sparse_csr()
    name = ["x", "means", "cov", "weights"][argument]
    with pytest.raises(NotImplementedError) as info:
        gaussfield.gaussian_field(*args)
    message = str(info.value)
    assert "gaussfield::gaussian_field has no kernel for sparse tensors" in message
    assert f"{name} (torch.sparse_{layout})" in message
    assert "t.to_dense()" in message
    assert "Facebook" not in message


def test_sparse_gradient_reaches_the_backward_op_with_the_same_error():
    x, means, cov, weights = inputs()
    with pytest.raises(NotImplementedError, match=r"gaussian_field_backward has no kernel for sparse "
                                                  r"tensors, and was called with grad_out \(torch.sparse_coo\)"):
        torch.ops.gaussfield.gaussian_field_backward(torch.ones(7, dtype=torch.float64).to_sparse(), x,
                                                     means, cov, weights, 1e-6, None, [True] * 4)


@pytest.mark.parametrize("key,device", [("MPS", "mps"), ("XPU", "xpu")])
def test_other_devices_say_where_gaussfield_runs(key, device):
    with pytest.raises(NotImplementedError) as info:
        torch.ops.gaussfield.gaussian_field.default.redispatch(torch._C.DispatchKeySet(key), *inputs(),
                                                               1e-6, None)
    message = str(info.value)
    assert f"gaussfield::gaussian_field has no kernel for the {device} device" in message
    assert "move the tensors there (t.cpu()" in message


@pytest.mark.skipif(gaussfield.build_info()["cuda_kernels"], reason="this build has CUDA kernels")
def test_cuda_call_on_a_build_without_cuda_kernels_says_how_to_rebuild():
    for op, args in [("gaussian_field", (*inputs(), 1e-6, None)),
                     ("gaussian_field_backward", (torch.ones(7, dtype=torch.float64), *inputs(), 1e-6,
                                                  None, [True] * 4))]:
        overload = getattr(torch.ops.gaussfield, op).default
        with pytest.raises(NotImplementedError) as info:
            overload.redispatch(torch._C.DispatchKeySet("CUDA"), *args)
        message = str(info.value)
        assert f"gaussfield::{op} was called with CUDA tensors" in message
        assert "this build of gaussfield has no CUDA kernels" in message
        assert 'CMAKE_ARGS="-DGF_WITH_CUDA=ON" pip install --no-build-isolation .' in message
    assert gaussfield.build_info()["cuda_note"]  # where the message sends the reader


def test_dense_calls_and_fakes_are_untouched():
    """The extra registrations leave the CPU kernel and the fakes (Meta) alone."""
    args = inputs()
    ref = gaussfield.gaussian_field_reference(*args)
    torch.testing.assert_close(gaussfield.gaussian_field(*args), ref)
    meta = gaussfield.gaussian_field(*[t.to("meta") for t in args])
    assert meta.device.type == "meta" and meta.shape == ref.shape
