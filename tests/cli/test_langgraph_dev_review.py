"""The generated project's reviewed graph under `langgraph dev`: paused by a person, resumed."""

from __future__ import annotations

from pathlib import Path

import pytest
from langgraph_sdk import get_client

from tests.langgraph_dev import serve

pytestmark = pytest.mark.slow


async def test_the_served_reviewed_graph_pauses_and_resumes_with_a_command(
    generated_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(generated_project / "src"))
    # langgraph.json names .env; the server starts without one, as a fresh clone does.
    assert not (generated_project / ".env").exists()
    with serve(generated_project) as url:
        async with get_client(url=url) as client:
            thread = await client.threads.create()
            paused = await client.runs.wait(
                thread["thread_id"], "my_agent_reviewed", input={"question": "Why review?"}
            )
            state = await client.threads.get_state(thread["thread_id"])
            [request] = paused["__interrupt__"]

            final = await client.runs.wait(
                thread["thread_id"],
                "my_agent_reviewed",
                command={"resume": {"answer": "Because a person checked it."}},
            )
            after = await client.threads.get_state(thread["thread_id"])

    assert state["next"] == ["ReviewAnswer"]
    assert request["value"] == {"question": "Why review?", "answer": paused["answer"]}
    assert paused["answer"].startswith("For developers:")
    assert final["answer"] == "Because a person checked it."
    assert final["review"] == "edited"
    assert after["next"] == []
