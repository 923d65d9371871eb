"""Splitting many pictures over the processes of ``accelerate launch``: the one helper sheets,
packs (`charstudio.cast.pack`) and storyboards share.

Under ``accelerate launch --num_processes N`` every process runs the same script. Each one
builds the whole list of recipes (same seeds everywhere: a seed drawn at random is rank 0's,
`shared_seed`), draws only its share (`share`: items ``process_index, process_index + N, ...``),
and `gather` hands every process all the pictures, so each holds the same result as a
single-process run and the main process alone writes the files. Without accelerate (or with one
process) ``state`` is None and every function is the identity: the single-process code path is
the same code. Pass the drawing's batch size as ``chunk`` so that each process draws the
batches one process would: the pictures are then the same to the last bit.

    from charstudio.sheets.distributed import distributed_state, draw_split

    state = distributed_state()
    pictures = draw_split(len(recipes), lambda mine: {i: studio.run(recipes[i]).images[0] for i in mine}, state)
    # (one picture per call: chunk=1 is exact; with studio.run_batch pass chunk=studio.max_batch)

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


def share(items: Sequence[T], state: Any, chunk: int = 1) -> list[T]:
    """This process's share of ``items`` (all of them without accelerate): runs of ``chunk``
    items dealt round-robin, the first run to rank 0, the next to rank 1, ...

    Give ``chunk`` the batch size the drawing uses (`Studio.max_batch`): then every process draws
    exactly the batches one process would, and a picture comes out the same to the last bit (a
    batch of 3 and a batch of 2 may round one level apart). The price: a list of up to ``chunk``
    items is drawn by one process; lower ``studio.max_batch`` to split a short list further."""
    items = list(items)
    if state is None:
        return items
    size = max(1, int(chunk))
    runs = [items[i:i + size] for i in range(0, len(items), size)]
    return [item for run in runs[state.process_index::state.num_processes] for item in run]


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


def draw_split(indices: int | Sequence[int], draw: Callable[[list[int]], dict[int, Any]], state: Any,
               chunk: int = 1) -> dict[int, Any]:
    """Draw ``indices`` (a count means ``range(count)``) split over the processes in runs of
    ``chunk`` (see `share`): ``draw(mine)`` runs in each process on its share (it may batch them;
    it is not called for an empty share, so it must not wait on the other processes) and returns
    {index: result}; every process gets all results, in index order."""
    todo = list(range(indices)) if isinstance(indices, int) else list(indices)
    mine = share(todo, state, chunk)
    done = draw(mine) if mine else {}
    return dict(sorted(gather(list(done.items()), state), key=lambda item: item[0]))
