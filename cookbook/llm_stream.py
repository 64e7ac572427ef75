"""Stream a chat model's tokens to the caller and append the final AIMessage to state.

    node = LLMStreamNode(ChatOpenAI(model="gpt-4o-mini"))  # any langchain-core BaseChatModel
    builder.add_node(node)  # reads and appends to state["messages"] (add_messages reducer)
    async for mode, chunk in graph.astream(inputs, stream_mode=["messages", "custom"]):
        ...  # "messages": (AIMessageChunk, metadata) per token; "custom": the token's text

Tokens reach the caller twice, so each consumer picks what it needs: as message chunks on
``stream_mode="messages"`` (LangGraph's own callback handler sees them because the model is
called with the node's config) and as plain ``str`` text on ``stream_mode="custom"`` (through
``runtime.stream_writer``), which is what a UI printing text wants. The chunks are merged
into one ``AIMessage`` that the node returns, so state ends up exactly as with ``ainvoke``.
Cancelling the run mid-answer, or an error in the node between two tokens, closes the
model's stream (its HTTP response, for a real provider) at once: the stream is consumed
inside ``aclosing``.

With no model the node uses langchain-core's ``GenericFakeChatModel`` (see
``fake_chat_model``), so the example and tests need no API key and no network.

When to use LangGraph's native streaming instead: if you only need ``stream_mode="messages"``,
a plain function node doing ``await model.ainvoke(state["messages"], config)`` already streams
tokens (LangGraph switches the model to streaming when a caller asks for "messages"). Use this
node when callers also want plain text on the custom stream, or a heartbeat per token for a
``TimeoutPolicy(idle_timeout=..., refresh_on="heartbeat")``. Retries and timeouts stay
LangGraph's: ``builder.add_node(node, retry_policy=RetryPolicy(), timeout=TimeoutPolicy(...))``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessageChunk, AnyMessage, message_chunk_to_message
from langchain_core.runnables import RunnableConfig
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import current_node, record
from act_operator_lib.validate import check_bool, check_str

__all__ = ["LLMStreamNode", "MessagesState", "TokenStreamPolicy", "fake_chat_model"]


class MessagesState(TypedDict):
    """The smallest state the node works with: a message list under the add_messages reducer."""

    messages: Annotated[list[AnyMessage], add_messages]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenStreamPolicy:
    """Where the node reads and writes messages and what it streams besides message chunks."""

    messages_key: str = "messages"
    """State key holding the conversation; the answer is appended to it (add_messages)."""
    text_to_custom: bool = True
    """Also write each token's text, as a ``str``, to ``stream_mode="custom"``."""

    def __post_init__(self) -> None:
        check_str("TokenStreamPolicy", "messages_key", self.messages_key)
        check_bool("TokenStreamPolicy", "text_to_custom", self.text_to_custom)


def fake_chat_model(*replies: str) -> GenericFakeChatModel:
    """langchain-core's fake streaming chat model, answering ``replies`` in turn, forever.

    model = fake_chat_model("Hello there!")  # streams "Hello", " ", "there!"
    """
    answers = replies or ("Streaming works: every token arrives as soon as it is made.",)
    return GenericFakeChatModel(messages=itertools.cycle(answers))


class LLMStreamNode(AsyncBaseNode):
    """Call a chat model on ``state[messages_key]``, streaming tokens, and append its answer.

    builder.add_node(LLMStreamNode(model, TokenStreamPolicy(messages_key="chat")))
    """

    def __init__(
        self,
        model: BaseChatModel | None = None,
        policy: TokenStreamPolicy | None = None,
        *,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if model is not None and not isinstance(model, BaseChatModel):
            raise TypeError(
                f"{type(self).__name__} model must be a langchain-core BaseChatModel,"
                f" got {type(model).__name__}"
            )
        if policy is not None and not isinstance(policy, TokenStreamPolicy):
            raise TypeError(
                f"{type(self).__name__} policy must be a TokenStreamPolicy,"
                f" got {type(policy).__name__}"
            )
        self.model = model if model is not None else fake_chat_model()
        self.policy = policy or TokenStreamPolicy()

    async def execute(
        self, state: dict[str, Any], config: RunnableConfig, runtime: Runtime[Any]
    ) -> dict[str, Any]:
        key = self.policy.messages_key
        try:
            messages = state[key]
        except KeyError:
            raise KeyError(
                f"{self.name} reads the conversation from state[{key!r}], which is missing;"
                f" state has {sorted(state)}"
            ) from None
        write = runtime.stream_writer if runtime and self.policy.text_to_custom else None
        heartbeat = runtime.heartbeat if runtime else None
        answer: AIMessageChunk | None = None
        tokens = 0
        # aclosing: a cancelled run closes the model's stream now, not at garbage collection.
        # BaseChatModel.astream is an async generator, typed as the AsyncIterator it returns.
        chunks = cast(AsyncGenerator[AIMessageChunk, None], self.model.astream(messages, config))
        async with aclosing(chunks) as stream:
            async for chunk in stream:
                answer = chunk if answer is None else answer + chunk
                tokens += 1
                if heartbeat is not None:
                    heartbeat()  # progress for TimeoutPolicy(idle_timeout=...)
                if write is not None and (text := chunk.text):
                    write(text)
        if answer is None:
            raise RuntimeError(f"{self.name}: the chat model streamed no chunks")
        record("llm_stream_tokens", float(tokens), node=current_node(self.name))
        self.log("answered", tokens=tokens)
        return {key: [message_chunk_to_message(answer)]}


if __name__ == "__main__":
    import asyncio

    from langchain_core.messages import HumanMessage
    from langgraph.graph import START, StateGraph

    async def main() -> None:
        builder = StateGraph(MessagesState)
        builder.add_node(LLMStreamNode(fake_chat_model("Tokens stream to the caller one by one.")))
        builder.add_edge(START, "LLMStreamNode")
        graph = builder.compile()
        inputs: MessagesState = {"messages": [HumanMessage("Say something")]}
        print("custom stream: ", end="")
        async for mode, chunk in graph.astream(inputs, stream_mode=["custom", "messages"]):
            if mode == "custom":
                print(f"[{chunk}]", end="", flush=True)
        print()
        state = await graph.ainvoke(inputs)
        print("final state:", state["messages"][-1].content)

    asyncio.run(main())
