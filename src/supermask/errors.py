"""Errors that the CLI reports as one line (exit code 2) instead of a traceback."""


class SupermaskError(Exception):
    """Base class for errors caused by user input or the environment, reported without a traceback."""


class ConfigError(SupermaskError, ValueError):
    """A bad configuration value, path or file."""
