"""The exception types the CLI prints as one line with exit code 2 (no traceback)."""


class InputError(Exception):
    """Bad input from the user: a message that names the file and says what to do."""


class OutputError(InputError):
    """An output that could not be written completely (full disk, read-only or special folder):
    the message names the file and what to do; nothing half-written is left in its place."""
