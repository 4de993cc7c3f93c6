"""Errors that the CLI turns into a one-line message and exit code 2."""


class GanauditError(Exception):
    """Bad usage or bad input: the message says what is wrong and what to do next.

    The CLI prints ``error: <message>`` and exits with code 2. Library code raises this
    (never ``sys.exit``) so that the Python API can catch it.
    """


