"""The one exception type that means "the user asked for something invalid"."""


class UserError(ValueError):
    """A mistake in the user's input. The CLI prints its message on one line and exits with code 2."""
