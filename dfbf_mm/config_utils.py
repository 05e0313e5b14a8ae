"""Small helpers for reading config blocks: plain copies and unknown-key errors."""
import copy
from typing import Optional

from mmengine.config import ConfigDict


def plain(value):
    """A deep, plain-Python copy of a config value (ConfigDict → dict)."""
    return value.to_dict() if isinstance(value, ConfigDict) else copy.deepcopy(value)


def check_keys(block: Optional[dict], allowed, field: str) -> dict:
    """``block`` as a dict; an unknown key raises one line naming ``field`` and what is allowed."""
    block = dict(block or {})
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise ValueError(f'{field}: unknown key {unknown[0]!r}; allowed: {", ".join(allowed)}')
    return block
