"""The one exception type users see.

Anything a user can cause (a bad path, a broken dataset, a wrong flag) raises TailorError
with a message that names the thing and the fix. The CLI prints the message and exits with
`exit_code`; it never shows a traceback for these.
"""


class TailorError(Exception):
    """A problem the user can fix. `str(err)` is the whole message shown to them."""

    exit_code = 1


class UsageError(TailorError):
    """The command line itself is wrong (exit status 2, like argparse)."""

    exit_code = 2
