"""User-facing errors.

Anything a user can fix (bad config, missing data, unsupported method/backbone pair, unsafe checkpoint)
raises `UserError`. The CLI prints its message as one line on stderr and exits with code 2; it never
shows a traceback for these.
"""


class UserError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""

    exit_code = 2

    def __init__(self, message: str):
        # One line only: the CLI contract is a single clear line on stderr.
        super().__init__(" ".join(str(message).split()))
