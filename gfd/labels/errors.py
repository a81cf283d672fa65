class LabelError(Exception):
    """A condition upstream treats as a failed labelling pass (message kept upstream-compatible)."""
