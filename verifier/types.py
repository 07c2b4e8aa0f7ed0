"""The verdict types now live in the shared layer (:mod:`winnow.verdict`); re-exported for the verifier's modules."""

from winnow.verdict import Item, Status, Verdict

__all__ = ["Item", "Status", "Verdict"]
