"""The one exception type that means "the user asked for something invalid", and checks that raise it."""
import os


class UserError(ValueError):
    """A mistake in the user's input. The CLI prints its message on one line and exits with code 2."""


def make_output_dir(path: str, option: str = "--out") -> None:
    """Create the folder a command will write its results into, before the command starts its work: a path that
    cannot be a folder fails in one line now, not after minutes of training or measuring."""
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise UserError(f"{option} {path} cannot be written: {e.strerror or e}") from None
