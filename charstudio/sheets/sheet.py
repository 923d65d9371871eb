"""Character sheets: one card in N poses with the OpenPose ControlNet, the consistency
mechanisms switched on as asked, split across accelerate processes."""

from __future__ import annotations

import json
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from ..errors import ConfigError, ModelLoadError
from ..result import Result
from .distributed import distributed_state, gather, is_main, share, shared_seed
from .identity import DEFAULT_MAX_TRIES, PNG_KEY, IdentityRun, SheetIdentity, check_max_tries, check_min_identity, \
    resolve_scorer
from .ip_adapter import ip_adapter
from .reference import check_strength, record_reference_image, reference_attention
from .similarity import score

if TYPE_CHECKING:
    from ..studio import Studio

log = logging.getLogger(__name__)


@dataclass
class SheetResult(Result):
    """A character sheet: the images (one per pose, each with its recipe), their labels, the
    labelled grid, the identity record (`identity`: each picture's identity score against the
    first and the pairwise matrix, with the scorer's name; the checks, re-roll tries and the views
    that never reached ``min_identity`` in `identity_record`), the CLIP consistency score (None
    when no embedder was available) and the sheet settings that rebuild it with `Studio.sheet`."""

    labels: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    control_images: list[Any] = field(default_factory=list)
    identity_record: SheetIdentity | None = None
    JSON_NAME: ClassVar[str] = "sheet.json"  # the folder's index (a pack's: index.json)

    @property
    def identity(self) -> Any:
        """The `IdentityReport` of the pictures kept (None when no identity scorer was available)."""
        return self.identity_record.report if self.identity_record is not None else None

    @property
    def never_reached(self) -> list[str]:
        """The labels of the views that never reached ``min_identity`` (or failed a check) in their tries."""
        return list(self.identity_record.never_reached) if self.identity_record is not None else []

    @property
    def identity_note(self) -> str | None:
        """One line naming the views that never reached it (None when all did, or none was asked)."""
        return self.identity_record.note if self.identity_record is not None else None

    @property
    def grid_image(self) -> Any:
        """The labelled grid (one cell per pose); with identity scores, each picture's score against
        the first under its label, red where it is below the scorer's threshold."""
        from ..imaging import image_grid

        report = self.identity
        if report is None or len(report.scores) != len(self.images):
            return self.grid(cols=self.columns(), labels=self.labels)
        notes = [f"{report.scorer} {s:.2f}" + (" low" if s < report.threshold else "") for s in report.scores]
        for anchor in self.identity_record.anchors or [report.anchor]:  # a pack: each outfit's first
            notes[anchor] = f"{report.scorer} anchor"
        colours = [(200, 0, 0) if i in report.below else (0, 0, 0) for i in range(len(self.images))]
        return image_grid(self.images, cols=self.columns(), labels=self.labels, notes=notes, note_colours=colours)

    def columns(self) -> int:
        """The grid's columns (a pack: one per expression)."""
        return min(len(self.images), 4)

    def extra_pictures(self) -> dict[str, Any]:
        """Pictures saved beside the sheet's own, by file name (a pack's reference.png); listed last in
        the JSON's ``files``, so an overwrite replaces them with the rest."""
        return {}

    def file_names(self, lead: str = "") -> list[str]:
        """The pictures' file names in the saved folder: ``NN-<label>.png``."""
        from ..result import slug

        return [f"{lead}{i:02d}-{slug(label)}.png" for i, label in enumerate(self.labels)]

    def save(self, directory: str | os.PathLike, *, prefix: str | None = None, overwrite: bool = False,
             field: str = "directory") -> list[Path]:
        """Write ``NN-<pose>.png`` (each with its recipe in the metadata), ``grid.png`` and
        ``sheet.json``. Existing files are never replaced unless ``overwrite``; then the old
        sheet's pictures go with it (those its sheet.json lists), the folder's other files stay.

        The sheet is built in a staging folder and swapped in whole (`io_utils.staged_folder`):
        a kill or a full disk leaves the complete old sheet or the complete new one. ``field``
        names the setting in errors (the CLI's ``--out``)."""
        from ..errors import OutputError
        from ..io_utils import atomic_write, refuse_package_path, staged_folder
        from ..provenance.png import write_png

        lead = prefix + "-" if prefix else ""
        names = self.file_names(lead)
        grid_name, json_name = f"{lead}grid.png", f"{lead}{self.JSON_NAME}"
        target = refuse_package_path(directory, field)
        extra = {f"{lead}{n}": im for n, im in self.extra_pictures().items()}
        if not overwrite:  # check all names first so a refusal costs no writing
            taken = [n for n in [*names, *extra, grid_name, json_name] if (target / n).exists()]
            if taken:
                raise OutputError(f"{field}={str(target)!r}: {str(target / taken[0])!r} already exists: pass "
                                  "overwrite=True (CLI: --overwrite) or choose another folder")

        def old_sheet(old: Path) -> list[str]:
            # The old sheet's own files go with it; only names its sheet.json lists in its folder.
            return [grid_name, json_name, *_sheet_files(old / json_name)]

        sheet_json = json.dumps(self.summary([*names, *extra]), indent=2)
        with staged_folder(target, overwrite=overwrite, field=field, replaces=old_sheet) as stage:
            for i, (name, image, recipe) in enumerate(zip(names, self.images, self.recipes)):
                text = {"charstudio_sheet": json.dumps(self.settings)}
                if self.identity_record is not None:  # beside the recipe: re-running it ignores this
                    text[PNG_KEY] = self.identity_record.picture_text(i)
                write_png(stage / name, image, recipe, text=text)
            model = self.recipes[0].model if self.recipes else None
            for name, image in {grid_name: self.grid_image, **extra}.items():
                write_png(stage / name, image, model=model)
            atomic_write(stage / json_name, lambda tmp: Path(tmp).write_text(sheet_json, encoding="utf-8"))
        return [target / n for n in [*names, *extra, grid_name, json_name]]

    def summary(self, files: list[str] | None = None) -> dict[str, Any]:
        """JSON-ready description: settings, labels, the identity record (scores with the scorer's
        name, checks, every try), the CLIP score, and each image's recipe."""
        return {"settings": self.settings, "labels": self.labels, "score": self.score,
                "identity": self.identity_record.to_dict() if self.identity_record is not None else None,
                "files": files, "recipes": [r.to_dict() for r in self.recipes]}


