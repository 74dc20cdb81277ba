"""Output files appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgekit.errors import OutputPathError


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, in one line, on an output that is a directory or sits below a file."""
    target = Path(path)
    if target.is_dir():
        raise OutputPathError(f"output {target} is a directory; give a file name")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"cannot write {target}: {parent} is a file, not a directory")
            break
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; move it into place only if the block succeeds."""
    target = check_output_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_output_group(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a private folder beside `path` for a file that may come with side files (ONNX external data).

    The block writes `<folder>/<path's name>` and, if it needs them, `<folder>/<path's name>.*` (e.g.
    `model.onnx.data`); anything else in the folder is scratch. On success the side files move into place
    first and the model last, so a model never appears without its data; on failure nothing appears.
    """
    target = check_output_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield folder
        _publish(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
