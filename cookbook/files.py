"""Files on aiofiles: confined to a base directory, atomic writes, bounded concurrency and memory.

    files = FileStore(FileSettings(base_dir="/srv/data", max_concurrency=8))
    await files.write_text("reports/today.md", text)          # temp file, fsync, rename
    text = await files.read_text("reports/today.md")
    async for chunk in files.iter_chunks("big.log"):          # chunk_size bytes at a time
        ...
    await files.transform("big.log", "big.upper.log", bytes.upper)   # streamed, atomic
    files.resolve("../etc/passwd")                             # PathEscapeError

Every path names an entry strictly inside ``base_dir``: absolute paths, ``..`` and
symlinks leading outside it, and paths naming the base directory itself (``"."``,
``"sub/.."``) are refused with ``PathEscapeError``. The check and the open are one step:
each component is opened relative to the directory opened before it (``O_NOFOLLOW``,
symlinks followed by hand and only while they stay inside), so a directory swapped for a
symlink between a check and the open cannot send a read or a write outside (POSIX only).

A write goes to a temporary file in the target's directory, is fsynced, renamed over
the target with ``os.replace`` and the directory is fsynced, so readers and crashes only
ever see the old or the new content, never half of it. The new file keeps the mode (and,
where allowed, the owner) of the file it replaces. A write killed mid-way leaves a
``.<name>.<32 hex>.tmp`` file; the store deletes such files older than
``stale_temp_age`` the first time it is used. At most ``max_concurrency`` file
operations run at once per event loop (aiofiles runs them in threads; unbounded, a big
fan-out would queue on the default executor and starve everything else).

Changed: the constructor does no I/O (the base directory is created on first use, off
the event loop); ``"."`` and other paths naming the base directory are refused; a
missing directory on a read path (``"sub/../a.txt"`` without ``sub``) is
``FileNotFoundError``, as the operating system resolves it; a rewrite keeps the
replaced file's mode; a cancellation arriving while the rename runs is refused (the
rename cannot be undone: the call completes and reports the write as done).

When to use LangGraph's native tools instead: data that belongs to the graph's state or
memory goes in the checkpointer or a ``BaseStore``; this recipe is for real files
(artifacts, exports, inputs) that other programs read.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import aiofiles.threadpool

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.validate import check_bool, check_instance, check_int, check_number

from .resources import PerLoop, Resources

__all__ = ["FileSettings", "FileStore", "PathEscapeError", "WriteFiles"]

T = TypeVar("T")

# How this store names its temporary files (older versions used the same form): what
# the sweep may delete, and nothing else.
_TEMP_NAME = re.compile(r"\A\..*\.[0-9a-f]{32}\.tmp\Z", re.DOTALL)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40  # as Linux: more means a loop


class PathEscapeError(ValueError):
    """A path that is absolute, leads outside the base directory, or names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSettings:
    """Where files live and how much work runs at once."""

    base_dir: Path
    """The directory every path is confined to (created on first use if missing)."""
    max_concurrency: int = 16
    """File operations running at once, per event loop."""
    chunk_size: int = 1024 * 1024
    """Bytes per read when streaming (``iter_chunks``, ``transform``)."""
    max_read_size: int = 64 * 1024 * 1024
    """Largest file ``read_bytes``/``read_text`` load whole; stream bigger ones."""
    fsync: bool = True
    """Flush file and directory to disk on each write (off: faster, not crash-safe)."""
    stale_temp_age: float | None = 3600.0
    """Seconds after which a temporary file left by a killed write is deleted (on the
    store's first use, in the whole tree); ``None`` never deletes them. Keep it above
    the longest pause between two writes of one ``open_atomic`` block."""

    def __post_init__(self) -> None:
        check_instance("FileSettings", "base_dir", self.base_dir, (str, os.PathLike), what="a path")
        object.__setattr__(self, "base_dir", Path(self.base_dir))
        for name in ("max_concurrency", "chunk_size", "max_read_size"):
            check_int("FileSettings", name, getattr(self, name), min=1)
        check_bool("FileSettings", "fsync", self.fsync)
        check_number(
            "FileSettings",
            "stale_temp_age",
            self.stale_temp_age,
            gt=0,
            unit="seconds",
            allow_none=True,
        )


