"""The CLI's user-facing error (defined in :mod:`common.errors`; re-exported for the CLI's modules)."""

from __future__ import annotations

from common.errors import UserError

__all__ = ["UserError"]
