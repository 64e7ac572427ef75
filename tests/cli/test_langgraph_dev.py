"""The generated project served by LangGraph's own dev server, driven by langgraph-sdk."""

from __future__ import annotations

from pathlib import Path

import pytest
from langgraph_sdk import get_client

from tests.langgraph_dev import serve

pytestmark = pytest.mark.slow


async def test_langgraph_dev_streams_the_generated_graph(
    generated_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `langgraph dev` imports ./src/my_agent/graph.py, whose absolute imports need the
    # package importable, as `pip install -e .` makes it for a user.
    monkeypatch.setenv("PYTHONPATH", str(generated_project / "src"))
    with serve(generated_project) as url:
        async with get_client(url=url) as client:
            assistants = await client.assistants.search(graph_id="my_agent")
            assert [a["graph_id"] for a in assistants] == ["my_agent"]
            thread = await client.threads.create()
            tokens: list[str] = []
            updated: list[str] = []
            async for part in client.runs.stream(
                thread["thread_id"],
                "my_agent",
                input={"question": "What is a class node?"},
                context={"audience": "API users"},
                stream_mode=["custom", "updates"],
            ):
                if part.event == "custom":
                    tokens.append(part.data["token"])
                elif part.event == "updates":
                    updated.extend(part.data)
            state = await client.threads.get_state(thread["thread_id"])

    assert len(tokens) > 1
    assert updated == ["DraftPrompt", "StreamAnswer"]
    answer = "".join(tokens)
    assert answer.startswith("For API users:")
    assert state["values"]["answer"] == answer
    assert f"Thread {thread['thread_id']} asks: What is a class node?" in answer
