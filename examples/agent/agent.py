"""An async workflow: awaited steps (a stand-in for LLM and HTTP calls), a sync step run
in a thread, a durable message wait, and the async client that submits it and awaits the
result from an event loop (as a FastAPI handler would)."""

import asyncio
import os
import sys

import shardflow

app = shardflow.App("agent")


@app.step(name="agent.ask_model", max_attempts=3)
async def ask_model(prompt: str) -> str:
    await asyncio.sleep(0.05)  # an awaited HTTP call: the worker's loop runs others meanwhile
    return f"plan for {prompt!r}"


@app.step(name="agent.count_words")
def count_words(text: str) -> int:
    return len(text.split())  # plain (blocking) code: awaited with call_async, in a thread


@app.workflow(name="agent.run")
async def run_agent(prompt: str) -> dict[str, object]:
    plan = await ask_model(prompt)
    words = await count_words.call_async(plan)
    await shardflow.set_event_async("plan", plan)
    verdict = await shardflow.recv_async(topic="review", timeout=3600)  # suspends
    return {"plan": plan, "words": words, "verdict": verdict}


async def main(prompt: str) -> None:
    config = os.environ.get("SHARDFLOW_CONFIG", "cluster.yaml")
    async with await shardflow.connect_async(config) as cluster:
        handle = await cluster.submit(run_agent, prompt, workflow_id=f"agent-{prompt}")
        print(await cluster.get_event(handle.workflow_id, "plan", timeout=60))
        await cluster.send(handle.workflow_id, "approved", topic="review")
        print(await handle.result(timeout=60))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "tidy the docs"))
