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


class WriteStopped(InputError):
    """A long job could not write its output (disk full, permissions): what it finished is
    kept, and the same command continues it once the cause is fixed."""

    def __init__(self, path, reason, again: str = "run the same command again with --resume"):
        self.path, self.reason = path, reason
        super().__init__(f"Cannot write '{path}' ({reason}); free space or fix permissions, "
                         f"then {again}.")


class InputGone(InputError, OSError):
    """An input file that was there when a job opened it is missing or unreadable now (deleted,
    moved, permissions). Also an OSError, so a long job that meets it keeps what it finished
    for --resume (:func:`job_stopped`), as it does on a full disk, instead of discarding it as
    a conversion that failed on its data."""

    def __init__(self, err: OSError, path):
        super().__init__(err.errno, err.strerror, os.fsdecode(path))

    def __str__(self):
        return (f"Cannot read '{self.filename}' ({self.strerror}); put the input back or make "
                "it readable.")


class ReadStopped(InputError):
    """A long job could not read an input it had opened (a file deleted, moved or unreadable
    meanwhile): what it finished is kept, as for :class:`WriteStopped`."""

    def __init__(self, path, reason, again: str = "run the same command again with --resume"):
        self.path, self.reason = path, reason
        super().__init__(f"Cannot read '{path}' ({reason}); put the input back or make it "
                         f"readable, then {again}.")


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
