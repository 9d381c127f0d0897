"""The workflows of the FastAPI example (the worker runs them: ``shardflow worker --app
flows:app``). Workflow methods of a class that holds its configuration, bound once."""

import asyncio

import shardflow

app = shardflow.App("fastapi_app")


class Greeter:
    """Holds what its steps need (an HTTP client, an API key...); here, a greeting."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    @app.step(name="greeter.compose", max_attempts=3)
    async def compose(self, name: str) -> str:
        await asyncio.sleep(0.01)  # stands in for an awaited HTTP call
        return f"{self.greeting}, {name}!"

    @app.workflow(name="greeter.greet")
    async def greet(self, name: str) -> dict[str, str]:
        return {"name": name, "message": await self.compose(name)}


greeter = app.bind(Greeter("Hello"))
