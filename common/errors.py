"""Errors meant for the person at the terminal: the CLI prints them without a traceback.

Here, not in ``cluster``, because every layer that talks to a user (the CLI, the benchmarks) raises them.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a missing file, a wrong flag); the message says what to do."""
