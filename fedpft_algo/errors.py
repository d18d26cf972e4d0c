"""User-facing errors.

Every mistake a user can make (a config key, a file, a value) raises a subclass of
:class:`FedPFTError` whose message is one line naming the thing and what is allowed.
The command line prints that line and exits with code 2; nothing else is caught.
"""


class FedPFTError(ValueError):
    """A problem with user input: config, data, model or results directory."""


class ConfigError(FedPFTError):
    """A config key has a wrong name, type or value."""


class DataError(FedPFTError):
    """A data set is missing, empty, or does not have the expected columns or labels."""


class ModelError(FedPFTError):
    """A model directory is missing, corrupt, or of an architecture the registry does not know."""
