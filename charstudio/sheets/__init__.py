"""Keeping one character the same across images: character sheets and the mechanisms behind them.

A sheet is one character card drawn in N poses with the OpenPose ControlNet. Four mechanisms,
each switchable, pull the images toward one design:

(a) same initial noise: every pose starts from the same seed's latents (``same_noise``);
(b) the card's LoRA, when the card names one (``use_lora``);
(c) reference attention (``reference_strength``): while the anchor image (the first pose, or a
    user-given ``reference_image``) is generated, the input of every UNet self-attention layer
    is recorded at every step; the other images' self-attention then also attends to those
    anchor tokens (keys and values computed from them with the layer's own projections). The
    output is ``lerp(own attention, attention over own + anchor tokens, strength)``. It is
    implemented as diffusers attention processors, so it works with any SD 1.x UNet, and is
    training-free. At strength 0 the processors are not installed at all;
(d) IP-Adapter with a reference image, when its weights are available (``ip_adapter``).

Identity (`identity`): every picture is scored against the first by an identity scorer
(`charstudio.identity.get_scorer`: CCIP, CLIP-I or mini's own) and checked against the card's
palette (and, in a turnaround, against the front view); ``min_identity`` re-rolls the views that
drift, with the next seed, up to ``max_tries``. `score` is the older measure: the mean pairwise
cosine similarity of CLIP image embeddings.

Under ``accelerate launch`` the poses of a sheet (and the sheets of a batch) are split across
processes; each process recomputes the anchor it needs, so results equal a single-process run.
The split itself (`distributed`: share, gather, shared_seed, draw_split) is shared with packs and
storyboards.

Memory note for (c): the recorded anchor states are kept for every step. For SD 1.5 at 512x512
with CFG that is about 46 MB per step in fp16 (1.2 GB for 25 steps); pass
``reference_offload=True`` to keep them in CPU memory instead.

Where things live: ``sheet`` (make_sheet, SheetResult), ``reference`` (reference attention),
``ip_adapter``, ``identity`` (scores, checks, re-rolls) and ``similarity`` (the CLIP score).
"""

from .identity import IdentityRun, SheetIdentity, resolve_scorer
from .ip_adapter import ip_adapter
from .reference import (
    ReferenceAttnProcessor,
    ReferenceBank,
    check_strength,
    record_reference_image,
    reference_attention,
)
from .distributed import distributed_state
from .sheet import SheetResult, make_sheet
from .similarity import DEFAULT_EMBEDDER, embed_images, load_embedder, score

__all__ = [
    "DEFAULT_EMBEDDER",
    "IdentityRun",
    "ReferenceAttnProcessor",
    "ReferenceBank",
    "SheetIdentity",
    "SheetResult",
    "check_strength",
    "distributed_state",
    "embed_images",
    "ip_adapter",
    "load_embedder",
    "make_sheet",
    "record_reference_image",
    "reference_attention",
    "resolve_scorer",
    "score",
]
