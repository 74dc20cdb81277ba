"""Output files appear whole or not at all, and a path that cannot be written fails before any slow work."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

import psutil

from edgekit.errors import OutputError

TEMP_MARK = "edgekit"
EXTERNAL_DATA_BYTES = 1.8e9  # above this a model's weights go to `<name>.data`: protobuf cannot hold 2 GB  # temp names: .NAME.edgekit-<pid>-<random>.tmp, beside the target


def check_writable(path: str | os.PathLike) -> Path:
    """Raise OutputError (naming the reason) unless a file can be written at `path`; returns it as a Path.

    Missing parent folders are fine (they are created); the nearest existing one must be a writable folder.
    """
    if not str(path).strip():
        raise OutputError("output path is empty")
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a directory")
    folder = next(p for p in target.absolute().parents if p.exists())
    if not folder.is_dir():
        raise OutputError(f"cannot write {target}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: folder {folder} is not writable")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds.

    The temp name carries this process's id, so a temp left by a killed process (SIGKILL) is recognised
    and removed by the next write to the same target. Any OSError becomes one OutputError naming the path.
    """
    target = check_writable(path)
    with _temp_beside(target) as tmp:
        tmp.touch(0o666, exist_ok=False)  # the usual permissions (umask applies), like a file written in place
        yield str(tmp)
        os.replace(tmp, target)


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    """A temp path beside `target`, named for this process (stale ones of dead processes removed first),
    gone on exit whatever happens; an OSError in the block becomes one OutputError naming `target`."""
    tmp = target.parent / f"{_temp_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        yield tmp
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        _remove(tmp)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{TEMP_MARK}-"


def remove_stale_temps(target: Path) -> None:
    """Remove temps beside `target` left by edgekit processes that no longer run."""
    prefix = _temp_prefix(target)
    for tmp in target.parent.iterdir():
        pid = tmp.name[len(prefix):].split("-")[0]
        if tmp.name.startswith(prefix) and tmp.name.endswith(".tmp") and pid.isdigit() \
                and not psutil.pid_exists(int(pid)):
            _remove(tmp)


def _remove(path: Path) -> None:
    """A temp may later be a folder (a model plus its external-data file, moved as one)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_group(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a private folder beside `path` for a file that may come with side files (ONNX external data).

    The block writes `<folder>/<path's name>` and, if it needs them, `<folder>/<path's name>.*` (e.g.
    `model.onnx.data`); anything else in the folder is scratch. On success the side files move into place
    first and the model last, so a model never appears without its data; on failure nothing appears. The
    folder is named like `atomic_output`'s temps, so one left by a killed process is removed later too.
    """
    target = check_writable(path)
    with _temp_beside(target) as folder:
        folder.mkdir()
        yield folder
        _publish(folder, target)


def _publish(folder: Path, target: Path) -> None:
    sides = sorted(folder.glob(f"{target.name}.*"))
    moved = []
    try:
        for file in [*sides, folder / target.name]:
            os.chmod(file, 0o666 & ~_umask())
            os.replace(file, target.parent / file.name)
            moved.append(target.parent / file.name)
    except BaseException:
        for file in moved[: len(sides)]:  # side files moved before the model failed to: take them back
            file.unlink(missing_ok=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def save_onnx(model, path: str | os.PathLike, external: bool) -> None:
    """Write an ONNX model, its weights in one `<name>.data` file beside it when `external`.

    Use inside `atomic_output_group`, which publishes the model and its data file as one output.
    """
    import onnx

    path = Path(path)
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=1024)


def check_writable_folder(path: str | os.PathLike, marker: str) -> Path:
    """Like `check_writable`, for an output folder: an existing one may be replaced only if it holds
    `marker` (a folder edgekit wrote before), never a user's folder or a file."""
    if not str(path).strip():
        raise OutputError("output path is empty")
    target = Path(path)
    if target.is_file():
        raise OutputError(f"cannot write the folder {target}: it is a file")
    if target.is_dir() and any(target.iterdir()) and not (target / marker).is_file():
        raise OutputError(f"cannot write {target}: the folder exists and is not an edgekit model folder "
                          f"(no {marker}); choose a new or empty folder")
    return check_writable(target / marker).parent


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, marker: str) -> Iterator[Path]:
    """Yield a private folder beside `path`; on success it replaces `path` (renamed into place, an old
    edgekit folder moved aside first and removed after), on failure nothing appears."""
    target = check_writable_folder(path, marker)
    with _temp_beside(target) as tmp:
        old = tmp.with_name(tmp.name.replace(".tmp", "-old.tmp"))
        try:
            tmp.mkdir(0o777)
            yield tmp
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
        finally:
            _remove(old)
