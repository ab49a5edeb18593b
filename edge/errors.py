"""The one exception type that reaches a user as a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a config key).

    The message must name the file or field and say what is wrong; CLIs print it on one line and exit non-zero.
    """

    exit_code = 2
