"""Small file helpers shared by everything that writes user-visible files."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import CharstudioError, InputFileError, OutputError, describe


PACKAGE_DIR = Path(__file__).resolve().parent


def refuse_package_path(path: str | os.PathLike, field: str = "out") -> Path:
    """`path`, unless it lies inside the installed charstudio package: files written there are
    lost on the next upgrade and can shadow the package's own data (mini's weights, the cards)."""
    p = Path(path).expanduser()
    if p.resolve() == PACKAGE_DIR or PACKAGE_DIR in p.resolve().parents:
        raise OutputError(f"{field}={str(p)!r} is inside the installed charstudio package ({str(PACKAGE_DIR)!r}): "
                          "choose a folder of your own, e.g. outputs/")
    return p


@contextmanager
def output_named(field: str, value: Any, api_name: str | None = None) -> Iterator[None]:
    """Inside the block, an `OutputError` also names the flag or argument the user set
    (``--out='x': cannot write 'x/a.png': no space left ...``), not only the file. A message
    that starts with the API's name for it (``api_name=...``) gets the flag's name instead."""
    try:
        yield
    except OutputError as exc:
        text = str(exc)
        if text.startswith(f"{field}="):
            raise
        if api_name and text.startswith(f"{api_name}="):
            raise OutputError(field + text[len(api_name):]) from exc
        raise OutputError(f"{field}={str(value)!r}: {text}") from exc


def ensure_dir(path: str | os.PathLike, field: str = "out") -> Path:
    """Create `path` as a directory, or fail clearly if something that is not a directory is there."""
    p = refuse_package_path(path, field)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{field}={str(p)!r} is a file, not a directory: choose a directory path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{field}={str(p)!r} cannot be created: {exc.strerror or exc}") from exc
    return p


def read_text(path: str | os.PathLike, what: str, error: type[CharstudioError] = InputFileError) -> str:
    """The UTF-8 text of a user's file (card, style list, pose, caption); an unreadable or binary
    file raises `error` naming `what` and the file, not a bare codec error."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {str(p)!r}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                    "save it as UTF-8 text") from exc
    except OSError as exc:
        raise error(f"{what} {str(p)!r}: cannot be read ({exc.strerror or exc})") from exc


def open_image(source: Any, what: str = "picture", name: str | None = None) -> Any:
    """A picture from a path, bytes or a file object, fully decoded. A missing, corrupt,
    truncated or decompression-bomb file raises `InputFileError` naming ``what`` and the file
    (``name`` for bytes, e.g. an upload's filename), not PIL's text about a BytesIO object."""
    import io

    from PIL import Image

    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the uploaded file")
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        image = Image.open(data)
        image.load()  # decode now: a truncated file fails here, not halfway through a run
        return image
    except Image.DecompressionBombError as exc:
        raise InputFileError(f"{what} {label!r} is too large to decode safely ({str(exc).split('.')[0]}): "
                             "use a smaller picture") from exc
    except FileNotFoundError as exc:
        raise InputFileError(f"{what} {label!r}: no such file") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        reason = "not a picture PIL can read" if isinstance(exc, Image.UnidentifiedImageError) else describe(exc, 120)
        raise InputFileError(f"{what} {label!r} cannot be read: {reason}; use a PNG, JPEG or WebP file") from exc


@contextmanager
def writing_into(path: str | os.PathLike, field: str = "out") -> Iterator[Path]:
    """`ensure_dir` for a block of writes: a folder this call created is removed again when the
    block fails before anything stayed in it (a full disk on the first picture leaves no empty
    folder behind)."""
    made = not Path(path).expanduser().exists()
    out = ensure_dir(path, field)
    try:
        yield out
    except BaseException:
        if made:
            try:
                out.rmdir()  # only succeeds while empty
            except OSError:
                pass
        raise


def check_output_dir(path: str | os.PathLike, field: str = "out") -> Path:
    """Check, without creating anything, that `path` is or can become a writable folder.

    For the start of a long job: a bad output folder fails in a second, before a model loads,
    and a job that fails later leaves no empty folder behind (`ensure_dir` creates it when the
    first file is written).
    """
    p = refuse_package_path(path, field)
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == p else f"is inside {str(probe)!r}, which is a file"
        raise OutputError(f"{field}={str(p)!r} {what}, not a folder: choose a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{field}={str(p)!r} cannot be written: no permission in {str(probe)!r} (read-only?); "
                          "choose a writable folder")
    return p


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Write a file through `write(tmp_path)`, then move it into place in one step.

    A crash or Ctrl-C mid-write leaves at most a stray temporary file, never a truncated
    result under the real name. An existing file is kept unless `overwrite` is true. An OS
    error (no permission, a full disk, a missing folder) becomes an `OutputError` that names
    the file asked for, never the hidden temporary one.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise OutputError(f"{str(dest)!r} already exists: pass overwrite=True (CLI: --overwrite) or choose another name")
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(dest)!r}: {_os_reason(exc, dest)}") from exc
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return dest


def _os_reason(exc: OSError, dest: Path) -> str:
    """What went wrong, in words that fit the file the user named."""
    import errno

    if exc.errno == errno.ENOSPC:
        return "no space left on the device; free some space or write elsewhere"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write in {str(dest.parent)!r} (read-only?); choose a writable folder"
    if exc.errno == errno.ENOENT:
        return f"the folder {str(dest.parent)!r} does not exist"
    if exc.errno == errno.ENOTDIR:
        return f"{str(dest.parent)!r} is not a folder"
    return exc.strerror or type(exc).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def next_free_path(directory: Path, stem: str, suffix: str) -> Path:
    """`directory/stem.suffix`, or `stem-1.suffix`, `stem-2.suffix`, ... if taken."""
    candidate = directory / f"{stem}{suffix}"
    n = 1
    while candidate.exists():
        candidate = directory / f"{stem}-{n}{suffix}"
        n += 1
    return candidate