def _sheet_files(sheet_json: Path) -> list[str]:
    """The picture names an existing ``sheet.json`` lists (plain names in its folder only)."""
    try:
        files = json.loads(sheet_json.read_text(encoding="utf-8")).get("files") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and f == Path(f).name and f.lower().endswith(".png")
            and not f.startswith(".")]


def _pose_label(pose: Any, i: int) -> str:
    if isinstance(pose, str) and not pose.lstrip().startswith(("{", "[")):
        return Path(pose).stem if pose.endswith(".json") else pose
    return f"pose {i + 1}"


def _card_lora(card: Any, use_lora: bool) -> tuple[Any, bool]:
    """(b): the card to use and whether its LoRA is in use.

    `Studio.make_config` puts a card's LoRA into each recipe; ``use_lora=False`` hands over a copy
    of the card without it.
    """
    import dataclasses

    if card is None or not getattr(card, "lora", None):
        return card, False
    if not use_lora:
        return dataclasses.replace(card, lora=None), False
    return card, True


def make_sheet(
    studio: Studio,
    character: Any,
    poses: Sequence[Any],
    *,
    seed: int | None = None,
    same_noise: bool = True,
    reference_strength: float = 0.0,
    reference_image: Any = None,
    reference_offload: bool = False,
    use_lora: bool = True,
    ip_adapter_weights: str | None = None,
    ip_adapter_image: Any = None,
    ip_adapter_scale: float = 0.6,
    ip_adapter_weight_name: str | None = None,
    ip_adapter_subfolder: str | None = None,
    ip_adapter_image_encoder_folder: str | None = None,
    embedder: Any = None,
    compute_score: bool | None = None,
    scorer: Any = None,
    min_identity: float | str | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
    check_views: bool = False,
    anchors: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    extras: Sequence[str] | None = None,
    callbacks: Sequence[Callable] = (),
    progress: Callable | None = None,
    cancel: Any = None,
    **settings: Any,
) -> SheetResult:
    """One character in N poses; see the module docstring for the consistency mechanisms.

    ``settings`` are `Studio.make_config` arguments shared by every image (style, width, height,
    num_inference_steps, guidance_scale, controlnet_conditioning_scale, ...). ``compute_score``:
    True requires an embedder, False skips scoring, None scores when an embedder is available.
    ``extras``: prompt words per pose, added to that pose's prompt (a turnaround's "from behind",
    an expression sheet's "smiling"); the settings' own ``extra`` is kept before them.
    ``ip_adapter_weights``: a hub id, folder or weight file; the weight name, subfolder and image
    encoder folder left as None are the model family's (`ModelFamily.ip_adapter`).

    Identity (`charstudio.sheets.identity`): every picture is scored against the first by
    ``scorer`` (None: the best available, `charstudio.identity.get_scorer`; none available: one
    log line, no scores), checked against the card's ``palette`` and, with ``check_views`` (a
    turnaround), against the first view. ``min_identity`` (a number on the identity-score scale,
    or "auto" for the scorer's threshold) switches on re-rolls: each view below it, or failing a
    check, is redrawn with the next seed, all of a round in one batch, up to ``max_tries`` tries
    in all; the best try is kept and every try recorded. The first view is never re-rolled.
    ``anchors``: per picture, the one it is scored against (default: the first), never re-rolled.
    """
    # 1. Check the request before any model work.
    poses, labels, extras = _check_lists(poses, labels, extras)
    shared_extra = settings.pop("extra", "") or ""
    reference_strength = _check_options(settings, reference_strength, reference_image, ip_adapter_weights,
                                        ip_adapter_image)
    min_identity, max_tries = check_min_identity(min_identity), check_max_tries(max_tries)
    card, lora_used = _card_lora(_card_of(character), use_lora)
    the_scorer = resolve_scorer(scorer, model=studio.model_id)

    # 2. One recipe per pose. Same noise: every pose uses the base seed; otherwise seed + i.
    #    Cancel is honoured between any two pictures' work, not only inside a denoising loop.
    state = distributed_state()
    sheet = _SheetRun(studio, callbacks, progress, cancel, state)
    configs = sheet.recipes(card or character, poses, extras, shared_extra, seed, same_noise, settings)
    first, base_seed = configs[0], configs[0].seed

    # 3. Generate this process's share (sheet.mine: all of it unless launched with several
    #    processes), with (d) IP-Adapter and (c) reference attention when asked for.
    from ..config import GenerationConfig

    with ExitStack() as stack:
        adapter = None if ip_adapter_weights is None else stack.enter_context(ip_adapter(
            studio, ip_adapter_weights, ip_adapter_image, ip_adapter_scale, subfolder=ip_adapter_subfolder,
            weight_name=ip_adapter_weight_name, image_encoder_folder=ip_adapter_image_encoder_folder))
        if reference_strength > 0:
            sheet.draw_with_reference(reference_strength, reference_image, reference_offload, stack)
        else:
            sheet.run(sheet.mine)

        # 4. Collect (across processes); score and check every picture, and re-roll the views that
        #    fail while the IP-Adapter and reference attention are still in place.
        gathered = sorted(gather(sheet.done, state), key=lambda item: item[0])
        identity = IdentityRun(the_scorer, min_identity=min_identity, max_tries=max_tries, labels=labels, card=card,
                               check_views=check_views, anchors=anchors)
        best = identity.measure([im for _, im, _ in gathered], [GenerationConfig.from_dict(r) for _, _, r in gathered])
        history = identity.reroll(best, sheet.redraw, cancel)
    record = identity.finish(best, history)
    images, recipes = [t.image for t in best], [t.recipe for t in best]
    sheet_settings = {
        "character": card.name if card else None, "prompt": first.prompt, "poses": labels, "seed": base_seed,
        "extras": extras if any(extras) else None,
        "same_noise": same_noise, "reference_strength": reference_strength,
        "reference_image": reference_image is not None, "lora": card.lora if lora_used else None,
        **_ip_adapter_settings(adapter, ip_adapter_scale),
        "model": studio.model_id, "processes": 1 if state is None else state.num_processes,
        "identity": dict(record.settings(), asked=min_identity),
    }
    result = SheetResult(images, recipes, {}, labels=labels, settings=sheet_settings,
                         control_images=[studio.render_pose(c) for c in configs], identity_record=record)
    if compute_score is not False and len(images) > 1:
        result.score = _score(images, embedder, compute_score)
    return result


