"""Error types that nettrain raises for bad input.

Every error a user can cause derives from :class:`NettrainError`; the CLI prints
its message as one line and exits with code 2, never a traceback.
"""


class NettrainError(Exception):
    """Base class of all user-facing errors."""

    exit_code = 2


class ConfigError(NettrainError):
    """A config file is malformed or fails validation.

    ``problems`` holds one line per problem so that all of a file's errors can
    be reported at once.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or [message]
        super().__init__(message)


def validate_spec(adapter, value, where: str):
    """Validate ``value`` with a pydantic TypeAdapter over a tagged union; ConfigError names ``where``."""
    from pydantic import ValidationError

    try:
        return adapter.validate_python(value)
    except ValidationError as e:
        # loc[0] is the union member's tag; the rest is the field path inside it
        problems = [f"{'.'.join(map(str, [where, *err['loc'][1:]]))}: {err['msg']}" for err in e.errors()]
        raise ConfigError(problems[0], problems) from None


class ShapeError(NettrainError):
    """A layer cannot be built on its input shape."""


class DataError(NettrainError):
    """A data file is missing, truncated or malformed."""


class CheckpointError(NettrainError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class TrainingError(NettrainError):
    """Training cannot go on (non-finite loss, unwritable output, ...)."""
