"""C2PA content credentials (c2pa-python): the signed manifest every saved PNG carries, and reading it back.

A picture charstudio draws gets a ``c2pa.created`` action with IPTC's ``trainedAlgorithmicMedia``
digital source type, charstudio's name and version (the claim generator and the action's software
agent) and the model's name. An edit of an existing picture (inpaint, the detail pass on a picture
file) opens its parent as a ``parentOf`` ingredient (``c2pa.opened``, so the parent's own manifest,
if it has one, stays in the chain) and adds ``c2pa.edited`` with ``compositeWithTrainedAlgorithmicMedia``
(IPTC: a mix of generated and other pixels, which an inpainted picture is).

Signing needs a certificate; charstudio ships none. Point to yours (a PEM chain, end-entity
certificate first, and its PEM private key) with the environment variables ``CHARSTUDIO_C2PA_CERT``
and ``CHARSTUDIO_C2PA_KEY``, or in code with `use_certificate`. The algorithm follows the key (EC
P-256/384/521: es256/384/512, RSA: ps256, Ed25519: ed25519). c2pa-python 0.38 cannot write an
unsigned manifest (``Builder.sign`` without a signer raises "No signer provided"), so without a
certificate the PNG is written without a manifest and one warning per process says so.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)

CERT_ENV, KEY_ENV, TRUST_ENV = "CHARSTUDIO_C2PA_CERT", "CHARSTUDIO_C2PA_KEY", "CHARSTUDIO_C2PA_TRUST"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
CREATED_SOURCE = IPTC + "trainedAlgorithmicMedia"
EDITED_SOURCE = IPTC + "compositeWithTrainedAlgorithmicMedia"
MODEL_KEY = "org.charstudio.model"  # the created action's parameter naming the model
PARENT_LABEL = "parent"

_given: tuple[str, str] | None = None  # use_certificate's (cert path, key path)
_warned_unsigned = False


@dataclass(frozen=True)
class Credentials:
    """A signing certificate chain and its key, both PEM text, and c2pa's name for the algorithm."""

    chain: str
    key: str
    alg: str


def use_certificate(cert: str | os.PathLike | None, key: str | os.PathLike | None) -> None:
    """Sign every PNG this process saves with this certificate chain and key (PEM files); overrides
    ``CHARSTUDIO_C2PA_CERT`` / ``CHARSTUDIO_C2PA_KEY``. ``use_certificate(None, None)`` goes back
    to the environment. The files are checked now, so a wrong path fails here, not at the first save."""
    global _given
    if cert is None and key is None:
        _given = None
        return
    pair = (str(cert) if cert is not None else None, str(key) if key is not None else None)
    _load(pair[0], pair[1], "cert", "key")
    _given = pair  # type: ignore[assignment]


def current_credentials() -> Credentials | None:
    """The certificate set by `use_certificate`, else the one the environment names, else None."""
    if _given is not None:
        return _load(_given[0], _given[1], "cert", "key")
    cert, key = os.environ.get(CERT_ENV) or None, os.environ.get(KEY_ENV) or None
    if cert is None and key is None:
        return None
    return _load(cert, key, CERT_ENV, KEY_ENV)


def _load(cert: str | None, key: str | None, cert_field: str, key_field: str) -> Credentials:
    if cert is None or key is None:
        missing, given = (cert_field, key_field) if cert is None else (key_field, cert_field)
        raise ConfigError(missing, None, f"a PEM file too: {given} is set, and signing needs both the "
                                         "certificate chain and its private key")
    chain = _read_pem(cert, cert_field, "CERTIFICATE", "a PEM certificate chain (your certificate first)")
    key_text = _read_pem(key, key_field, "PRIVATE KEY", "a PEM private key")
    return Credentials(chain, key_text, _algorithm(key_text, key, key_field))


