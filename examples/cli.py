# SPDX-License-Identifier: Apache-2.0
"""What the example scripts share on their command lines."""
from typing import Optional

from gaussfield._common import check_cutoff


def cutoff_arg(text: str) -> Optional[float]:
    """The value of a ``--cutoff K|none`` option: None for ``none`` (the exact field),
    else a Mahalanobis radius; a ``ValueError`` naming ``cutoff`` for anything else."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"cutoff must be 'none' or a finite number > 0, got {text!r}") from None
    return check_cutoff(value)
