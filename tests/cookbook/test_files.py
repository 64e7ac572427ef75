"""The files recipe on a real temporary directory."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
import weakref
from contextlib import aclosing
from pathlib import Path
from typing import TypedDict

import pytest
from act_operator_lib.cookbook.files import FileSettings, FileStore, PathEscapeError, WriteFiles
from act_operator_lib.cookbook.resources import Resources
from blockbuster import blockbuster_ctx
from langgraph.graph import StateGraph

from tests.helpers import run_example

REPO = Path(__file__).resolve().parents[2]


class State(TypedDict, total=False):
    files: dict[str, str]
    written: list[str]


def leftovers(base: Path) -> list[str]:
    """The temporary files under ``base``; a coroutine calls it in a thread (it lists directories)."""
    return sorted(p.name for p in base.rglob("*.tmp"))


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_graph_writes_files_atomically_with_a_limit(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path / "out", max_concurrency=3))
    builder = StateGraph(State)
    builder.add_node(WriteFiles(store))
    builder.add_edge("__start__", "WriteFiles")
    graph = builder.compile()

    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(store.in_flight)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    files = {f"dir{i % 3}/f{i}.txt": f"line {i}\n" * 20_000 for i in range(24)}
    result = await graph.ainvoke({"files": files})
    done.set()
    await watcher
    assert result["written"] == sorted(files)
    for path, text in files.items():
        assert (tmp_path / "out" / path).read_text() == text
    assert max(seen) <= 3
    assert max(seen) >= 2  # they did run concurrently
    assert await asyncio.to_thread(leftovers, tmp_path) == []


async def test_read_helpers_and_overwrite(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path, max_read_size=1000))
    await store.write_text("a.txt", "old")
    await store.write_text("a.txt", "new")
    assert await store.read_text("a.txt") == "new"
    assert await store.read_bytes("a.txt") == b"new"
    assert await store.exists("a.txt")
    assert not await store.exists("b.txt")
    await store.write_bytes("big.bin", b"x" * 2000)
    with pytest.raises(ValueError, match=r"'big.bin' is 2000 bytes, above max_read_size=1000"):
        await store.read_bytes("big.bin")


async def test_paths_are_confined_to_the_base_directory(tmp_path: Path) -> None:
    base = tmp_path / "base"

    def arrange() -> None:
        base.mkdir()
        (tmp_path / "secret.txt").write_text("top secret")
        (base / "inside.txt").write_text("fine")
        os.symlink(tmp_path / "secret.txt", base / "escape-link")
        os.symlink(tmp_path, base / "escape-dir")
        os.symlink(base / "inside.txt", base / "inside-link")

    await asyncio.to_thread(arrange)
    store = FileStore(FileSettings(base_dir=base))

    for bad in ("../secret.txt", "a/../../secret.txt", str(tmp_path / "secret.txt"), "/etc/passwd"):
        with pytest.raises(PathEscapeError):
            await store.read_text(bad)
    with pytest.raises(PathEscapeError, match="'escape-link' leads outside"):
        await store.read_text("escape-link")
    with pytest.raises(PathEscapeError, match="symlinks may not leave the base directory"):
        await store.write_text("escape-dir/secret.txt", "overwritten?")
    with pytest.raises(PathEscapeError, match="is absolute"):
        store.resolve("/tmp/x")
    with pytest.raises(PathEscapeError, match="non-empty relative path"):
        store.resolve("")
    assert (tmp_path / "secret.txt").read_text() == "top secret"
    assert await store.read_text("inside-link") == "fine"  # a symlink staying inside is fine
    await asyncio.to_thread((base / "sub").mkdir)
    assert await store.read_text("sub/../inside.txt") == "fine"
    await asyncio.to_thread(os.symlink, "sub/../inside.txt", base / "relative-link")
    assert await store.read_text("relative-link") == "fine"

    # A node refuses the whole batch before writing any file.
    builder = StateGraph(State)
    builder.add_node(WriteFiles(store))
    builder.add_edge("__start__", "WriteFiles")
    with pytest.raises(PathEscapeError):
        await builder.compile().ainvoke({"files": {"ok.txt": "x", "../evil.txt": "x"}})
    assert not (base / "ok.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


async def test_paths_naming_the_base_directory_itself_are_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    await asyncio.to_thread((base / "sub").mkdir, parents=True)
    await asyncio.to_thread(os.symlink, ".", base / "here")
    store = FileStore(FileSettings(base_dir=base))
    for itself in (".", "sub/..", "./", "sub/../.", "here", "here/sub/.."):
        with pytest.raises(PathEscapeError, match="names the base directory"):
            await store.write_text(itself, "where does this go?")
        with pytest.raises(PathEscapeError, match="names the base directory"):
            await store.read_text(itself)
        with pytest.raises(PathEscapeError, match="names the base directory"):
            await asyncio.to_thread(store.resolve, itself)  # follows symlinks: a blocking call
    # Nothing was written next to the base directory, nor in it.
    assert entries(tmp_path) == ["base"]
    assert entries(base) == ["here", "sub"]


async def test_a_directory_swapped_for_a_symlink_while_waiting_cannot_escape(
    tmp_path: Path,
) -> None:
    base, outside = tmp_path / "base", tmp_path / "outside"

    def arrange() -> None:
        (base / "sub").mkdir(parents=True)
        (base / "sub" / "notes.txt").write_text("inside")
        outside.mkdir()
        (outside / "notes.txt").write_text("outside secret")

    def swap_sub_for_a_symlink_outside() -> None:
        (base / "sub").rename(base / "sub-before")
        os.symlink(outside, base / "sub")

    await asyncio.to_thread(arrange)
    store = FileStore(FileSettings(base_dir=base, max_concurrency=1))

    holding, release = asyncio.Event(), asyncio.Event()

    async def hold_the_only_slot() -> None:
        async with store.open_atomic("held.txt") as f:
            await f.write(b"held")
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold_the_only_slot())
    await holding.wait()
    # Both calls pass any check made now, then wait for the slot...
    writer = asyncio.create_task(store.write_text("sub/notes.txt", "overwritten"))
    reader = asyncio.create_task(store.read_text("sub/notes.txt"))
    await asyncio.sleep(0.05)
    # ...while "sub" becomes a symlink to a directory outside.
    await asyncio.to_thread(swap_sub_for_a_symlink_outside)
    release.set()
    await holder
    with pytest.raises(PathEscapeError, match=r"'sub/notes\.txt' leads outside"):
        await writer
    with pytest.raises(PathEscapeError, match=r"'sub/notes\.txt' leads outside"):
        await reader
    assert entries(outside) == ["notes.txt"]
    assert (outside / "notes.txt").read_text() == "outside secret"
    assert (base / "sub-before" / "notes.txt").read_text() == "inside"


async def test_a_rewrite_keeps_the_mode_and_owner_of_the_replaced_file(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path))
    umask = os.umask(0o022)
    os.umask(umask)
    await store.write_text("new.txt", "fresh")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o666 & ~umask

    for name, mode in (("secret.env", 0o600), ("run.sh", 0o755), ("shared.txt", 0o664)):
        (tmp_path / name).write_text("v1")
        (tmp_path / name).chmod(mode)
        await store.write_text(name, "v2")
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
        assert (tmp_path / name).read_text() == "v2"

    owned = tmp_path / "owned.txt"
    owned.write_text("v1")
    if os.geteuid() == 0:  # only root may give a file away; others keep their own
        os.chown(owned, 4321, 4321)
    before = owned.stat()
    await store.write_text("owned.txt", "v2")
    after = owned.stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # it was really replaced


async def test_names_up_to_the_filesystem_limit_are_writable(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path))
    longest = "n" * 251 + ".txt"  # 255 bytes
    multibyte = "\u00e9" * 127  # 254 bytes in UTF-8
    for name in (longest, "d" * 218, multibyte, f"sub/{longest}"):
        await store.write_text(name, name)
        await store.write_text(name, name.upper())  # and replaced
        assert await store.read_text(name) == name.upper()
    assert await asyncio.to_thread(leftovers, tmp_path) == []


async def test_a_failing_cleanup_keeps_the_original_error(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path))
    await store.write_text("data.txt", "version 1")
    temp_name = ""  # known once the write below created it

    def put_a_directory_in_place_of_the_temporary() -> None:
        nonlocal temp_name
        (temp_name,) = leftovers(tmp_path)
        os.unlink(tmp_path / temp_name)
        os.mkdir(tmp_path / temp_name)

    async def write_then_fail() -> None:
        async with store.open_atomic("data.txt") as f:
            await f.write(b"version 2")
            # Something takes the temporary file's place: removing it will fail.
            await asyncio.to_thread(put_a_directory_in_place_of_the_temporary)
            raise RuntimeError("the original failure")

    with pytest.raises(RuntimeError, match="the original failure") as caught:
        await write_then_fail()
    assert any("could not remove" in note for note in caught.value.__notes__)
    await asyncio.to_thread(os.rmdir, tmp_path / temp_name)
    assert await store.read_text("data.txt") == "version 1"


async def test_a_cancellation_during_the_rename_reports_the_true_outcome(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path))
    await store.write_text("data.txt", "version 1")
    old_inode = (tmp_path / "data.txt").stat().st_ino
    outcome: list[str] = []

    async def write() -> None:
        await store.write_text("data.txt", "version 2")
        outcome.append("written")

    task = asyncio.create_task(write())
    # Cancel in the first loop iteration that can see the rename: the call is then
    # still waiting for its rename thread (or for the directory fsync after it).
    while (tmp_path / "data.txt").stat().st_ino == old_inode:
        assert not task.done()
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (tmp_path / "data.txt").read_text() == "version 2"
    assert outcome == ["written"]  # the call said what happened: the write succeeded
    assert await asyncio.to_thread(leftovers, tmp_path) == []


async def test_a_failed_or_cancelled_write_keeps_the_old_file(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path))
    await store.write_text("data.txt", "version 1")

    async def failing_write() -> None:
        async with store.open_atomic("data.txt") as f:
            await f.write(b"version 2, half")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        await failing_write()
    assert await store.read_text("data.txt") == "version 1"
    assert await asyncio.to_thread(leftovers, tmp_path) == []

    before = len(asyncio.all_tasks())
    started = asyncio.Event()

    async def slow_write() -> None:
        async with store.open_atomic("data.txt") as f:
            for _ in range(1000):
                await f.write(b"y" * 65536)
                started.set()
                await asyncio.sleep(0.01)

    task = asyncio.create_task(slow_write())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(asyncio.all_tasks()) == before
    assert store.in_flight == 0
    assert await store.read_text("data.txt") == "version 1"
    assert await asyncio.to_thread(leftovers, tmp_path) == []


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from act_operator_lib.cookbook.files import FileSettings, FileStore

    async def main():
        store = FileStore(FileSettings(base_dir=Path(sys.argv[1])))
        async with store.open_atomic("data.txt") as f:
            for i in range(10_000):
                await f.write(b"new " * 4096)
                if i == 5:
                    print("writing", flush=True)
                await asyncio.sleep(0.01)

    asyncio.run(main())
    """
)


