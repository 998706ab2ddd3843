"""The one error type users see: a message that names the problem and what to do about it.

The CLI prints `error: <message>` on one line and exits with code 2; no traceback reaches the user.
"""


class WscError(Exception):
    """Bad input or an unsupported model: the message names the problem and the fix."""


class DoesNotFit(WscError):
    """The model's working set does not fit the target's SRAM. `needed` / `offered` (PEs), when known, say by
    how much: fewer tokens per pass (a smaller micro-batch) shrink the need about in proportion."""

    def __init__(self, message: str, needed: int = 0, offered: int = 0):
        super().__init__(message)
        self.needed, self.offered = needed, offered


class DoesNotPlace(DoesNotFit):
    """Every kernel's tiles fit its PEs, but the kernels' rectangles could not be packed onto the mesh: giving
    the kernels a smaller share of the mesh (Partition.fill) leaves the placer more room."""
