# SPDX-License-Identifier: Apache-2.0
"""Names of the machine a run measured, for the result files of the benchmarks and the
training example (which import it from here, the one place both reach without a path
of their own); not part of gaussfield's API."""
import platform

import torch


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} CPU, {torch.get_num_threads()} threads"


def slug(device: torch.device) -> str:
    """``device_name`` as a file-name part: NVIDIA H100 80GB HBM3 -> nvidia-h100-80gb-hbm3."""
    return "".join(c if c.isalnum() else "-" for c in device_name(device).lower()).strip("-")