def _read_pem(path: str, field_name: str, marker: str, expected: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(field_name, path, f"{expected} file; it cannot be read ({reason})") from exc
    if marker not in text:
        raise ConfigError(field_name, path, f"{expected} file; it holds no '-----BEGIN ... {marker}-----' block")
    return text


def _algorithm(key_text: str, path: str, field_name: str) -> str:
    """c2pa's algorithm name for the key's type."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(key_text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(field_name, path, "an unencrypted PEM private key (EC, RSA or Ed25519)") from exc
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algs = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in algs:
            return algs[key.curve.name]
    elif isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise ConfigError(field_name, path, "an EC P-256/P-384/P-521, RSA or Ed25519 private key (what C2PA signs with)")


# -- writing -------------------------------------------------------------------------------
def created_or_edited(model: str | None, edited: bool) -> dict[str, Any]:
    """The action this picture's manifest records: ``c2pa.created`` by charstudio with `model`, or
    (``edited``) ``c2pa.edited``, which names the parent ingredient."""
    from .. import __version__

    agent = {"name": "charstudio", "version": __version__}
    what = "redrawn in part" if edited else "drawn"
    action = {"action": "c2pa.edited" if edited else "c2pa.created",
              "digitalSourceType": EDITED_SOURCE if edited else CREATED_SOURCE, "softwareAgent": agent,
              "description": f"{what} by charstudio with the model {model or 'unknown'}",
              "parameters": {MODEL_KEY: model or "unknown"}}
    if edited:
        action["parameters"]["ingredientIds"] = [PARENT_LABEL]
    return action


def sign_png(png: bytes, *, title: str, model: str | None, parent: Any = None,
             credentials: Credentials | None = None) -> bytes:
    """``png`` with a signed C2PA manifest embedded (a ``caBX`` chunk; the text chunks stay); ``png``
    unchanged, with one warning per process, when no certificate is set. ``parent``: the picture
    this one edits (a `ParentPicture`, a file path or a PIL image), or None for a new picture."""
    global _warned_unsigned
    creds = credentials or current_credentials()
    if creds is None:
        if not _warned_unsigned:
            _warned_unsigned = True
            log.warning("no C2PA certificate: PNGs are saved without content credentials (c2pa-python cannot "
                        "write an unsigned manifest); set %s and %s to sign them", CERT_ENV, KEY_ENV)
        return png
    import c2pa

    from .. import __version__

    action = created_or_edited(model, edited=parent is not None)
    definition: dict[str, Any] = {"claim_generator_info": [{"name": "charstudio", "version": __version__}],
                                  "title": title, "format": "image/png"}
    if parent is None:  # an edit's actions start with c2pa.opened, which the edit intent adds first
        definition["assertions"] = [{"label": "c2pa.actions.v2", "data": {"actions": [action]}}]
    # No thumbnail: c2pa's default embeds a JPEG preview (about 30 KB), more than a small picture.
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(creds.alg, creds.chain.encode(), creds.key.encode(), None))
        with c2pa.Builder(definition, context) as builder:
            if parent is not None:
                name, data = _parent_bytes(parent)
                builder.add_ingredient({"title": name, "relationship": "parentOf", "label": PARENT_LABEL},
                                       "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else _mime(name),
                                       io.BytesIO(data))
                builder.set_intent(c2pa.C2paBuilderIntent.EDIT)
                builder.add_action(action)
            out = io.BytesIO()
            builder.sign(signer, "image/png", io.BytesIO(png), out)
        return out.getvalue()
    except c2pa.C2paError as exc:
        raise ConfigError(f"{CERT_ENV}/{KEY_ENV}", creds.alg, f"a certificate C2PA accepts (an end-entity, not "
                                                              f"self-signed CA, with an EKU such as emailProtection): "
                                                              f"c2pa refused to sign: {exc}") from exc


@dataclass(frozen=True)
class ParentPicture:
    """The picture an edit started from, read when the edit began: its file name and bytes (so the
    ingredient is that file as it was, its own manifest included, even if the file changes later)."""

    title: str
    data: bytes

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> "ParentPicture":
        p = Path(path)
        return cls(p.name, p.read_bytes())


def _parent_bytes(parent: Any) -> tuple[str, bytes]:
    """(title, bytes) of an edit's parent: a `ParentPicture`, a file path, or a picture in memory
    (encoded as PNG)."""
    if isinstance(parent, ParentPicture):
        return parent.title, parent.data
    if isinstance(parent, (str, os.PathLike)):
        picture = ParentPicture.of_file(parent)
        return picture.title, picture.data
    buf = io.BytesIO()
    parent.convert("RGB").save(buf, format="PNG")
    return "parent picture (not saved to a file)", buf.getvalue()


def _mime(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
            ".tif": "image/tiff", ".tiff": "image/tiff"}.get(suffix, "image/png")


# -- reading -------------------------------------------------------------------------------
@dataclass
class ManifestReading:
    """What a picture's C2PA manifest says: ``present``; ``state`` (c2pa's: Trusted, Valid, Invalid);
    ``signature_valid`` (the claim's signature and the data hash check, whoever signed);
    ``trusted`` (the signer chains to a trust anchor); the active manifest's actions, ingredients,
    claim generator and signer; ``failures``: c2pa's failure codes."""

    present: bool
    state: str | None = None
    signature_valid: bool = False
    trusted: bool = False
    actions: list[dict] = field(default_factory=list)
    ingredients: list[dict] = field(default_factory=list)
    generator: str | None = None
    signer: str | None = None
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def action_names(self) -> list[str]:
        return [a.get("action", "?") for a in self.actions]

    @property
    def model(self) -> str | None:
        for action in self.actions:
            model = (action.get("parameters") or {}).get(MODEL_KEY)
            if model:
                return model
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"present": self.present, "state": self.state, "signature_valid": self.signature_valid,
                "trusted": self.trusted, "actions": self.action_names, "model": self.model,
                "ingredients": self.ingredients, "generator": self.generator, "signer": self.signer,
                "failures": self.failures, "error": self.error}


