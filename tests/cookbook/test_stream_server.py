"""The streaming recipes served by LangGraph's own dev server, read with the official SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph_sdk import get_client

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
