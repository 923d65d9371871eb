"""The recipe: everything that determines a picture, as plain data (no torch, no diffusers, no studio).

- `config`: `GenerationConfig` (the recipe), `RECIPE_VERSION`, `MAX_SEED`, `check_size`;
- `metadata`: its PNG form (A1111 ``parameters`` text plus the full recipe as JSON), read back;
- one schema per workflow field (check, normalise, constants, sizes): `regions`, `hires`,
  `detail`, `inpaint`, registered in `workflow_fields`; `masks` (the masks those fields record)
  and `steps` (the one img2img steps guard) beside them.

The engine (`charstudio.studio`) and the runners (`charstudio.workflows`) import from here; this
package imports neither, so a recipe can be read, checked and written anywhere.
"""

from __future__ import annotations

from .config import MAX_SEED, RECIPE_VERSION, GenerationConfig, check_size
from .workflow_fields import WORKFLOW_FIELDS

__all__ = ["MAX_SEED", "RECIPE_VERSION", "WORKFLOW_FIELDS", "GenerationConfig", "check_size"]
