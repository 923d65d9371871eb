"""What a session has added to its model: LoRA adapters and textual-inversion embeddings.

Each set is the one record of its state (what is loaded, from which file, what is on at which
weight); charstudio.lora and charstudio.embeddings keep none. All pipelines share one UNet and
text encoder, so what is loaded through the txt2img pipeline applies to every kind.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import ConfigError

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)


@dataclass
class LoadedLora:
    """One adapter a Studio has loaded: the file it came from, and its weight while on."""

    source: Path
    weight: float | None = None  # None: loaded but off


@dataclass
class LoadedEmbedding:
    """One textual-inversion embedding a Studio has loaded: its file, vector count and digest."""

    source: Path
    num_vectors: int
    sha256: str


class LoraSet:
    """The session's LoRA adapters; every change of what is on goes through `apply`."""

    def __init__(self, session: Session):
        self.session = session
        self.records: dict[str, LoadedLora] = {}

    @property
    def active(self) -> dict[str, float]:
        """Adapters in use, name -> weight (recorded in every recipe)."""
        return {name: rec.weight for name, rec in self.records.items() if rec.weight is not None}

    @property
    def loaded(self) -> dict[str, LoadedLora]:
        """Every loaded adapter, on or off, with the file it came from (copies)."""
        return {name: LoadedLora(rec.source, rec.weight) for name, rec in self.records.items()}

    def apply(self, weights: dict[str, float]) -> None:
        """Switch exactly these adapters on, at these weights, in the model and in the record."""
        from .. import lora

        lora.set_loras(self.session.pipeline("txt2img"), weights)
        for name, rec in self.records.items():
            rec.weight = float(weights[name]) if name in weights else None

    def set(self, weights: dict[str, float]) -> None:
        if dict(weights) != self.active:
            self.apply(dict(weights))

    @contextmanager
    def using(self, weights: dict[str, float]) -> Iterator[None]:
        """Exactly these adapters and weights inside the block, then the ones before."""
        before = self.active
        if dict(weights) == before:
            yield
            return
        log.info("using the recipe's LoRA weights %s for this run (studio has %s)", dict(weights), before)
        self.apply(weights)
        try:
            yield
        finally:
            self.apply(before)

    def load_off(self, path_or_name: Any, adapter_name: str | None = None, *, lora_dir: Any = None,
                 weight: float = 1.0) -> str:
        """Load a LoRA's file unless it is loaded already, leaving what is on as it was."""
        from .. import lora

        path = lora.resolve_lora_path(path_or_name, lora_dir or lora.DEFAULT_LORA_DIR).resolve()
        name = adapter_name or lora.default_adapter_name(path)
        rec = self.records.get(name)
        if rec is not None and rec.source == path:
            return name
        active = self.active
        name = lora.load_lora(self.session.pipeline("txt2img"), path, weight=weight, adapter_name=name, active=active)
        self.records[name] = LoadedLora(path)
        self.apply(active)
        return name

    def unload(self, names: Iterable[str] | None = None) -> None:
        from .. import lora

        names = None if names is None else list(names)
        lora.unload_loras(self.session.pipeline("txt2img"), names, active=self.active)
        for n in list(self.records) if names is None else names:
            self.records.pop(n, None)

    def fuse(self) -> list[str]:
        from .. import lora

        return lora.fuse_loras(self.session.pipeline("txt2img"), self.active)

    def unfuse(self) -> None:
        from .. import lora

        lora.unfuse_loras(self.session.pipeline("txt2img"))

    def check_loaded(self, weights: dict[str, float]) -> None:
        """Refuse a recipe whose adapters are not loaded."""
        missing = set(weights) - set(self.records)
        if missing:
            raise ConfigError("loras", weights, f"adapters {sorted(missing)} are not loaded; "
                              "load them with studio.load_lora first")