def _check_lists(poses: Sequence[Any], labels: Sequence[str] | None,
                 extras: Sequence[str] | None) -> tuple[list[Any], list[str], list[str]]:
    """The poses (bounded), one label and one string of extra prompt words per pose."""
    from ..limits import check_list

    poses = check_list("poses", poses, what="poses")  # the shared bound, before any per-pose work
    if not poses:
        raise ConfigError("poses", [], "at least one pose: names (see `charstudio poses`), Pose objects or pose dicts")
    labels = list(labels) if labels is not None else [_pose_label(p, i) for i, p in enumerate(poses)]
    if len(labels) != len(poses):
        raise ConfigError("labels", len(labels), f"one label per pose ({len(poses)})")
    extras = [""] * len(poses) if extras is None else list(extras)
    if len(extras) != len(poses) or not all(isinstance(e, str) for e in extras):
        raise ConfigError("extras", extras, f"one string of prompt words per pose ({len(poses)})")
    return poses, labels, extras


# Settings a sheet sets itself for each picture: refused with what to use instead.
_PER_PICTURE = {
    "pose": "no value: a sheet draws each picture in its own pose; give the poses list (Studio.sheet's poses, "
            "Studio.turnaround's views, Studio.expressions' pose)",
    "prompt": "no value: a sheet's prompt comes from its first argument (a card name or a prompt); add words "
              "with extra=",
}


