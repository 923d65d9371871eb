"""Small file helpers shared by everything that writes user-visible files."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import CharstudioError, InputFileError, OutputError, describe


PACKAGE_DIR = Path(__file__).resolve().parent
log = logging.getLogger(__name__)


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
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        os_error = as_os_error(exc)
        if os_error is not None:  # safetensors reports a full disk as SafetensorError, not OSError
            raise OutputError(f"cannot write {str(dest)!r}: {_os_reason(os_error, dest)}") from exc
        raise
    return dest


def as_os_error(exc: BaseException) -> OSError | None:
    """`exc` as the OSError it stands for: itself, or safetensors' ``SafetensorError`` that wraps
    one (``... No space left on device (os error 28)``); None for anything else."""
    import re

    if isinstance(exc, OSError):
        return exc
    if type(exc).__name__ == "SafetensorError":
        m = re.search(r"\(os error (\d+)\)", str(exc))
        if m:
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
    return None


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


# Several files that belong together (a sheet, interpolation frames, a LoRA folder) are written
# into a hidden staging folder beside their target and swapped in whole (`staged_folder`). The
# names below are ours: ``.NAME.staging-PID-HEX`` (being built, or the old folder right after an
# atomic exchange) and ``.NAME.backup-PID-HEX`` (the old folder between the two renames of the
# fallback swap). Recovery rule (`recover_folder`, run before every staged write to a target):
# a backup of a dead process goes back to NAME when NAME is missing (the kill fell between the
# two renames: the complete old folder returns), otherwise it is deleted; a staging folder of a
# dead process is deleted (an unfinished new folder, or the old one after the exchange).
_LEFTOVER_RE = re.compile(r"^\.(staging|backup)-(\d+)-[0-9a-f]+$")


def _leftovers(target: Path) -> list[tuple[str, Path]]:
    """(kind, path) of every staging/backup folder a dead process left beside `target`."""
    parent, head = target.parent, f".{target.name}"
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        m = _LEFTOVER_RE.match(entry.name[len(head):]) if entry.name.startswith(head) else None
        if m and not entry.is_symlink() and entry.is_dir() and not _pid_alive(int(m.group(2))):
            found.append((m.group(1), entry))
    return sorted(found, key=lambda kp: kp[1].stat().st_mtime, reverse=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder of this process that outlived its write (its cleanup failed)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def recover_folder(target: str | os.PathLike) -> None:
    """Finish or undo what a killed `staged_folder` write left beside `target` (see the rule above)."""
    import shutil

    target = Path(target).expanduser()
    for kind, leftover in _leftovers(target):
        if kind == "backup" and not os.path.lexists(target):
            os.rename(leftover, target)
            log.info("restored %s from an interrupted replacement", target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("removed %s, left by an interrupted write", leftover)


def link_tree(src: Path, dst: Path) -> None:
    """Copy `src` (a file, a link or a folder) to `dst` by hard links where the file system allows,
    so carrying a folder's files into its replacement costs no space. Symbolic links are copied
    as links, never followed."""
    import shutil

    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        shutil.copymode(src, dst)
        for entry in src.iterdir():
            link_tree(entry, dst / entry.name)
    elif src.is_file():
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:  # no hard links here (another file system type, a link limit): a copy
            shutil.copy2(src, dst, follow_symlinks=False)
    # anything else (a FIFO, a socket) is moved over after the swap, see _swap_in


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the file system cannot, and the caller falls back to two renames."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _hidden(target: Path, kind: str) -> Path:
    import secrets

    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _swap_in(staged: Path, target: Path, replaces: set[str], overwrite: bool, field: str) -> None:
    """Put the complete folder `staged` in place of `target`.

    What the old folder holds besides its own output (``replaces``) and the new files (a user's
    notes, other pictures) is carried into the new one first, so nothing of the user's is lost.
    """
    import shutil

    if not os.path.lexists(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)  # onto nothing: one step
        return
    new = {p.name for p in staged.iterdir()}
    old = {p.name for p in target.iterdir()}
    taken = sorted(new & old)
    if taken and not overwrite:
        raise OutputError(f"{field}={str(target)!r}: {str(target / taken[0])!r} already exists: pass overwrite=True "
                          "(CLI: --overwrite) or choose another folder")
    dropped = new | (replaces if overwrite else set())
    for name in sorted(old - dropped):
        link_tree(target / name, staged / name)
    shutil.copymode(target, staged)
    if _exchange(staged, target):
        old_dir = staged  # the exchange left the old folder under the staging name
    else:
        old_dir = _hidden(target, "backup")
        os.rename(target, old_dir)
        try:
            os.rename(staged, target)  # a kill just before this: recover_folder puts the backup back
        except BaseException:
            os.rename(old_dir, target)
            raise
    # The new folder is in place. What appeared in the old one while this ran (or could not be
    # linked) moves over; a failure here only leaves it for the next recover_folder.
    try:
        for entry in list(old_dir.iterdir()):
            if entry.name not in dropped and not os.path.lexists(target / entry.name):
                os.replace(entry, target / entry.name)
    except OSError as exc:
        log.warning("could not move the last files of the old %s over: %s", target, exc)
    shutil.rmtree(old_dir, ignore_errors=True)


def check_staged_target(path: str | os.PathLike, field: str = "out") -> Path:
    """The rule `staged_folder` applies to its target, without creating anything: a real folder
    (or nothing yet) outside the package, never a symbolic link, in a parent folder that can be
    written (the staging folder is made beside the target). For a long job's start (the CLI's
    sheet ``--out``): a target the writer would refuse fails before any picture is drawn."""
    dest = refuse_package_path(path, field)
    if dest.is_symlink():
        raise OutputError(f"{field}={str(dest)!r} is a symbolic link: give the folder it points to "
                          f"({os.path.realpath(dest)!r}) or another path")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{field}={str(dest)!r} is a file, not a folder: choose a folder path")
    probe = dest.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{field}={str(dest)!r} is inside {str(probe)!r}, which is a file, not a folder: "
                          "choose a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{field}={str(dest)!r} cannot be written: the new folder is built beside it, in "
                          f"{str(probe)!r}, which has no write permission (read-only?); choose a folder whose "
                          "parent folder is writable")
    return dest


@contextmanager
def staged_folder(target: str | os.PathLike, *, overwrite: bool = False, field: str = "out",
                  replaces: Iterable[str] | Callable[[Path], Iterable[str]] = ()) -> Iterator[Path]:
    """The one writer of outputs made of several files: yields an empty hidden folder beside
    `target` (same file system); when the block ends it becomes `target` in one swap.

    A kill at any moment leaves the complete old folder or the complete new one (see
    `recover_folder` for the moment between the two renames where the system cannot exchange
    folders atomically), and no stray file under the user's names. A new name that is already in
    `target` is refused unless `overwrite`; with `overwrite`, the old folder's files named by
    ``replaces`` (its own output, e.g. the pictures its old sheet.json lists; a callable gets the
    old folder) go too. Every other file in the old folder is kept. On any failure the staging
    folder is removed and the old folder is untouched; an OS error (a full disk, no permission)
    becomes an `OutputError` naming ``field``, the target and the file.
    """
    import shutil

    # 1. Check the target: a real folder (or nothing) outside the package; never a link out.
    dest = check_staged_target(target, field)
    stage: Path | None = None
    try:
        # 2. Undo what a killed earlier write left; build the new folder in a fresh staging folder.
        if dest.parent.is_dir():
            recover_folder(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = _hidden(dest, "staging")
        stage.mkdir(mode=0o777)  # the umask applies, as for a plain mkdir
        yield stage
        # 3. The new folder is complete: swap it in.
        old = set()
        if overwrite and dest.is_dir():
            old = set(replaces(dest) if callable(replaces) else replaces)
        _swap_in(stage, dest, old, overwrite, field)
        stage = None
    except BaseException as exc:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OutputError):
            text = str(exc) if stage is None else str(exc).replace(str(stage), str(dest))
            if not text.startswith(f"{field}="):
                text = f"{field}={str(dest)!r}: {text}"
            raise OutputError(text) from exc
        os_error = as_os_error(exc)
        if os_error is None:
            raise
        where = Path(str(os_error.filename).replace(str(stage), str(dest))) if os_error.filename and stage else dest
        raise OutputError(f"{field}={str(dest)!r}: cannot write {str(where)!r}: {_os_reason(os_error, where)}") from exc
