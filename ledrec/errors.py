"""The root of every ledrec exception, and the errors of reaching the servers.

Every exception ledrec raises on purpose derives from :class:`LedrecError`, so a caller can
catch ledrec's failures with one clause. Each also keeps the built-in base it had
(``ValueError`` for bad input, ``RuntimeError`` otherwise), so older ``except`` clauses hold.
This module imports nothing but the standard library: the event schema depends on it.
"""

from __future__ import annotations


class LedrecError(Exception):
    """Base class of every ledrec error."""


class ConnectError(LedrecError, RuntimeError):
    """A server could not be reached or set up (addresses, topics)."""


class StackNotRunning(ConnectError):
    """No server addresses are configured and no live local stack is recorded."""
