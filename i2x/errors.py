"""The one exception type for user errors: the CLI prints its message without a traceback."""


class UserError(Exception):
    """A problem with the user's input (a file, an option, a spec) that they can fix.

    The message names the file or option at fault and says what to do.
    """
