"""User-facing errors. The CLI prints their message (never a traceback) and exits non-zero.

Every message names what is wrong and where: a file, a line, a byte offset or a config field.
"""


class CptlabError(Exception):
    """Bad input or a failed step, explained for the user. Exit code 1."""

    exit_code = 1


class UsageError(CptlabError):
    """A command line that cannot be run as given. Exit code 2."""

    exit_code = 2
