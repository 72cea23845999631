"""The one error every server kind raises (and the engine and serving checks report)."""


class ServerError(RuntimeError):
    """A server cannot serve what the run needs; the message names the fix."""
