"""User-facing errors: each one is reported as a single line and a non-zero exit."""


class MtlError(Exception):
    """Base of every error caused by the user's input (config, data files, columns).

    The CLI prints ``mtl-train: error: <message>`` on one line and exits with status 2.
    Messages name the config key, file or column at fault.
    """


class ConfigError(MtlError):
    """A config key is unknown, has the wrong type, or holds a value out of range."""


class DataError(MtlError):
    """A data file is missing, unreadable or malformed (missing column, bad label value)."""
