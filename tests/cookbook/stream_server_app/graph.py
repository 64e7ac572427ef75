"""A graph built from the streaming recipes, served by ``langgraph dev`` in test_stream_server.

``graph``: the chat node streams the fake model's tokens (messages and custom streams); the
pipeline node then streams each word of the answer through its bounded queue, with progress.
``http_graph``: Server-Sent Events read from ``state["url"]`` and forwarded as they arrive.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

from act_operator_lib.cookbook.egress import EgressPolicy
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings
from act_operator_lib.cookbook.http_stream import HttpStreamNode, HttpStreamPolicy
from act_operator_lib.cookbook.llm_stream import LLMStreamNode, fake_chat_model
from act_operator_lib.cookbook.stream_pipeline import PipelinePolicy, StreamPipelineNode
from langchain_core.messages import AnyMessage
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import TimeoutPolicy


class State(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    words: int


async def answer_words(state: State) -> AsyncIterator[str]:
    for word in str(state["messages"][-1].content).split():
        yield word


async def tag_word(word: str) -> dict[str, Any]:
    return {"word": word.upper()}


builder = StateGraph(State)
builder.add_node(LLMStreamNode(fake_chat_model("served token by token"), name="chat"))
builder.add_node(
    StreamPipelineNode(
        answer_words,
        tag_word,
        PipelinePolicy(queue_size=2, progress_every=2, count_key="words"),
        name="words",
    )
)
builder.add_edge(START, "chat")
builder.add_edge("chat", "words")
graph = builder.compile()


class HttpState(TypedDict, total=False):
    url: str
    stream: dict[str, Any]


# One pooled session per event loop: the server's runs share it. URLs come from state, so
# the client may reach only the local test server (loopback is refused unless allowed).
http = HttpClient(
    HttpSettings(timeout=10, egress=EgressPolicy(allow=(), allow_internal=("127.0.0.1",))),
    name="served-stream",
)
http_builder = StateGraph(HttpState)
http_builder.add_node(
    HttpStreamNode(http, HttpStreamPolicy(format="sse", idle_timeout=5), name="events"),
    timeout=TimeoutPolicy(idle_timeout=10, refresh_on="heartbeat"),
)
http_builder.add_edge(START, "events")
http_graph = http_builder.compile()