# A signature made by a certificate no trust list holds is still a valid signature.
_TRUST_ONLY = {"signingCredential.untrusted"}


def read_manifest(source: str | os.PathLike | bytes, trust_anchors: str | None = None) -> ManifestReading:
    """Read and validate the C2PA manifest of a picture file (or its bytes) with c2pa-python's Reader.

    ``trust_anchors``: PEM text of the root certificates to trust (default: the file named by
    ``CHARSTUDIO_C2PA_TRUST``, else none: a valid signature then reads Valid, not Trusted)."""
    import c2pa

    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    anchors = trust_anchors if trust_anchors is not None else _env_anchors()
    context = c2pa.Context.from_dict({"trust": {"user_anchors": anchors}}) if anchors else None
    try:
        reader = c2pa.Reader.try_create(None, io.BytesIO(data), None, context) if context else \
            c2pa.Reader.try_create(io.BytesIO(data))
    except c2pa.C2paError.NotSupported as exc:  # a format C2PA has no place for (BMP): no manifest there
        return ManifestReading(present=False, error=f"C2PA cannot read this format ({exc})")
    except c2pa.C2paError as exc:
        return ManifestReading(present=True, state="Invalid", error=str(exc))  # found, but unreadable
    if reader is None:
        return ManifestReading(present=False)
    with reader:
        manifest = reader.get_active_manifest() or {}
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
    failures = [f.get("code", "?") for f in (results.get("activeManifest") or {}).get("failure", [])]
    actions: list[dict] = []
    for assertion in manifest.get("assertions", []):
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            actions += assertion.get("data", {}).get("actions", [])
    ingredients = [{"title": i.get("title"), "relationship": i.get("relationship"),
                    "has_manifest": bool(i.get("active_manifest"))} for i in manifest.get("ingredients", [])]
    generator = ", ".join(f"{g.get('name')} {g.get('version', '')}".strip()
                          for g in manifest.get("claim_generator_info", [])) or None
    info = manifest.get("signature_info") or {}
    signer = info.get("common_name") or info.get("issuer")
    valid = state in ("Valid", "Trusted") or (bool(failures) and set(failures) <= _TRUST_ONLY)
    return ManifestReading(present=True, state=state, signature_valid=valid, trusted=state == "Trusted",
                           actions=actions, ingredients=ingredients, generator=generator, signer=signer,
                           failures=failures)


def _env_anchors() -> str | None:
    path = os.environ.get(TRUST_ENV)
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(TRUST_ENV, path, f"a PEM file of trusted root certificates; it cannot be read "
                                           f"({exc.strerror or exc})") from exc


def summary(reading: ManifestReading) -> str:
    """One line for people: 'credentials: c2pa.created (signature valid, untrusted signer 'x')'."""
    if not reading.present:
        return f"no manifest ({reading.error})" if reading.error else "no manifest"
    trust = "trusted" if reading.trusted else "signer not in a trust list"
    sig = f"signature valid, {trust}" if reading.signature_valid else "signature INVALID: " + ", ".join(
        reading.failures or [reading.error or "unreadable"])
    return f"manifest: {', '.join(reading.action_names) or 'no actions'} ({sig})"

