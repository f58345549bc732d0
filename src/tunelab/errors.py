"""Errors a user can fix. The CLI prints them as one line and exits with their code."""


class TunelabError(Exception):
    """A problem with the user's input: config, data, paths or options."""

    exit_code = 2


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
