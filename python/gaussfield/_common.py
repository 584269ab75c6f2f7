"""What several modules of gaussfield share: the default eps and the argument checks the
Python layer makes itself.  A leaf module (it imports nothing of gaussfield), so that
every other module can import it without an import circle."""
import math

#: eps added to the diagonal of a full covariance (``Sigma = L L^T + eps * I``) when the
#: caller gives none: the 1e-6 that the notebook's ``get_covariance`` adds.  The op
#: schema's default is ``GF_DEFAULT_EPS`` (csrc/gaussfield.h), the same number.
DEFAULT_EPS = 1e-6


def check_cutoff(cutoff) -> float:
    """``cutoff`` as a float, or a ValueError naming it."""
    if isinstance(cutoff, (bool, str, bytes)):
        raise ValueError(f"cutoff must be None or a finite number > 0, got {cutoff!r}")
    try:
        k = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be None or a finite number > 0, got {cutoff!r}") from None
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"cutoff must be None or a finite number > 0 (a Mahalanobis radius), got {cutoff!r}")
    return k
