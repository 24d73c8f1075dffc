"""The base of every error whose message is meant for the user as it stands."""


class PipelineError(Exception):
    """Raised for bad input, bad params or an unusable environment; stages print the
    message as one line, without a traceback."""
