"""A FastAPI app that starts a durable workflow from an endpoint and awaits its result
with the async client: ``uvicorn web:api`` (with ``SHARDFLOW_CONFIG`` set)."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from flows import Greeter

import shardflow


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    config = os.environ.get("SHARDFLOW_CONFIG", "cluster.yaml")
    async with await shardflow.connect_async(config) as cluster:
        api.state.cluster = cluster  # one client per process: its pools and listeners
        yield


api = FastAPI(lifespan=lifespan)


@api.post("/greetings/{name}")
async def greet(name: str, request: Request) -> dict[str, str]:
    cluster: shardflow.AsyncCluster = request.app.state.cluster
    # The workflow ID makes a retried request the same workflow (and the same answer).
    handle = await cluster.submit(Greeter.greet, name, workflow_id=f"greet-{name}")
    try:
        return await handle.result(timeout=30)
    except shardflow.WorkflowTimeout:
        raise HTTPException(202, f"still running: GET /greetings/{name}") from None


@api.get("/greetings/{name}")
async def status(name: str, request: Request) -> dict[str, str]:
    cluster: shardflow.AsyncCluster = request.app.state.cluster
    try:
        found = await cluster.get(f"greet-{name}")
    except shardflow.WorkflowNotFound:
        raise HTTPException(404, "no such greeting") from None
    return {"state": found.state.value}
