"""User errors: what a user can cause (bad YAML, a missing checkpoint, no [MASK]).

The CLI turns a `BertmathError` into one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback.
"""


class BertmathError(Exception):
    """A problem the user can fix; the message says what and where. CLI exit status 1."""

    exit_code = 1


class ConfigError(BertmathError):
    """A bad config file, key, type or value. CLI exit status 2."""

    exit_code = 2


class DataError(BertmathError):
    """A corpus or tokenizer that cannot be used."""


class TaskDataError(DataError):
    """A fine-tuning task file that cannot be used (missing column, bad label or tag, an answer not in its
    passage, an empty split): exit status 2, as bad config."""

    exit_code = 2


class InputError(BertmathError):
    """A text or word a command cannot use: empty, longer than the model's positions, not in the vocabulary."""


class CheckpointError(BertmathError):
    """A checkpoint that is missing, unreadable, corrupted, or does not match its config."""


class OutputError(BertmathError):
    """A place a command would write that it must not or cannot: an existing file or another program's
    directory it would overwrite, a path under a file, a directory it has no permission to write."""


class RunDirInUseError(OutputError):
    """train.out_dir is locked by another pretraining run that is still writing there."""


class TrainingError(BertmathError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""
