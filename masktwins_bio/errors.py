"""Errors a user can cause.

Each carries one sentence that says what was wrong and what to do; the CLI prints it without a
traceback and exits with status 2 (``--debug`` shows the traceback).
"""
import os


class MaskTwinsError(Exception):
    """Base class of every error the user can fix by changing their input."""


class InputError(MaskTwinsError):
    """A data path, file or array the user gave cannot be used."""


class ConfigError(MaskTwinsError):
    """A config file, key or value is unknown or out of range."""


class CheckpointError(MaskTwinsError):
    """A checkpoint or run directory is missing, foreign or does not fit the job."""


class JobStopped(InputError):
    """A long job could not go on with its files: what it finished is kept, and ``again`` says
    how to continue once the cause is fixed."""
    verb, fix = "use", "fix the cause"

    def __init__(self, path, reason, again: str = "run the same command again with --resume"):
        self.path, self.reason, self.again = path, reason, again
        super().__init__(f"Cannot {self.verb} '{path}' ({reason}); {self.fix}, then {again}.")

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.again)


class WriteStopped(JobStopped):
    """The job could not write its output (disk full, permissions)."""
    verb, fix = "write", "free space or fix permissions"


class ReadStopped(JobStopped):
    """The job could not read an input it had opened (a file deleted, moved or made unreadable
    meanwhile)."""
    verb, fix = "read", "put the input back or make it readable"


class InputGone(InputError, OSError):
    """An input file that was there when a job opened it is missing or unreadable now (deleted,
    moved, permissions). Also an OSError, so a long job that meets it keeps what it finished
    for --resume (:func:`job_stopped`), as it does on a full disk, instead of discarding it as
    a conversion that failed on its data."""

    def __init__(self, err, path=None):
        if isinstance(err, OSError):
            super().__init__(err.errno, err.strerror,
                             os.fsdecode(path) if path is not None else err.filename)
        else:  # rebuilt from its message alone, as torch re-raises a DataLoader worker's error
            super().__init__(err)

    def __str__(self):
        if self.filename is None:
            return super().__str__()
        return (f"Cannot read '{self.filename}' ({self.strerror}); put the input back or make "
                "it readable.")

    def __reduce__(self):  # to and from worker processes, with its errno and file name
        return type(self), (OSError(self.errno, self.strerror), self.filename)


def job_stopped(err: OSError, out, written=(), again: str | None = None) -> InputError:
    """The one-sentence error of a long job (``convert``, ``segment``) that ``err`` stopped.
    A failing file outside what the job writes (``out`` and the folders in ``written``) is an
    input that went away, not a full disk, and the message says so."""
    from pathlib import Path

    kw = {} if again is None else {"again": again}
    reason = err.strerror or err
    if err.filename is not None:
        failed = Path(os.fsdecode(err.filename)).resolve()
        mine = [Path(p).resolve() for p in (out, *written)]
        if not any(failed == m or m in failed.parents for m in mine):
            return ReadStopped(failed, reason, **kw)
    return WriteStopped(out, reason, **kw)
