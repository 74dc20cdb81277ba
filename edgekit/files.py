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

TEMP_MARK = "edgekit"  # temp names: .NAME.edgekit-<pid>-<random>.tmp, beside the target
EXTERNAL_DATA_BYTES = 1.8e9  # above this a model's weights go to `<name>.data`: protobuf cannot hold 2 GB
# Offsets of tensors over 1 MB in a data file: ONNX Runtime memory-maps aligned ones instead of copying them
# (4 KB pages suffice on Linux; 64 KB is Windows' mapping granularity, so one file maps everywhere).
DATA_ALIGNMENT = 65536
_COPY_CHUNK = 64 << 20


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


def save_weights(model, path: str | os.PathLike):
    """Stream an onnx-ir model's weights into `<path>.data` and return the model as a proto that references
    them: the proto stays small, and no weight is ever copied whole into memory (torch's exporter leaves
    the initializers pointing at the torch tensors; `model_proto` would copy them all).

    Tensors of 1 KB or less stay in the proto: ONNX Runtime cannot read shape operands from a data file.
    """
    import onnx_ir as ir

    path = Path(path)
    ir.external_data.unload_from_model(model, path.parent, f"{path.name}.data", size_threshold_bytes=1024,
                                       alignment=DATA_ALIGNMENT)
    return ir.to_proto(model)


def write_self_contained(proto, path: str | os.PathLike) -> None:
    """Write `proto`, whose weights are in external data beside `path`, as one file with them inline.

    The weights are streamed from the data file, so memory stays at one chunk where `onnx.save` of a
    loaded model holds every weight twice (the proto and its serialisation). The file is the model without
    those initializers, then a second `graph` field holding only them: protobuf parsers merge the repeated
    occurrences of a message field, so every reader sees one graph.
    """
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    head = type(proto)()
    head.CopyFrom(proto)
    external = [t for t in head.graph.initializer if uses_external_data(t)]
    inline = [t for t in head.graph.initializer if not uses_external_data(t)]
    del head.graph.initializer[:]
    head.graph.initializer.extend(inline)
    tensors = [(_inline_header(t), ExternalDataInfo(t)) for t in external]
    entries = [header + _field_key(9) + _varint(info.length) for header, info in tensors]
    sizes = [len(entry) + info.length for entry, (_, info) in zip(entries, tensors)]
    graph_size = sum(len(_field_key(5)) + len(_varint(size)) + size for size in sizes)
    with open(path, "wb") as out:
        out.write(head.SerializeToString() + _field_key(7) + _varint(graph_size))
        for entry, size, (_, info) in zip(entries, sizes, tensors):
            out.write(_field_key(5) + _varint(size) + entry)
            with open(path.parent / info.location, "rb") as data:
                _copy_range(data, out, info.offset or 0, info.length)


def _inline_header(tensor) -> bytes:
    """A TensorProto's fields but its data (raw_data is appended after it, streamed)."""
    header = type(tensor)()
    header.CopyFrom(tensor)
    del header.external_data[:]
    header.ClearField("data_location")
    return header.SerializeToString()


def _field_key(number: int) -> bytes:  # a length-delimited field (wire type 2) of that number
    return _varint(number << 3 | 2)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _copy_range(source, target, offset: int, length: int) -> None:
    source.seek(offset)
    while length:
        chunk = source.read(min(length, _COPY_CHUNK))
        if not chunk:
            raise OSError(f"{source.name} ends before the tensor data it should hold")
        target.write(chunk)
        length -= len(chunk)


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


def save_figure(fig, path: str | os.PathLike) -> None:
    """A matplotlib figure written as a PNG, atomically; the figure is closed whatever happens."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
