"""The streaming recipes served by LangGraph's own dev server, read with the official SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client

from tests.http_server import HttpTestServer
from tests.langgraph_dev import serve

APP = Path(__file__).parent / "stream_server_app"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with serve(APP) as url:
        yield url


async def test_custom_and_messages_streams_reach_an_sdk_client(server_url: str) -> None:
    async with get_client(url=server_url) as client:
        thread = await client.threads.create()
        text: list[str] = []
        words: list[str] = []
        progress: list[int] = []
        tokens: list[str] = []
        async for part in client.runs.stream(
            thread["thread_id"],
            "streaming",
            input={"messages": [{"role": "user", "content": "stream something"}]},
            stream_mode=["custom", "messages-tuple"],
        ):
            if part.event == "custom":
                chunk: Any = part.data
                if isinstance(chunk, str):
                    text.append(chunk)
                elif "word" in chunk:
                    words.append(chunk["word"])
                else:
                    assert chunk["node"] == "words"
                    progress.append(chunk["processed"])
            elif part.event == "messages":
                message, metadata = part.data
                assert message["type"] == "AIMessageChunk"
                assert metadata["langgraph_node"] == "chat"
                tokens.append(message["content"])
            else:
                assert part.event in ("metadata", "end"), part
        state = await client.threads.get_state(thread["thread_id"])

    assert text == ["served", " ", "token", " ", "by", " ", "token"]
    assert "".join(tokens) == "served token by token"
    assert words == ["SERVED", "TOKEN", "BY", "TOKEN"]
    assert progress == [2, 4]
    values: Any = state["values"]
    assert values["words"] == 4
    assert [m["content"] for m in values["messages"]] == [
        "stream something",
        "served token by token",
    ]


async def test_sse_events_are_relayed_live_through_the_server(
    server_url: str, http_server: HttpTestServer
) -> None:
    async with get_client(url=server_url) as client:
        events: list[Any] = []
        async for part in client.runs.stream(
            None,
            "http-events",
            input={"url": f"{http_server.url}/sse?n=3&delay=0.05"},
            stream_mode=["custom", "values"],
        ):
            if part.event == "custom":
                events.append(part.data)
            elif part.event == "values":
                final: Any = part.data
    assert events == [{"event": "tick", "id": str(i), "data": f'{{"i": {i}}}'} for i in range(3)]
    assert final["stream"] == {"items": 3, "last_event_id": "2"}
    assert http_server.hits["/sse"] == 1


async def test_a_dropped_upstream_stream_fails_the_run_with_a_clear_error(
    server_url: str, http_server: HttpTestServer
) -> None:
    async with get_client(url=server_url) as client:
        events: list[Any] = []
        errors: list[Any] = []
        async for part in client.runs.stream(
            None,
            "http-events",
            input={"url": f"{http_server.url}/sse-drop?n=2"},
            stream_mode=["custom"],
        ):
            if part.event == "custom":
                events.append(part.data)
            elif part.event == "error":
                errors.append(part.data)
    assert [e["id"] for e in events] == ["0", "1"]
    assert len(errors) == 1
    # The server names the error type; it redacts messages of exceptions it does not know.
    assert errors[0]["error"] == "StreamInterruptedError"