def _check_options(settings: dict[str, Any], reference_strength: float, reference_image: Any,
                   ip_adapter_weights: str | None, ip_adapter_image: Any) -> float:
    """Refuse settings a sheet cannot honour; returns the checked reference strength."""
    reference_strength = check_strength(reference_strength)
    for key, instead in _PER_PICTURE.items():
        if key in settings:
            raise ConfigError(key, settings[key], instead)
    if settings.get("num_images", 1) != 1:
        raise ConfigError("num_images", settings["num_images"], "1: a sheet draws one image per pose")
    if reference_image is not None and reference_strength == 0:
        raise ConfigError("reference_strength", 0, "a strength above 0 to use reference_image, e.g. 0.5")
    if (ip_adapter_weights is None) != (ip_adapter_image is None):
        raise ConfigError("ip_adapter_image" if ip_adapter_image is None else "ip_adapter_weights", None,
                          "both ip_adapter_weights and ip_adapter_image, or neither")
    return reference_strength


def _card_of(character: Any) -> Any:
    """The Character card ``character`` is or names, else None (a plain prompt)."""
    from ..character import Character, is_character, load_character

    return character if isinstance(character, Character) else (
        load_character(character) if isinstance(character, str) and is_character(character) else None)


class _SheetRun:
    """The drawing of one sheet: its recipes, this process's share of them, and the pictures
    drawn so far as (index, image, recipe dict)."""

    def __init__(self, studio: Studio, callbacks: Sequence[Callable], progress: Callable | None, cancel: Any,
                 state: Any):
        self.studio, self.callbacks, self.progress, self.cancel, self.state = studio, callbacks, progress, cancel, state
        self.configs: list[Any] = []
        self.mine: list[int] = []
        self.done: list[tuple[int, Any, dict]] = []
        self.redrawn = 0  # pictures re-rolled so far (for the progress count)

    def check_cancel(self) -> None:
        if self.cancel is not None:
            self.cancel.check()

    def recipes(self, character: Any, poses: list[Any], extras: list[str], shared_extra: str, seed: int | None,
                same_noise: bool, settings: dict[str, Any]) -> list[Any]:
        """One recipe per pose (the first one's seed is the sheet's); sets this process's share."""
        def words(i: int) -> str:
            return ", ".join(w for w in (shared_extra.strip(), extras[i].strip()) if w)

        first = self.studio.make_config(character, seed=seed, pose=poses[0], extra=words(0), **settings)
        if self.state is not None:
            first = first.replace(seed=shared_seed(first.seed, self.state))  # a random seed: rank 0's
        base_seed = first.seed
        configs = [first]
        for i, p in enumerate(poses[1:], start=1):
            self.check_cancel()
            configs.append(self.studio.make_config(character, seed=base_seed if same_noise else base_seed + i,
                                                   pose=p, extra=words(i), **settings))
        self.mine = self.share(range(len(poses)))
        self.configs = configs
        return configs

    def share(self, todo: Any) -> list[int]:
        # Whole batches per process: each draws the batches one process would (the same bits).
        return share(todo, self.state, chunk=max(1, int(getattr(self.studio, "max_batch", 1))))

    def report_from(self, offset: int) -> Callable | None:
        # Progress over this process's whole share: the anchor run, then the batch.
        if self.progress is None:
            return None
        from ..callbacks import StepProgress

        progress, images = self.progress, len(self.mine)
        return lambda p: progress(StepProgress(image=p.image + offset, images=images, step=p.step, steps=p.steps,
                                               batch=p.batch))

    def run(self, todo: list[int], offset: int = 0) -> None:
        # The poses share UNet batches (Studio.run_batch), each with its own seed's noise. One
        # batch per call: a call prepares (renders poses, encodes prompts) only the pictures it
        # draws, so the first picture does not wait for every pose's preparation, and Cancel
        # between two batches stops before any of the next batch's work.
        size = max(1, int(getattr(self.studio, "max_batch", 1)))
        for start in range(0, len(todo), size):
            self.check_cancel()
            part = todo[start:start + size]
            res = self.studio.run_batch([self.configs[i] for i in part], callbacks=self.callbacks,
                                        progress=self.report_from(offset + start), cancel=self.cancel)
            self.done.extend((i, im, r.to_dict()) for i, im, r in zip(part, res.images, res.recipes))

    def draw_with_reference(self, strength: float, reference_image: Any, offload: bool, stack: ExitStack) -> None:
        """(c) Reference attention: every picture reads the anchor's (pose 0's, or
        ``reference_image``'s) self-attention. The processors stay in ``stack`` (reading the
        anchor) so that re-rolled views read it too."""
        studio, mine = self.studio, self.mine
        bank = stack.enter_context(reference_attention(studio.components["unet"], strength, offload))
        if reference_image is not None:
            record_reference_image(studio, reference_image, self.configs[0], bank)
            todo = mine
        else:
            # Every process records the anchor (pose 0); the main one keeps the image. The rest
            # is shared out in the batches one process would draw after the anchor.
            todo = self.share(range(1, len(self.configs)))
            self.mine = mine = ([0] if is_main(self.state) else []) + todo
            bank.record()
            self.check_cancel()
            res = studio.run(self.configs[0], callbacks=self.callbacks, progress=self.report_from(0),
                             cancel=self.cancel)
            if is_main(self.state):
                self.done.append((0, res.images[0], res.recipes[0].to_dict()))
        bank.read()
        self.run(todo, offset=len(mine) - len(todo))

    def redraw(self, todo: list[int], configs: list[Any]) -> dict[int, tuple[Any, Any]]:
        """One re-roll round: the views ``todo`` drawn from ``configs[i]`` in ONE `run_batch` call
        (this process's share of them), gathered across processes: {index: (image, recipe)}."""
        from ..config import GenerationConfig

        mine = self.share(todo)
        self.check_cancel()
        items: list[tuple[int, Any, dict]] = []
        if mine:
            res = self.studio.run_batch([configs[i] for i in mine], callbacks=self.callbacks,
                                        progress=self._reroll_progress(len(mine)), cancel=self.cancel)
            items = [(i, im, r.to_dict()) for i, im, r in zip(mine, res.images, res.recipes)]
        self.redrawn += len(mine)
        return {i: (im, GenerationConfig.from_dict(r)) for i, im, r in gather(items, self.state)}

    def _reroll_progress(self, count: int) -> Callable | None:
        if self.progress is None:
            return None
        from ..callbacks import StepProgress

        progress, before = self.progress, len(self.mine) + self.redrawn
        return lambda p: progress(StepProgress(image=p.image + before, images=before + count, step=p.step,
                                               steps=p.steps, batch=p.batch))


def _ip_adapter_settings(adapter: Any, scale: float) -> dict[str, Any]:
    # The IP-Adapter files as resolved (family defaults filled in; a weight file given by path
    # as its root, subfolder and name), so the settings rebuild the sheet on any family.
    return {"ip_adapter": adapter.repo if adapter else None, "ip_adapter_scale": scale if adapter else None,
            "ip_adapter_subfolder": adapter.subfolder if adapter else None,
            "ip_adapter_weight_name": adapter.weight_name if adapter else None,
            "ip_adapter_image_encoder_folder": adapter.image_encoder_folder if adapter else None}


def _score(images: list[Any], embedder: Any, compute_score: bool | None) -> float | None:
    """The sheet's consistency score; None when no embedder is available and none was asked for."""
    try:
        # Only an embedder that is asked for may be downloaded; the automatic score uses one on disk.
        return score(images, embedder, download=bool(compute_score) or embedder is not None)
    except ModelLoadError:
        if compute_score:
            raise
        log.info("no CLIP embedder available; the sheet has no consistency score")
        return None