class EmbeddingSet:
    """The session's textual-inversion words, loaded once into the shared tokenizers and encoders.
    Names in cards and recipes are looked up in `directory()` (the studio's `embeddings_dir`)."""

    def __init__(self, session: Session, directory: Any):
        self.session = session
        self.directory = directory  # a callable giving the folder names are looked up in
        self.records: dict[str, LoadedEmbedding] = {}

    def _parts(self) -> list[tuple[Any, Any]]:
        s = self.session
        return [(s.components[tok], s.components[enc]) for tok, enc in s.family.text_parts]

    def load(self, path_or_name: Any, token: str | None = None, *, allow_pickle: bool | None = None,
             embeddings_dir: Any = None) -> str:
        from .. import embeddings as ti

        path = ti.resolve_embedding_path(path_or_name, embeddings_dir or self.directory()).resolve()
        token = ti.default_token(path) if token is None else token
        rec = self.records.get(token) if isinstance(token, str) else None
        if rec is not None:
            if rec.source == path:
                return token
            raise ConfigError("token", token, f"already loaded from {str(rec.source)!r}: "
                              f"studio.unload_embedding({token!r}) first, or choose another token")
        parts = self._parts()
        ti.check_token(token, [tok for tok, _ in parts])
        allow = self.session.allow_pickle if allow_pickle is None else bool(allow_pickle)
        emb = ti.read_embedding(path, allow_pickle=allow)
        vectors = ti.vectors_for(emb, self.session.family, [enc.get_input_embeddings().weight.shape[1] for _, enc in parts])
        self.session.drop_offload_hooks()
        ti.install(self.session.pipeline("txt2img"), token, [(tok, enc, v) for (tok, enc), v in zip(parts, vectors)])
        self.records[token] = LoadedEmbedding(path, emb.num_vectors, ti.file_digest(path))
        log.info("loaded embedding %r (%d vectors) from %s", token, emb.num_vectors, path)
        return token

    def unload(self, token: str) -> None:
        from .. import embeddings as ti

        rec = self.records.get(token)
        if rec is None:
            raise ConfigError("token", token, "no embedding of that word is loaded; loaded: "
                              + (", ".join(sorted(self.records)) or "(none)"))
        self.session.drop_offload_hooks()
        ti.uninstall(self.session.pipeline("txt2img"), token, rec.num_vectors, self._parts())
        del self.records[token]

    def written(self, texts: Iterable[str]) -> dict[str, str]:
        """The loaded embeddings these texts write, word -> file (what a recipe records)."""
        from ..embeddings import tokens_in

        tokenizer = self.session.components[self.session.family.text_parts[0][0]]
        return {t: str(self.records[t].source) for t in tokens_in(tokenizer, texts, self.records)}

    def load_for_recipe(self, wanted: dict[str, str]) -> None:
        """Load a recipe's embeddings that are not loaded: from the recorded file, else by its file
        name from the embeddings folder; a word loaded from a file of other content is refused."""
        from ..embeddings import file_digest

        for token, source in wanted.items():
            recorded = Path(source).expanduser()
            rec = self.records.get(token)
            if rec is not None:
                if rec.source == (recorded.resolve() if recorded.exists() else recorded):
                    continue
                if recorded.is_file() and file_digest(recorded) != rec.sha256:
                    raise ConfigError("embeddings", {token: source}, f"the recipe's {token!r} is another file than "
                                      f"the loaded {str(rec.source)!r}: studio.unload_embedding({token!r}) to run it "
                                      "with the recipe's")
                if not recorded.is_file():
                    log.warning("the recipe's embedding %r came from %s (not here); using the loaded %s",
                                token, source, rec.source)
                continue
            fallback = Path(self.directory()).expanduser() / recorded.name
            path = recorded if recorded.is_file() else fallback if fallback.is_file() else None
            if path is None:
                raise ConfigError("embeddings", {token: source}, f"the recipe writes the embedding {token!r}, whose "
                                  f"file {source!r} is missing (nor is {str(fallback)!r} there): put the file back, "
                                  f"or load a copy with studio.load_embedding(path, token={token!r})")
            self.load(path, token=token)
