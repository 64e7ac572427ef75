"""A generated project sends its node spans over OTLP/HTTP when the endpoint variable is set,
and imports nothing of OpenTelemetry when it is not."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.http_server import serving_app

RUN_GRAPH = """
import asyncio, importlib.abc, os, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    # As if the OpenTelemetry packages were not installed at all.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

if os.environ.get("WITHOUT_OTEL"):
    sys.meta_path.insert(0, NoOpenTelemetry())
from act_operator_lib import tracing
from my_agent.graph import graph
final = asyncio.run(graph.ainvoke({"question": "Why?"}, context={"audience": "ops"}))
print("answer:", final["answer"][:8])
print("tracing:", tracing.enabled())
"""


async def run_project(python: Path, project: Path, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        RUN_GRAPH,
        cwd=project,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-4000:]
    return stdout.decode()


async def test_spans_reach_a_collector_when_the_endpoint_is_set(
    generated_project: Path, project_python: Path
) -> None:
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        # A stand-in collector: OTLP/HTTP posts protobuf to /v1/traces.
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    async with serving_app(app) as collector:
        output = await run_project(
            project_python, generated_project, {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector}
        )
    assert "answer: For ops:" in output
    assert "tracing: True" in output
    spans = [
        (span, resource.resource)
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = sorted(span.name for span, _ in spans)
    assert names == ["invoke_workflow my_agent", "node DraftPrompt", "node StreamAnswer"]
    by_name = {span.name: span for span, _ in spans}
    run = by_name["invoke_workflow my_agent"]
    for node in ("node DraftPrompt", "node StreamAnswer"):
        assert by_name[node].parent_span_id == run.span_id
        assert by_name[node].trace_id == run.trace_id
    service = {
        attribute.value.string_value
        for _, resource in spans
        for attribute in resource.attributes
        if attribute.key == "service.name"
    }
    assert service == {"my_agent"}


async def test_without_the_endpoint_it_runs_with_no_opentelemetry_installed(
    generated_project: Path, project_python: Path
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    output = await run_project(project_python, generated_project, {**env, "WITHOUT_OTEL": "1"})
    assert "answer: For ops:" in output
    assert "tracing: False" in output
