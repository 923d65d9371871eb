"""Splitting many pictures over the processes of ``accelerate launch``: the one helper sheets,
packs (`charstudio.cast.pack`) and storyboards share.

Under ``accelerate launch --num_processes N`` every process runs the same script. Each one
builds the whole list of recipes (same seeds everywhere: a seed drawn at random is rank 0's,
`shared_seed`), draws only its share (`share`: items ``process_index, process_index + N, ...``),
and `gather` hands every process all the pictures, so each holds the same result as a
single-process run and the main process alone writes the files. Without accelerate (or with one
process) ``state`` is None and every function is the identity: the single-process code path is
the same code.

    from charstudio.sheets.distributed import distributed_state, draw_split

    state = distributed_state()
    pictures = draw_split(len(recipes), lambda mine: {i: studio.run(recipes[i]).images[0] for i in mine}, state)

What crosses between processes is pickled by torch.distributed, between the processes of this
one launch only (never a file from elsewhere).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


def distributed_state() -> Any:
    """accelerate's PartialState when launched with several processes (``accelerate launch
    --num_processes N``), else None. On machines without CUDA, or with ``ACCELERATE_USE_CPU``,
    the processes talk over gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return state if state.num_processes > 1 else None


def processes(state: Any) -> int:
    """How many processes share the work (1 without accelerate)."""
    return 1 if state is None else int(state.num_processes)


def is_main(state: Any) -> bool:
    """True in the process that writes the files (rank 0, or the only process)."""
    return state is None or bool(state.is_main_process)


def share(items: Sequence[T], state: Any) -> list[T]:
    """This process's share of ``items``: every N-th one from its rank (all of them without accelerate).
    Round-robin rather than blocks, so a list shorter than N still gives the first processes work."""
    items = list(items)
    return items if state is None else items[state.process_index::state.num_processes]


def gather(items: list, state: Any) -> list:
    """Every process's ``items`` joined, in every process (``items`` itself without accelerate)."""
    if state is None:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def shared_seed(seed: int, state: Any) -> int:
    """Rank 0's ``seed`` in every process: a seed drawn at random differs per process, and the
    processes must draw from the same one."""
    if state is None:
        return seed
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([seed], from_process=0)[0]


def draw_split(indices: int | Sequence[int], draw: Callable[[list[int]], dict[int, Any]], state: Any) -> dict[int, Any]:
    """Draw ``indices`` (a count means ``range(count)``) split over the processes: ``draw(mine)``
    runs in each process on its share (it may batch them; it is not called for an empty share,
    so it must not wait on the other processes) and returns {index: result}; every process gets
    all results, in index order."""
    todo = list(range(indices)) if isinstance(indices, int) else list(indices)
    mine = share(todo, state)
    done = draw(mine) if mine else {}
    return dict(sorted(gather(list(done.items()), state), key=lambda item: item[0]))
