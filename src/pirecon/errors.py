"""One error type per kind of user mistake.

Every message names the file, key or flag at fault and what was expected, so the command line
can print it as it is (no traceback) and exit non-zero.
"""


class PireconError(Exception):
    """Base class: an error caused by the user's input, reported without a traceback."""


class ConfigError(PireconError, ValueError):
    """A flag, config field or config file has a wrong name or value."""


class CheckpointError(PireconError):
    """A checkpoint folder is missing files, or its weights do not match the model."""


class InputError(PireconError, ValueError):
    """A batch or observation handed to the model has the wrong shape, dtype or keys."""


class DatasetError(PireconError):
    """A dataset folder is missing files or holds data that cannot be read."""


class TrainingError(PireconError):
    """Training cannot go on (e.g. a NaN loss); the message names the step and the samples."""


class HubError(PireconError):
    """The Hugging Face Hub cannot serve or take a repo (offline, not cached, no network, no access)."""
