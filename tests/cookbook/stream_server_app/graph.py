"""A graph built from the streaming recipes, served by ``langgraph dev`` in test_stream_server.

The chat node streams the fake model's tokens (messages and custom streams); the pipeline
node then streams each word of the answer through its bounded queue, with progress events.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

from act_operator_lib.cookbook.llm_stream import LLMStreamNode, fake_chat_model
from act_operator_lib.cookbook.stream_pipeline import PipelinePolicy, StreamPipelineNode
from langchain_core.messages import AnyMessage
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages


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
