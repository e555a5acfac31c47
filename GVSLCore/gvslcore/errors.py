"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class InputError(Exception):
    """Bad input from the user: a message that names the file and says what to do."""
