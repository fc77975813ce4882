"""fmprune: feature-map filter pruning, reproducible and comparable."""

__version__ = "0.1.0"


class FmpruneError(Exception):
    """A user-facing problem (bad config, missing file, malformed rate list).

    The CLI prints it as one line and exits with status 2; it never carries a traceback.
    """
