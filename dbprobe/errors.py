"""Error types. Every error dbprobe raises on purpose derives from :class:`DbprobeError`.

The command line turns a ``DbprobeError`` into one line on stderr and exit code 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations


class DbprobeError(Exception):
    """Base class: something prevented a probe from running."""


class UsageError(DbprobeError):
    """Bad arguments or configuration supplied by the user."""


class BadUrlError(UsageError):
    """A database URL that cannot be parsed or is not PostgreSQL."""


class ConnectError(DbprobeError):
    """The server could not be reached, refused us, or the database does not exist."""


class PrivilegeError(DbprobeError):
    """The connected role lacks a privilege a required step needs."""


class NoProviderError(DbprobeError):
    """No throwaway-PostgreSQL provider could serve; the message lists each and why."""


class ServerStartError(DbprobeError):
    """A throwaway server failed to initialise or start; the message quotes its log."""
