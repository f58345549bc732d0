"""Errors a user can fix. The CLI prints them as one line and exits with their code."""

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "X"?)' for the closest of `choices` to a misspelt `word`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class TunelabError(Exception):
    """A problem with the user's input: config, data, paths or options."""

    exit_code = 2
    label = "error"


class ConfigError(TunelabError):
    """A config key or value is wrong."""


class DataError(TunelabError):
    """A data file cannot be read or a row is malformed."""


class ModelError(TunelabError):
    """A model name or path cannot be resolved or loaded."""


class LeakageError(TunelabError):
    """Train and held-out data overlap beyond the allowed threshold."""


class RunAborted(TunelabError):
    """Training stopped on purpose (a guard fired); the message says why and what to try."""

    exit_code = 3


class RunInterrupted(TunelabError):
    """A signal stopped training; the message says where it stopped and how to resume."""

    label = "stopped"

    def __init__(self, message: str, exit_code: int, run_dir: object = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.run_dir = run_dir
        self.resume_command: str | None = None

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\nresume with: {self.resume_command}" if self.resume_command else text
