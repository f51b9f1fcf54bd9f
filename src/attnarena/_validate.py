"""Small argument checks shared across the package, with messages that say what was given."""
from __future__ import annotations


def check_int(value, name: str, minimum: int = 1) -> int:
    """Raise ValueError unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return value
