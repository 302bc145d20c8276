"""User-facing errors: each carries one line naming the problem and the fix, and an exit code."""


class R18Error(Exception):
    """A problem the user can fix; the CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = 1


class ConfigError(R18Error):
    """Invalid configuration (unknown key, wrong type, impossible value)."""

    exit_code = 2


class DataError(R18Error):
    """Missing, corrupt or unsupported data."""


class CheckpointError(R18Error):
    """A checkpoint that does not exist, is corrupt or belongs to another architecture."""


class TrainingDiverged(R18Error):
    """Loss became NaN or infinite."""

    exit_code = 3


class Interrupted(R18Error):
    """Stopped by the user (Ctrl-C) or a signal; the message names the command that continues."""

    exit_code = 130