def test_a_killed_writer_never_leaves_a_half_written_file(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("old content")
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "writing"
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    assert (tmp_path / "data.txt").read_text() == "old content"
    # The crash left only an orphan temporary file, never a torn data.txt.
    (orphan,) = leftovers(tmp_path)
    assert orphan.startswith(".data.txt.")

    # The next store on this directory sweeps it once it is old enough (a young one may
    # belong to a write still running in another process), and nothing else.
    (tmp_path / "keep.tmp").write_text("a user's file")
    (tmp_path / ".data.txt.backup.tmp").write_text("a user's file")
    stale = time.time() - 7200
    for name in (orphan, "keep.tmp", ".data.txt.backup.tmp"):
        os.utime(tmp_path / name, (stale, stale))
    store = FileStore(FileSettings(base_dir=tmp_path, stale_temp_age=3600))
    assert asyncio.run(store.read_text("data.txt")) == "old content"
    assert leftovers(tmp_path) == [".data.txt.backup.tmp", "keep.tmp"]


async def test_stale_temporaries_are_swept_in_subdirectories_only_when_old(
    tmp_path: Path,
) -> None:
    await asyncio.to_thread((tmp_path / "a" / "b").mkdir, parents=True)
    old = tmp_path / "a" / "b" / f".x.txt.{'0f' * 16}.tmp"
    young = tmp_path / "a" / f".y.txt.{'1e' * 16}.tmp"
    old.write_text("torn")
    young.write_text("being written")
    os.utime(old, (time.time() - 600, time.time() - 600))
    await FileStore(FileSettings(base_dir=tmp_path, stale_temp_age=300)).exists("a")
    assert not old.exists()
    assert young.exists()
    await FileStore(FileSettings(base_dir=tmp_path, stale_temp_age=None)).exists("a")
    assert young.exists()


async def test_construction_and_first_use_do_not_block_the_event_loop(tmp_path: Path) -> None:
    # langgraph dev runs graphs under blockbuster: a mkdir on the loop fails there.
    with blockbuster_ctx():
        store = FileStore(FileSettings(base_dir=tmp_path / "made" / "lazily"))
    assert not (tmp_path / "made").exists()
    with blockbuster_ctx():
        await store.write_text("a/b.txt", "text")
        assert await store.read_text("a/b.txt") == "text"
        assert await store.exists("a/b.txt")
        async with aclosing(store.iter_chunks("a/b.txt")) as chunks:
            assert [chunk async for chunk in chunks] == [b"text"]
    assert (tmp_path / "made" / "lazily" / "a" / "b.txt").read_text() == "text"


async def test_large_file_is_processed_in_chunks_with_bounded_memory(tmp_path: Path) -> None:
    size = 24 * 1024 * 1024
    with (tmp_path / "big.log").open("wb") as f:
        for _ in range(size // (1024 * 1024)):
            f.write(b"abcdefgh" * 131072)
    store = FileStore(FileSettings(base_dir=tmp_path, chunk_size=64 * 1024, max_read_size=1024))
    tracemalloc.start()
    try:
        written = await store.transform("big.log", "big.upper.log", bytes.upper)
        total = 0
        async with aclosing(store.iter_chunks("big.upper.log")) as chunks:
            async for chunk in chunks:
                assert len(chunk) <= 64 * 1024
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written == total == size
    assert peak < 4 * 1024 * 1024  # a few chunks, not the 24 MB file
    with (tmp_path / "big.upper.log").open("rb") as f:
        assert f.read(16) == b"ABCDEFGHABCDEFGH"

    # Stopping early and closing frees the slot.
    async with aclosing(store.iter_chunks("big.log")) as chunks:
        async for _ in chunks:
            break
    assert store.in_flight == 0


def test_works_across_event_loops(tmp_path: Path) -> None:
    store = FileStore(FileSettings(base_dir=tmp_path, max_concurrency=2))

    async def write_and_read(i: int) -> str:
        await asyncio.gather(*(store.write_text(f"{i}-{j}.txt", str(j)) for j in range(5)))
        return await store.read_text(f"{i}-4.txt")

    assert [asyncio.run(write_and_read(i)) for i in range(3)] == ["4", "4", "4"]


async def test_resources_and_validation(tmp_path: Path) -> None:
    async with Resources() as resources:
        store = FileStore(FileSettings(base_dir=tmp_path), resources=resources)
        await store.write_text("x.txt", "x")
    with pytest.raises(ValueError, match="FileSettings max_concurrency must be an int >= 1, got 0"):
        FileSettings(base_dir=tmp_path, max_concurrency=0)
    with pytest.raises(ValueError, match="FileSettings chunk_size must be an int >= 1"):
        FileSettings(base_dir=tmp_path, chunk_size=-5)
    with pytest.raises(
        ValueError, match=r"FileSettings stale_temp_age must be a finite number .*, got nan"
    ):
        FileSettings(base_dir=tmp_path, stale_temp_age=float("nan"))
    with pytest.raises(
        TypeError, match=r"FileSettings stale_temp_age must be a finite number .*, got '1h'"
    ):
        FileSettings(base_dir=tmp_path, stale_temp_age="1h")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FileSettings base_dir must be a path, got 3"):
        FileSettings(base_dir=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FileStore settings must be FileSettings"):
        FileStore(str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="WriteFiles store must be a FileStore"):
        WriteFiles(None)  # type: ignore[arg-type]
    assert FileSettings(base_dir=str(tmp_path)).base_dir == tmp_path


def test_example_runs() -> None:
    out = run_example("files")
    assert "written: 10 files" in out
    assert "transformed 7000 bytes: 'NOTE 3\\n'" in out
    assert "refused: file path '../outside.txt' leads outside" in out


def test_a_finished_event_loop_is_not_kept_alive_by_the_store(tmp_path: Path) -> None:
    # One semaphore per loop, dropped when the loop shuts down (a semaphore a caller waited
    # on references its loop, so a weak-keyed registry kept every such loop alive).
    store = FileStore(FileSettings(base_dir=tmp_path, max_concurrency=1))
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def contend(round: int) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await asyncio.gather(*(store.write_text(f"{round}-{i}.txt", "x") for i in range(3)))

    for round in range(2):
        asyncio.run(contend(round))
    gc.collect()
    assert [ref() for ref in loops] == [None, None]
