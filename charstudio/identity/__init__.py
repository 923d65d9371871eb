"""Identity: is it still the same character? Scorers (CCIP, CLIP-I, mini's own) behind one
interface (`base.Scorer`), and the report a set of pictures gets (`base.IdentityReport`)."""

from .base import IdentityReport, Scorer

__all__ = ["IdentityReport", "Scorer"]
