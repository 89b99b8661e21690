"""The one exception type for mistakes a user can fix: the CLI prints it in a few lines and exits 2."""


class UserError(Exception):
    """A bad recipe, data file, path or hardware request. The message names the place and the fix."""
