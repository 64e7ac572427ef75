"""LLMStreamNode in real compiled graphs: tokens on both streams, state, cancellation, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from act_operator_lib.cookbook.llm_stream import (
    LLMStreamNode,
    MessagesState,
    TokenStreamPolicy,
    fake_chat_model,
)
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import NodeTimeoutError
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph.types import TimeoutPolicy

from tests.helpers import cancel_after_first_chunk, other_tasks_after, run_example


class PacedChatModel(GenericFakeChatModel):
    """The fake model with a real async stream: one token per ``delay`` seconds.

    It records how its stream ended, which is what cancellation must reach.
    """

    delay: float = 0.0
    fail_after: int | None = None
    endings: list[str] = []  # noqa: RUF012 (pydantic copies the default per instance)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        text = str(next(self.messages))
        try:
            for index, token in enumerate(text.split(" ")):
                if self.fail_after is not None and index == self.fail_after:
                    raise ConnectionResetError("provider dropped the stream")
                await asyncio.sleep(self.delay)
                yield ChatGenerationChunk(
                    message=AIMessageChunk(content=token if index == 0 else f" {token}")
                )
        except asyncio.CancelledError:
            self.endings.append("cancelled")
            raise
        except GeneratorExit:
            self.endings.append("closed")
            raise
        else:
            self.endings.append("finished")


def build(node: LLMStreamNode, *, checkpointer: Any = None, timeout: Any = None) -> Any:
    builder = StateGraph(MessagesState)
    builder.add_node(node, timeout=timeout)
    builder.add_edge(START, node.name)
    return builder.compile(checkpointer=checkpointer)


async def test_tokens_reach_messages_and_custom_streams_and_state() -> None:
    graph = build(LLMStreamNode(fake_chat_model("one two three")))
    custom: list[str] = []
    tokens: list[AIMessageChunk] = []
    final: dict[str, Any] = {}
    async for mode, chunk in graph.astream(
        {"messages": [HumanMessage("count")]}, stream_mode=["custom", "messages", "values"]
    ):
        if mode == "custom":
            custom.append(chunk)
        elif mode == "messages":
            message, metadata = chunk
            assert metadata["langgraph_node"] == "LLMStreamNode"
            tokens.append(message)
        else:
            final = chunk

    assert custom == ["one", " ", "two", " ", "three"]
    assert "".join(m.text for m in tokens) == "one two three"
    answer = final["messages"][-1]
    assert type(answer) is AIMessage
    assert answer.content == "one two three"
    assert [m.content for m in final["messages"]] == ["count", "one two three"]


async def test_any_chat_model_with_a_native_async_stream_drops_in() -> None:
    model = PacedChatModel(messages=iter(["alpha beta gamma"]))
    graph = build(LLMStreamNode(model, name="chat"))
    custom = [
        c async for c in graph.astream({"messages": [HumanMessage("hi")]}, stream_mode="custom")
    ]
    assert custom == ["alpha", " beta", " gamma"]
    assert model.endings == ["finished"]


async def test_custom_key_and_text_to_custom_off() -> None:
    class KeyedState(MessagesState):
        chat: Annotated[list[BaseMessage], add_messages]

    node = LLMStreamNode(
        fake_chat_model("quiet answer"),
        TokenStreamPolicy(messages_key="chat", text_to_custom=False),
    )
    builder = StateGraph(KeyedState)
    builder.add_node(node)
    builder.add_edge(START, "LLMStreamNode")
    graph = builder.compile()
    seen = [
        mode
        async for mode, _ in graph.astream(
            {"chat": [HumanMessage("q")], "messages": []}, stream_mode=["custom", "messages"]
        )
    ]
    assert "custom" not in seen
    assert "messages" in seen
    state = await graph.ainvoke({"chat": [HumanMessage("q")], "messages": []})
    assert [m.content for m in state["chat"]] == ["q", "quiet answer"]
    assert state["messages"] == []


async def test_missing_messages_key_names_the_key() -> None:
    node = LLMStreamNode(fake_chat_model("x"), TokenStreamPolicy(messages_key="chat"))
    with pytest.raises(KeyError, match=r"state\['chat'\], which is missing"):
        await node({"messages": []})


async def test_node_alone_returns_the_merged_answer() -> None:
    update = await LLMStreamNode(fake_chat_model("just the node"))(
        {"messages": [HumanMessage("q")]}
    )
    assert update["messages"][0].content == "just the node"


async def test_cancelling_the_run_mid_answer_closes_the_model_stream() -> None:
    model = PacedChatModel(messages=iter(["a b c d e f g h i j"]), delay=0.05)
    graph = build(LLMStreamNode(model))
    before = asyncio.all_tasks()
    stream = graph.astream({"messages": [HumanMessage("go")]}, stream_mode="custom")
    received = await cancel_after_first_chunk(stream)
    assert await other_tasks_after(before) == set()
    assert model.endings == ["cancelled"]
    assert 1 <= len(received) < 10


async def test_an_error_between_tokens_closes_the_model_stream_at_once() -> None:
    # A cancellation lands inside the model's stream; an error raised in the node between
    # two tokens does not, and only aclosing closes the stream then, not garbage collection.
    model = PacedChatModel(messages=iter(["a b c d e f"]), delay=0.01)
    written: list[str] = []

    def breaking_writer(text: str) -> None:
        written.append(text)
        if len(written) == 2:
            raise RuntimeError("the caller's stream broke")

    with pytest.raises(RuntimeError, match="the caller's stream broke"):
        await LLMStreamNode(model)(
            {"messages": [HumanMessage("go")]}, runtime=Runtime(stream_writer=breaking_writer)
        )
    assert model.endings == ["closed"]


async def test_breaking_out_of_astream_closes_the_model_stream() -> None:
    model = PacedChatModel(messages=iter(["a b c d e f"]), delay=0.02)
    graph = build(LLMStreamNode(model))
    before = asyncio.all_tasks()
    stream = graph.astream({"messages": [HumanMessage("go")]}, stream_mode="custom")
    async for _ in stream:
        break
    await stream.aclose()
    assert await other_tasks_after(before) == set()
    assert model.endings in (["cancelled"], ["closed"])


async def test_model_error_mid_stream_leaves_checkpointed_state_unchanged() -> None:
    model = PacedChatModel(messages=iter(["never fully said"]), fail_after=2)
    graph = build(LLMStreamNode(model), checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    custom: list[str] = []

    async def run() -> None:
        async for chunk in graph.astream(
            {"messages": [HumanMessage("q")]}, config, stream_mode="custom"
        ):
            custom.append(chunk)

    with pytest.raises(ConnectionResetError, match="provider dropped the stream"):
        await run()
    assert custom == ["never", " fully"]
    state = await graph.aget_state(config)
    assert [m.content for m in state.values["messages"]] == ["q"]
    assert state.next == ("LLMStreamNode",)


async def test_heartbeat_per_token_keeps_an_idle_timeout_alive_and_a_stall_trips_it() -> None:
    policy = TimeoutPolicy(idle_timeout=0.25, refresh_on="heartbeat")
    # Ten tokens 0.05 s apart: 0.5 s in all, longer than the idle timeout, but never idle.
    steady = PacedChatModel(messages=iter([" ".join("x" * 10)]), delay=0.05)
    state = await build(LLMStreamNode(steady), timeout=policy).ainvoke({"messages": []})
    assert state["messages"][-1].content.count("x") == 10

    stalled = PacedChatModel(messages=iter(["a b"]), delay=2.0)
    before = asyncio.all_tasks()
    with pytest.raises(NodeTimeoutError) as caught:
        await build(LLMStreamNode(stalled), timeout=policy).ainvoke({"messages": []})
    assert caught.value.kind == "idle"
    assert await other_tasks_after(before) == set()
    assert stalled.endings == ["cancelled"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"messages_key": ""}, ValueError, "messages_key must be a non-empty str, got ''"),
        ({"text_to_custom": "yes"}, TypeError, "text_to_custom must be a bool, got 'yes'"),
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        TokenStreamPolicy(**kwargs)


def test_node_rejects_a_model_that_is_not_a_chat_model() -> None:
    with pytest.raises(TypeError, match="model must be a langchain-core BaseChatModel, got str"):
        LLMStreamNode("gpt-4o")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy must be a TokenStreamPolicy, got dict"):
        LLMStreamNode(policy={"messages_key": "m"})  # type: ignore[arg-type]


def test_example_runs() -> None:
    stdout = run_example("llm_stream")
    assert "custom stream: [Tokens][ ][stream]" in stdout
    assert "final state: Tokens stream to the caller one by one." in stdout
