"""The one exception type that carries a message meant for the user."""


class ChddlError(Exception):
    """A problem with the user's input or environment.

    The message names the problem and, where there is one, the fix. The CLI
    prints it as a single line and exits non-zero, without a traceback.
    """
