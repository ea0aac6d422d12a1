"""Error types. Library code raises these; only the CLI prints them (as `error: ...`, exit 2)."""


class FlopwiseError(Exception):
    """Base of every error a user can cause and fix (bad config, missing file, impossible layout)."""


class ConfigError(FlopwiseError):
    """A configuration key, value or type is wrong."""


class CheckpointError(FlopwiseError):
    """A checkpoint is missing, truncated or does not fit the model."""


class DataError(FlopwiseError):
    """Input data is missing, empty or malformed."""


class ParallelError(FlopwiseError):
    """A distributed job failed (a rank died, versions differ, no process group)."""


class LayoutError(ConfigError):
    """A parallel layout does not fit the model, the batch or the world size (flopwise.layout.check). `keys`: the
    settings in conflict, named as the check names them (a layout field such as 'tp', a model field such as 'heads',
    'global_batch', 'seq_len', 'world'), which a front end turns into its own keys or flags."""

    def __init__(self, message: str, keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.keys = keys


class PlanError(FlopwiseError):
    """The planner cannot satisfy a request."""
