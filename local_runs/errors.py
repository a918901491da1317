"""The launcher's own error kinds; the command line prints each as one line."""
from __future__ import annotations

from local_runs.config import ConfigError

__all__ = ["ConfigError", "UsageError"]


class UsageError(Exception):
    """The command was asked something it cannot do; the message says what to do instead."""
