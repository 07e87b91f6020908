"""argparse value types shared by the commands: a bad value is refused before anything starts."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def port(text: str) -> int:
    """A TCP port in [1, 65535]."""
    v = positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {v}")
    return v


def seconds(text: str) -> float:
    """Seconds in [0.01, 3600]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.01 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in [0.01, 3600], got {text!r}")
    return v
