"""The one error type users see: a message that names the problem and what to do about it.

The CLI prints `error: <message>` on one line (under 160 characters) and exits with code 2; no traceback
reaches the user. A problem of several parts (several unsupported ops) lists the others on the lines after
it; what would only help a debugging reader (a tracer's raw exception) is the error's `details`, which the
CLI prints with `--debug` alone.
"""

from __future__ import annotations


class WscError(Exception):
    """Bad input or an unsupported model: the message names the problem and the fix; `details`, when given, is
    the longer story behind it (shown with --debug)."""

    def __init__(self, message: str = "", *, details: str = ""):
        super().__init__(message)
        self.details = details


class DoesNotFit(WscError):
    """The model's working set does not fit the target's SRAM. `needed` / `offered` (PEs), when known, say by
    how much: fewer tokens per pass (a smaller micro-batch) shrink the need about in proportion. A refusal of
    a layer's tiles against its share of the mesh also names the `layer` and the `share` it was offered."""

    def __init__(self, message: str, needed: int = 0, offered: int = 0, *, layer: str = "", share: float = 0.0):
        super().__init__(message)
        self.needed, self.offered = needed, offered
        self.layer, self.share = layer, share


class DoesNotPlace(DoesNotFit):
    """Every kernel's tiles fit its PEs, but the kernels' rectangles could not be packed onto the mesh: giving
    the kernels a smaller share of the mesh (Partition.fill) leaves the placer more room."""
