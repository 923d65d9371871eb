"""Identity: is it still the same character? Scorers (CCIP, CLIP-I, mini's own) behind one
interface (`base.Scorer`), and the report a set of pictures gets (`base.IdentityReport`).

`get_scorer` picks one: CCIP when its files are cached (or given by folder), else CLIP-I when
cached, else mini's own scorer (shipped in the package). Each scorer's module imports its runtime
(onnxruntime, torch, transformers) only when used.
"""

from .base import IdentityReport, Scorer
from .select import get_scorer

__all__ = ["IdentityReport", "Scorer", "get_scorer"]
