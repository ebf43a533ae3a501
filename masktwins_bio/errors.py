"""Errors a user can cause.

Each carries one sentence that says what was wrong and what to do; the CLI prints it without a
traceback and exits with status 2 (``--debug`` shows the traceback).
"""


class MaskTwinsError(Exception):
    """Base class of every error the user can fix by changing their input."""


class InputError(MaskTwinsError):
    """A data path, file or array the user gave cannot be used."""


class ConfigError(MaskTwinsError):
    """A config file, key or value is unknown or out of range."""


class CheckpointError(MaskTwinsError):
    """A checkpoint or run directory is missing, foreign or does not fit the job."""


class WriteStopped(InputError):
    """A long job could not write its output (disk full, permissions): what it finished is
    kept, and the same command continues it once the cause is fixed."""

    def __init__(self, path, reason, again: str = "run the same command again with --resume"):
        self.path, self.reason = path, reason
        super().__init__(f"Cannot write '{path}' ({reason}); free space or fix permissions, "
                         f"then {again}.")
