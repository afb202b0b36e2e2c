"""The CLI's own usage error (bad arguments); printed as one line with exit code 2."""

from kvscope.errors import KVScopeError


class UsageError(KVScopeError):
    """Bad command-line arguments: unknown model or GPU, negative sizes, unreadable files."""
