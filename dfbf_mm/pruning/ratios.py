"""How many channels each group keeps: the sparsity rules of DFBF and their validation.

Kept-count rule, for a group of original width ``C`` and removal ratio ``r``:

    n_pruned = floor(r * C)                       (r is clamped to [0, 1])
    keep     = max(min_channels, C - n_pruned)
    keep     = ceil(keep / q) * q                 q = lcm(round_to, conv groups) when set
    keep     = min(keep, C)

so a ratio that would remove every channel is clamped, never an empty layer.

Ratio of a group: its override (first matching pattern) if any, else the base sparsity ``s``,
or with ``layer_dependent`` the DFBF rule: 1.3*s if C >= 500, s if 200 < C < 500, 0.4*s else.
"""
import math
import re
from typing import Iterable, List, Optional

from ..utils import check_pattern, pattern_matches  # noqa: F401  (re-exported)


def check_sparsity(value, field: str = 'sparsity') -> float:
    """``value`` as a float in [0, 1), or a one-line error naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'{field}: {value!r} is not a number')
    if not 0 <= value < 1:
        raise ValueError(f'{field}: {value} is outside [0, 1)')
    return float(value)


def layer_dependent_ratio(sparsity: float, width: int) -> float:
    """DFBF layer-dependent rule: prune wide layers harder and narrow layers lightly."""
    if width >= 500:
        return 1.3 * sparsity
    if width > 200:
        return sparsity
    return 0.4 * sparsity


def kept_channels(width: int, ratio: float, min_channels: int = 1,
                  round_to: Optional[int] = None) -> int:
    """Number of channels kept out of ``width`` (see the module docstring for the rule)."""
    ratio = min(max(ratio, 0.0), 1.0)
    n_pruned = int(math.floor(ratio * width + 1e-9))  # 1e-9: 0.3*10 must give 3, not 2
    keep = max(min_channels, width - n_pruned)
    if round_to and round_to > 1:
        keep = int(math.ceil(keep / round_to)) * round_to
    return min(keep, width)


def names_matching(pattern: str, names: Iterable[str]) -> List[str]:
    """The names that ``pattern`` matches."""
    return [n for n in names if pattern_matches(pattern, n)]
