"""The exceptions fastsparse raises on purpose, defined once.

Both are :class:`ValueError` subclasses, so code that catches ValueError
keeps working; catch them by name to tell a refused step or a bad file
apart from an invalid argument.
"""

__all__ = ["CheckpointError", "StepRefusedError"]


class CheckpointError(ValueError):
    """A file that is not a valid fastsparse checkpoint of the requested
    class: missing, truncated, corrupted, foreign or inconsistent.  Nothing
    is built from it."""


class StepRefusedError(ValueError):
    """A training step refused by the layer before it changed anything of
    the refused example.

    Attributes
    ----------
    example : int or None
        Index, in the call, of the refused example (None when the whole
        minibatch was refused).
    r : float or None
        The factor by which the refused update would have scaled U along
        its direction, when it matters for the refusal.
    applied : int
        How many examples of the call were applied before it (online mode
        applies examples one after the other; a refused minibatch applies
        nothing).
    """

    def __init__(self, message, *, example=None, r=None, applied=0):
        super().__init__(message)
        self.example = example
        self.r = r
        self.applied = applied
