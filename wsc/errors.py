"""The one error type users see: a message that names the problem and what to do about it.

The CLI prints `error: <message>` on one line and exits with code 2; no traceback reaches the user.
"""


class WscError(Exception):
    """Bad input or an unsupported model: the message names the problem and the fix."""