class FileStore:
    """Confined, atomic, bounded file access under ``settings.base_dir``.

    For example:

        files = FileStore(FileSettings(base_dir=tmp_path))
        await files.write_bytes("a/b.bin", b"...")
    """

    __slots__ = ("_base", "_limits", "_prepare_lock", "in_flight", "settings")

    def __init__(self, settings: FileSettings, *, resources: Resources | None = None) -> None:
        if not isinstance(settings, FileSettings):
            raise TypeError(
                f"FileStore settings must be FileSettings, got {type(settings).__name__}"
            )
        self.settings = settings
        # No I/O here: a store is often built inside async code (mkdir would block the loop).
        self._base: str | None = None
        self._prepare_lock = threading.Lock()
        # asyncio primitives belong to one loop: one semaphore per loop using the store,
        # forgotten when that loop shuts down.
        self._limits: PerLoop[asyncio.Semaphore] = PerLoop()
        self.in_flight = 0
        """File operations running right now (never above ``max_concurrency``)."""
        if resources is not None:
            resources.add(self)

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """The absolute path ``path`` names now, or ``PathEscapeError`` (a blocking call).

        An early check only: every read and write checks again as it opens the file.
        """
        raw = _relative(path)
        base = self._base or os.path.realpath(self.settings.base_dir)
        resolved = os.path.realpath(os.path.join(base, raw))  # follows symlinks
        if resolved == base:
            raise self._names_base(raw)
        if not resolved.startswith(base.rstrip(os.sep) + os.sep):
            raise PathEscapeError(
                f"file path {raw!r} leads outside {base} (to {resolved});"
                " '..' and symlinks may not leave the base directory"
            )
        return Path(resolved)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        async with self._limits.get(self._new_limit):
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    def _new_limit(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.settings.max_concurrency)

    async def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        """The whole file (up to ``max_read_size``; stream bigger files with ``iter_chunks``)."""
        raw = _relative(path)
        async with self._slot():
            file = await _in_thread(functools.partial(self._open_reader, raw), _close)
            try:
                # fstat: the file actually opened, and a plain syscall, not a thread hop.
                size = os.fstat(file.fileno()).st_size
                if size > self.settings.max_read_size:
                    raise ValueError(
                        f"file {raw!r} is {size} bytes, above max_read_size="
                        f"{self.settings.max_read_size}; read it with iter_chunks()"
                    )
                data: bytes = await aiofiles.threadpool.wrap(file).read()
                return data
            finally:
                file.close()  # no await: a cancellation cannot skip it

    async def read_text(self, path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        """The whole file decoded as ``encoding``."""
        return (await self.read_bytes(path)).decode(encoding)

    async def iter_chunks(self, path: str | os.PathLike[str]) -> AsyncIterator[bytes]:
        """The file's content, ``chunk_size`` bytes at a time (memory stays bounded).

        Stopping early? Close it (``async with contextlib.aclosing(...)``) to free its slot.
        """
        raw = _relative(path)
        async with self._slot(), aclosing(self._chunks(raw)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _chunks(self, raw: str) -> AsyncGenerator[bytes, None]:
        file = await _in_thread(functools.partial(self._open_reader, raw), _close)
        try:
            reader = aiofiles.threadpool.wrap(file)
            while chunk := await reader.read(self.settings.chunk_size):
                yield chunk
        finally:
            file.close()

    @asynccontextmanager
    async def open_atomic(self, path: str | os.PathLike[str]) -> AsyncIterator[Any]:
        """A binary file to write; it replaces ``path`` only if the block succeeds.

        For example:

            async with files.open_atomic("out.bin") as f:
                await f.write(b"...")

        Once the block succeeded, a cancellation arriving while the rename runs is
        refused: the call completes, since the new content is in place.
        """
        raw = _relative(path)
        async with self._slot():
            temp = await _in_thread(functools.partial(self._create_temp, raw), _Temp.discard)
            try:
                writer = aiofiles.threadpool.wrap(temp.file)
                yield writer
                await writer.flush()
                if self.settings.fsync:
                    await asyncio.to_thread(os.fsync, temp.file.fileno())
                temp.file.close()
                await _commit(temp, fsync=self.settings.fsync)
            except BaseException as exc:
                # Off the loop (unlink blocks), and shielded: a second cancellation stops
                # the wait, not the removal.
                await asyncio.shield(asyncio.to_thread(temp.discard, exc))
                raise
            os.close(temp.parent)

    async def write_bytes(self, path: str | os.PathLike[str], data: bytes) -> None:
        """Replace ``path`` with ``data`` atomically."""
        async with self.open_atomic(path) as f:
            await f.write(data)

    async def write_text(
        self, path: str | os.PathLike[str], text: str, encoding: str = "utf-8"
    ) -> None:
        """Replace ``path`` with ``text`` atomically."""
        await self.write_bytes(path, text.encode(encoding))

    async def transform(
        self,
        source: str | os.PathLike[str],
        target: str | os.PathLike[str],
        change: Callable[[bytes], bytes],
    ) -> int:
        """Stream ``source`` through ``change`` chunk by chunk into ``target`` (atomically).

        Returns the bytes written. ``change`` sees ``chunk_size`` pieces, so it must not
        depend on where a chunk boundary falls (e.g. ``bytes.upper``).
        """
        written = 0
        raw_source = _relative(source)
        # One slot for the pair (open_atomic's): taking a second could deadlock at limit 1.
        async with self.open_atomic(target) as out, aclosing(self._chunks(raw_source)) as chunks:
            async for chunk in chunks:
                piece = change(chunk)
                await out.write(piece)
                written += len(piece)
        return written

    async def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` names an existing entry inside the base directory."""
        return await asyncio.to_thread(self._exists, _relative(path))

    async def aclose(self) -> None:
        """Nothing to release (files are closed after each operation); here for ``Resources``."""
        await self._limits.aclose()

    def __repr__(self) -> str:
        return f"FileStore(base_dir={str(self.settings.base_dir)!r})"

    # Blocking steps below: each runs in a worker thread.

    def _prepare(self) -> str:
        """The real base directory, created (and swept) on first use."""
        if self._base is not None:
            return self._base
        with self._prepare_lock:
            if self._base is None:
                os.makedirs(self.settings.base_dir, exist_ok=True)
                base = os.path.realpath(self.settings.base_dir)
                if self.settings.stale_temp_age is not None:
                    _sweep(base, self.settings.stale_temp_age)
                self._base = base
            return self._base

    def _locate(
        self, raw: str, *, make_dirs: bool = False
    ) -> tuple[int, str, os.stat_result | None]:
        """An open descriptor of the directory holding ``raw``'s entry, the entry's name
        and its ``lstat`` (None if missing); the entry itself is never a symlink.

        Each directory is opened relative to the one before it with ``O_NOFOLLOW``, so
        nothing swapped in between can lead outside; symlinks are read and followed here,
        and only while they stay inside.
        """
        base = self._prepare()
        todo = raw.split("/")[::-1]  # a stack: the next component is last
        dirs = [os.open(base, _DIR_FLAGS)]  # dirs[i + 1] is names[i] inside dirs[i]
        names: list[str] = []
        links = 0
        try:
            entry: str | None = None
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if len(dirs) == 1:
                        raise self._leads_outside(raw)
                    os.close(dirs.pop())
                    names.pop()
                    continue
                try:
                    info = os.stat(name, dir_fd=dirs[-1], follow_symlinks=False)
                except FileNotFoundError:
                    if not todo:
                        entry = name  # a file to create
                        break
                    if not make_dirs:
                        raise
                    with suppress(FileExistsError):
                        os.mkdir(name, dir_fd=dirs[-1])
                    todo.append(name)  # look again at whatever is there now
                    continue
                if stat.S_ISLNK(info.st_mode):
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), raw)
                    target = os.readlink(name, dir_fd=dirs[-1])
                    if target.startswith("/"):
                        target = self._inside(target, raw)
                        while len(dirs) > 1:
                            os.close(dirs.pop())
                        names.clear()
                    todo.extend(target.split("/")[::-1])
                    continue
                if not todo:
                    entry = name
                    break
                dirs.append(os.open(name, _DIR_FLAGS, dir_fd=dirs[-1]))
                names.append(name)
            if entry is None:  # the path ends at a directory: name it from its parent
                if len(dirs) == 1:
                    raise self._names_base(raw)
                os.close(dirs.pop())
                entry = names.pop()
            try:
                found: os.stat_result | None = os.stat(
                    entry, dir_fd=dirs[-1], follow_symlinks=False
                )
            except FileNotFoundError:
                found = None
            parent = dirs.pop()
        finally:
            for fd in dirs:
                os.close(fd)
        return parent, entry, found

    def _inside(self, target: str, raw: str) -> str:
        """An absolute symlink target, relative to the base directory it must stay in."""
        assert self._base is not None
        for base in (self._base, os.path.abspath(self.settings.base_dir)):
            prefix = base.rstrip("/") + "/"
            if target == base or target.startswith(prefix):
                return target[len(prefix) :]
        raise self._leads_outside(raw)

    def _open_reader(self, raw: str) -> IO[bytes]:
        parent, name, _ = self._locate(raw)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            return open(fd, "rb")  # closed by the caller
        except BaseException:
            os.close(fd)
            raise

    def _create_temp(self, raw: str) -> _Temp:
        parent, name, existing = self._locate(raw, make_dirs=True)
        try:
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), raw)
            temp = _temp_name(name, os.fpathconf(parent, "PC_NAME_MAX"))
            replacing = existing is not None and stat.S_ISREG(existing.st_mode)
            # Private until its mode is set; a new file gets the default (umask) mode.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600 if replacing else 0o666, dir_fd=parent)
            try:
                if replacing:
                    assert existing is not None
                    _copy_owner_and_mode(fd, existing)
                file = open(fd, "wb")  # noqa: SIM115 (closed by open_atomic)
            except BaseException:
                os.close(fd)
                os.unlink(temp, dir_fd=parent)
                raise
        except BaseException:
            os.close(parent)
            raise
        return _Temp(parent, temp, name, file)

    def _exists(self, raw: str) -> bool:
        try:
            parent, _, found = self._locate(raw)
        except (FileNotFoundError, NotADirectoryError):
            return False
        os.close(parent)
        return found is not None

    def _leads_outside(self, raw: str) -> PathEscapeError:
        return PathEscapeError(
            f"file path {raw!r} leads outside {self._base};"
            " '..' and symlinks may not leave the base directory"
        )

    def _names_base(self, raw: str) -> PathEscapeError:
        return PathEscapeError(
            f"file path {raw!r} names the base directory {self._base or self.settings.base_dir}"
            " itself; give the path of an entry inside it"
        )


def _relative(path: str | os.PathLike[str]) -> str:
    """``path`` as a string, if it can be a relative path at all (no I/O)."""
    raw = os.fspath(path)
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise PathEscapeError(f"file path must be a non-empty relative path, got {raw!r}")
    if os.path.isabs(raw):
        raise PathEscapeError(f"file path {raw!r} is absolute; give a path relative to the base")
    depth = 0  # as written, before any symlink: refused here, with no I/O
    for name in raw.split("/"):
        if name == "..":
            depth -= 1
            if depth < 0:
                raise PathEscapeError(
                    f"file path {raw!r} leads outside the base directory;"
                    " '..' and symlinks may not leave the base directory"
                )
        elif name not in ("", "."):
            depth += 1
    if depth == 0:
        raise PathEscapeError(
            f"file path {raw!r} names the base directory itself; give the path of an entry"
            " inside it"
        )
    return raw


class _Temp:
    """A temporary file being written next to its target, in an open directory."""

    __slots__ = ("file", "name", "parent", "temp")

    def __init__(self, parent: int, temp: str, name: str, file: IO[bytes]) -> None:
        self.parent, self.temp, self.name, self.file = parent, temp, name, file

    def commit(self, fsync: bool) -> None:
        os.replace(self.temp, self.name, src_dir_fd=self.parent, dst_dir_fd=self.parent)
        if fsync:
            os.fsync(self.parent)  # persist the rename

    def discard(self, error: BaseException | None = None) -> None:
        """Close and remove the temporary file; a failure here never hides ``error``."""
        try:
            self.file.close()
            os.unlink(self.temp, dir_fd=self.parent)
        except FileNotFoundError:
            pass  # renamed already, or never fully created
        except OSError as cleanup:
            if error is None:
                raise
            error.add_note(f"could not remove the temporary file {self.temp!r}: {cleanup}")
        finally:
            os.close(self.parent)


async def _commit(temp: _Temp, *, fsync: bool) -> None:
    """Rename ``temp`` over its target in a thread, reporting what really happened."""
    renaming = asyncio.get_running_loop().run_in_executor(None, temp.commit, fsync)
    refused = 0
    while True:
        try:
            await asyncio.shield(renaming)
            break
        except asyncio.CancelledError:
            # The rename cannot be undone: wait for it, then tell the truth.
            refused += 1
            if not renaming.done():
                continue
            if renaming.exception() is not None:
                raise  # nothing was replaced: the cancellation stands
            break
    task = asyncio.current_task()
    if refused and task is not None:
        for _ in range(refused):  # the write happened: refuse the cancellation
            task.uncancel()


async def _in_thread(fn: Callable[[], T], discard: Callable[[T], object]) -> T:
    """``fn()`` in a thread; if the caller is cancelled meanwhile, ``discard`` its result."""
    work = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:

        def drop(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                discard(done.result())

        work.add_done_callback(drop)
        raise


def _close(file: IO[bytes]) -> None:
    file.close()


def _temp_name(name: str, name_max: int) -> str:
    """``.<name>.<32 hex>.tmp``, the name cut so the whole fits in ``name_max`` bytes."""
    suffix = f".{uuid.uuid4().hex}.tmp"
    room = name_max - 1 - len(suffix)
    stem = os.fsencode(name)[:room].decode("utf-8", "ignore")  # never half a character
    return f".{stem}{suffix}"


def _copy_owner_and_mode(fd: int, original: os.stat_result) -> None:
    """Give the new file the owner and mode of the one it replaces."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (original.st_uid, original.st_gid):
        with suppress(PermissionError):  # only root may give a file away
            os.fchown(fd, original.st_uid, original.st_gid)
    os.fchmod(fd, stat.S_IMODE(original.st_mode))  # after chown, which clears setuid bits


def _sweep(base: str, age: float) -> None:
    """Delete this store's temporary files older than ``age`` seconds under ``base``."""
    cutoff = time.time() - age
    for _, _, files, dir_fd in os.fwalk(base):
        for name in files:
            if not _TEMP_NAME.match(name):
                continue
            with suppress(OSError):  # gone already, or not ours to delete
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    os.unlink(name, dir_fd=dir_fd)


class WriteFiles(AsyncBaseNode):
    """A node writing ``state["files"]`` (path -> text) atomically, ``max_concurrency`` at once.

    For example:

        builder.add_node(WriteFiles(files))  # {"files": {"a.txt": "..."}} -> {"written": [...]}
    """

    def __init__(self, store: FileStore, *, name: str | None = None, verbose: bool = False) -> None:
        super().__init__(name=name, verbose=verbose)
        if not isinstance(store, FileStore):
            raise TypeError(f"WriteFiles store must be a FileStore, got {type(store).__name__}")
        self.store = store

    async def execute(self, state: Mapping[str, Any]) -> dict[str, Any]:
        files: Mapping[str, str] = state["files"]
        # Refuse a bad path before writing anything (resolve() blocks: not on the loop).
        await asyncio.to_thread(lambda: [self.store.resolve(path) for path in files])
        async with asyncio.TaskGroup() as tasks:
            for path, text in files.items():
                tasks.create_task(self.store.write_text(path, text))
        self.log("wrote", files=len(files))
        return {"written": sorted(files)}


if __name__ == "__main__":
    import tempfile
    from typing import TypedDict

    from langgraph.graph import StateGraph

    class State(TypedDict, total=False):
        files: dict[str, str]
        written: list[str]

    async def main(base: str) -> None:
        files = FileStore(
            FileSettings(base_dir=Path(base), max_concurrency=4, chunk_size=64 * 1024)
        )
        builder = StateGraph(State)
        builder.add_node(WriteFiles(files))
        builder.add_edge("__start__", "WriteFiles")
        graph = builder.compile()
        notes = {f"notes/{i}.txt": f"note {i}\n" * 1000 for i in range(10)}
        result = await graph.ainvoke({"files": notes})
        print(f"written: {len(result['written'])} files")
        size = await files.transform("notes/3.txt", "notes/3.upper.txt", bytes.upper)
        print(f"transformed {size} bytes: {(await files.read_text('notes/3.upper.txt'))[:7]!r}")
        try:
            files.resolve("../outside.txt")
        except PathEscapeError as exc:
            print(f"refused: {exc}")

    with tempfile.TemporaryDirectory() as base:
        asyncio.run(main(base))
