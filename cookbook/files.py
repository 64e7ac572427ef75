"""Files on aiofiles: confined to a base directory, atomic writes, bounded concurrency and memory.

    files = FileStore(FileSettings(base_dir="/srv/data", max_concurrency=8))
    await files.write_text("reports/today.md", text)          # temp file, fsync, rename
    text = await files.read_text("reports/today.md")
    async for chunk in files.iter_chunks("big.log"):          # chunk_size bytes at a time
        ...
    await files.transform("big.log", "big.upper.log", bytes.upper)   # streamed, atomic
    files.resolve("../etc/passwd")                             # PathEscapeError

Every path is relative to ``base_dir``; ``..``, absolute paths and symlinks that lead
outside it are refused (the path is resolved, symlinks included, then checked).
A write goes to a temporary file in the same directory, is fsynced, renamed over the
target with ``os.replace`` and the directory is fsynced, so readers and crashes only
ever see the old or the new content, never half of it. At most ``max_concurrency``
file operations run at once per event loop (aiofiles runs them in threads; unbounded,
a big fan-out would queue on the default executor and starve everything else).

When to use LangGraph's native tools instead: data that belongs to the graph's state or
memory goes in the checkpointer or a ``BaseStore``; this recipe is for real files
(artifacts, exports, inputs) that other programs read.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from act_operator_lib.base_node import AsyncBaseNode

from .resources import Resources

__all__ = ["FileSettings", "FileStore", "PathEscapeError", "WriteFiles"]


class PathEscapeError(ValueError):
    """A path that is absolute, or leads outside the base directory."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSettings:
    """Where files live and how much work runs at once."""

    base_dir: Path
    """The directory every path is confined to (created if missing)."""
    max_concurrency: int = 16
    """File operations running at once, per event loop."""
    chunk_size: int = 1024 * 1024
    """Bytes per read when streaming (``iter_chunks``, ``transform``)."""
    max_read_size: int = 64 * 1024 * 1024
    """Largest file ``read_bytes``/``read_text`` load whole; stream bigger ones."""
    fsync: bool = True
    """Flush file and directory to disk on each write (off: faster, not crash-safe)."""

    def __post_init__(self) -> None:
        if not isinstance(self.base_dir, str | os.PathLike):
            raise TypeError(
                f"FileSettings base_dir must be a path, got {type(self.base_dir).__name__}"
            )
        object.__setattr__(self, "base_dir", Path(self.base_dir))
        for name in ("max_concurrency", "chunk_size", "max_read_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FileSettings {name} must be an int >= 1, got {value!r}")


class FileStore:
    """Confined, atomic, bounded file access under ``settings.base_dir``.

    For example:

        files = FileStore(FileSettings(base_dir=tmp_path))
        await files.write_bytes("a/b.bin", b"...")
    """

    __slots__ = ("_base", "_limits", "in_flight", "settings")

    def __init__(self, settings: FileSettings, *, resources: Resources | None = None) -> None:
        if not isinstance(settings, FileSettings):
            raise TypeError(
                f"FileStore settings must be FileSettings, got {type(settings).__name__}"
            )
        self.settings = settings
        settings.base_dir.mkdir(parents=True, exist_ok=True)
        self._base = settings.base_dir.resolve(strict=True)
        # asyncio primitives belong to one loop: one semaphore per loop using the store.
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.in_flight = 0
        """File operations running right now (never above ``max_concurrency``)."""
        if resources is not None:
            resources.add(self)

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """The absolute path of ``path`` inside the base directory, or ``PathEscapeError``."""
        raw = os.fspath(path)
        if not isinstance(raw, str) or not raw or "\x00" in raw:
            raise PathEscapeError(f"file path must be a non-empty relative path, got {raw!r}")
        relative = Path(raw)
        if relative.is_absolute():
            raise PathEscapeError(
                f"file path {raw!r} is absolute; give a path relative to {self._base}"
            )
        resolved = (self._base / relative).resolve(strict=False)  # follows symlinks
        if resolved != self._base and not resolved.is_relative_to(self._base):
            raise PathEscapeError(
                f"file path {raw!r} leads outside {self._base} (to {resolved});"
                " '..' and symlinks may not leave the base directory"
            )
        return resolved

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        limit = self._limits.get(loop)
        if limit is None:
            limit = self._limits[loop] = asyncio.Semaphore(self.settings.max_concurrency)
        async with limit:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    async def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        """The whole file (up to ``max_read_size``; stream bigger files with ``iter_chunks``)."""
        target = self.resolve(path)
        async with self._slot(), aiofiles.open(target, "rb") as f:
            # fstat: the file actually opened (a rename may replace the path), and a
            # plain syscall, not another trip through a worker thread.
            size = os.fstat(f.fileno()).st_size
            if size > self.settings.max_read_size:
                raise ValueError(
                    f"file {os.fspath(path)!r} is {size} bytes, above max_read_size="
                    f"{self.settings.max_read_size}; read it with iter_chunks()"
                )
            data: bytes = await f.read()
            return data

    async def read_text(self, path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        """The whole file decoded as ``encoding``."""
        return (await self.read_bytes(path)).decode(encoding)

    async def iter_chunks(self, path: str | os.PathLike[str]) -> AsyncIterator[bytes]:
        """The file's content, ``chunk_size`` bytes at a time (memory stays bounded).

        Stopping early? Close it (``async with contextlib.aclosing(...)``) to free its slot.
        """
        async with self._slot(), aclosing(self._chunks(self.resolve(path))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _chunks(self, target: Path) -> AsyncIterator[bytes]:
        async with aiofiles.open(target, "rb") as f:
            while chunk := await f.read(self.settings.chunk_size):
                yield chunk

    @asynccontextmanager
    async def open_atomic(self, path: str | os.PathLike[str]) -> AsyncIterator[Any]:
        """A binary file to write; it replaces ``path`` only if the block succeeds.

        For example:

            async with files.open_atomic("out.bin") as f:
                await f.write(b"...")
        """
        target = self.resolve(path)
        await aiofiles.os.makedirs(target.parent, exist_ok=True)
        temp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        async with self._slot():
            try:
                async with aiofiles.open(temp, "xb") as f:
                    yield f
                    await f.flush()
                    if self.settings.fsync:
                        await asyncio.to_thread(os.fsync, f.fileno())
                await aiofiles.os.replace(temp, target)
            except BaseException:
                # Failed or cancelled: the target keeps its old content. A plain unlink
                # (no await) so a second cancellation cannot skip the cleanup.
                with suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
            if self.settings.fsync:
                await asyncio.to_thread(_fsync_dir, target.parent)

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
        source_path = self.resolve(source)
        # One slot for the pair (open_atomic's): taking a second could deadlock at limit 1.
        async with self.open_atomic(target) as out, aclosing(self._chunks(source_path)) as chunks:
            async for chunk in chunks:
                piece = change(chunk)
                await out.write(piece)
                written += len(piece)
        return written

    async def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` exists inside the base directory."""
        return await aiofiles.os.path.exists(self.resolve(path))

    async def aclose(self) -> None:
        """Nothing to release (files are closed after each operation); here for ``Resources``."""
        self._limits.clear()

    def __repr__(self) -> str:
        return f"FileStore(base_dir={str(self._base)!r})"


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (POSIX)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        for path in files:
            self.store.resolve(path)  # refuse a bad path before writing anything
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
