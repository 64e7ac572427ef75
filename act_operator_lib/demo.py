"""The example graph the README's first command runs: class nodes, streamed output.

    python -m act_operator_lib.demo
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from act_operator_lib.base_node import AsyncBaseNode, BaseNode


class DemoState(TypedDict, total=False):
    topic: str
    outline: list[str]
    draft: Annotated[list[str], operator.add]


class DemoContext(TypedDict):
    audience: str


class Outline(BaseNode):
    """Plans the sections to write (sync node using config)."""

    def execute(self, state: DemoState, config: RunnableConfig) -> dict[str, Any]:
        self.log("planning", thread=self.get_thread_id(config))
        return {"outline": [f"why {state['topic']}", f"how {state['topic']}"]}


class Write(AsyncBaseNode):
    """Streams each section from a chat model (async node using the runtime)."""

    async def execute(self, state: DemoState, runtime: Runtime[DemoContext]) -> dict[str, Any]:
        sections = []
        for heading in state["outline"]:
            text = f"{heading.capitalize()}, explained for {runtime.context['audience']}."
            model = GenericFakeChatModel(messages=iter([AIMessage(content=text)]))
            chunks = []
            async for chunk in model.astream(heading):
                runtime.stream_writer({"section": heading, "token": chunk.content})
                chunks.append(str(chunk.content))
            sections.append("".join(chunks))
        return {"draft": sections}


def build_graph() -> CompiledStateGraph[Any, Any, Any, Any]:
    builder = StateGraph(DemoState, context_schema=DemoContext)
    builder.add_node(Outline())
    builder.add_node(Write())
    builder.add_edge(START, "Outline")
    builder.add_edge("Outline", "Write")
    builder.add_edge("Write", END)
    return builder.compile(checkpointer=InMemorySaver())


async def main() -> None:
    graph = build_graph()
    config: RunnableConfig = {"configurable": {"thread_id": "demo"}}
    async for mode, chunk in graph.astream(
        {"topic": "class nodes"},
        config,
        context={"audience": "LangGraph users"},
        stream_mode=["updates", "custom"],
    ):
        print(f"{mode:>7}: {chunk}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
