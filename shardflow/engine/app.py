"""The registry of workflow and step functions: ``App``, ``@app.workflow``, ``@app.step``.

Decorating changes nothing about how a function runs outside a workflow; inside one (on a
worker), every step call is checkpointed and replayed from its record after a restart.

Methods work too (a class holding clients and configuration): a step method is bound like
any method; a workflow method (its first parameter is ``self``) runs on the instance that
:meth:`App.bind` registered in the worker's process, and is submitted as
``cluster.submit(Class.method, *args)`` or ``cluster.submit(instance.method, *args)``
(the instance itself is never stored; its arguments are).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from shardflow.config.cron import cron_problem
from shardflow.config.model import DEFAULT_QUEUE
from shardflow.engine import context
from shardflow.engine.policy import RetryPolicy
from shardflow.errors import ShardflowError, UnknownWorkflow

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

__all__ = ["App", "RetryPolicy", "Step", "Workflow"]


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Step(Generic[P, R]):
    """A checkpointed step. Call it like the function it wraps (``await`` it if it is an
    ``async def``: an async step can only be awaited from an async workflow)."""

    def __init__(self, fn: Callable[P, R], name: str, retry: RetryPolicy) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __get__(self, obj: object, owner: type | None = None) -> Step[Any, R]:
        """A step method read from an instance: the same step, bound to it."""
        if obj is None:
            return self
        return Step(types.MethodType(self.fn, obj), self.name, self.retry)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        run = context.current_run()
        if self.is_async:
            if run is not None and not run.is_async:
                raise ShardflowError(
                    f"step {self.name!r} is async: await it from an async workflow, or make"
                    " it a plain def to call it from a sync workflow"
                )
            return cast(R, self._awaited(run, args, kwargs))
        if run is None:
            return self.fn(*args, **kwargs)
        if run.is_async and _on_event_loop():
            raise ShardflowError(
                f"step {self.name!r} is sync and would block the event loop of an async"
                f" workflow: use `await {self.fn.__name__}.call_async(...)` (runs it in a"
                " thread) or make it async def"
            )
        return run.run_step(self.name, self.retry, lambda: self.fn(*args, **kwargs))

    async def _awaited(
        self, run: context.ActiveRun | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        def call() -> Awaitable[Any]:
            return cast(Awaitable[Any], self.fn(*args, **kwargs))

        if run is None:
            return await call()
        return await cast(context.ActiveAsyncRun, run).run_step_async(self.name, self.retry, call)

    async def call_async(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await this sync step from async code: it runs in a thread, so the event loop is
        not blocked; inside an async workflow it is checkpointed like any step. (An async
        step is awaited directly: ``await step(...)``.)"""
        if self.is_async:
            return cast(R, await cast(Awaitable[Any], self(*args, **kwargs)))
        run = context.current_run()
        if run is None:
            return await asyncio.to_thread(self.fn, *args, **kwargs)
        if not run.is_async:
            raise ShardflowError(
                f"step {self.name!r}: call_async() is for async workflows; in a sync"
                " workflow call the step directly"
            )
        aio = cast(context.ActiveAsyncRun, run)
        return await aio.run_step_async(
            self.name, self.retry, lambda: aio.in_thread(lambda: self.fn(*args, **kwargs))
        )


class Workflow(Generic[P, R]):
    """A registered workflow. Submit it with ``cluster.submit(wf, *args)``; calling it
    directly just runs the function in the calling thread, without durability."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        queue: str,
        app: App,
        timeout_seconds: float | None = None,
        schedule: str | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.queue = queue
        self.app = app
        self.timeout_seconds = timeout_seconds
        self.schedule = schedule
        # An async workflow runs on the worker's event loop (engine/aio/).
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some callables have no introspectable signature
            self._signature = None
        # A method (first parameter ``self``) runs on the instance App.bind registered.
        params = [] if self._signature is None else list(self._signature.parameters)
        self.is_method = bool(params) and params[0] == "self"
        self._positional = _positional_counts(self._signature, self.is_method)
        self.instance: object | None = None

    def __get__(self, obj: object, owner: type | None = None) -> Workflow[Any, R]:
        """A workflow method read from an instance or its class: the registered workflow
        (submit it like any other; a direct call runs it on that instance)."""
        if obj is None or not self.is_method:
            return self
        bound: Workflow[Any, R] = Workflow.__new__(Workflow)
        bound.__dict__.update(self.__dict__)
        bound.instance = obj
        return bound

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError now if the workflow function cannot take these arguments, so
        that a typo fails at submit instead of in a worker."""
        if self._signature is None:
            return
        counts = self._positional
        if counts is not None and not kwargs and counts[0] <= len(args) <= counts[1]:
            return  # plain positional parameters, enough and not too many: binds
        try:
            self._signature.bind(*((None,) if self.is_method else ()), *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"workflow {self.name!r}: {exc}") from None

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function (a method on its bound instance): what a worker runs."""
        if not self.is_method:
            return self.fn(*args, **kwargs)
        if self.instance is None:
            raise ShardflowError(
                f"workflow {self.name!r} is a method: register an instance of its class"
                " with app.bind(instance) in the worker's process"
            )
        return cast(Callable[..., Any], self.fn)(self.instance, *args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self.call(*args, **kwargs))


class App:
    """A set of workflows and steps that workers can run.

    ``version`` names this code: workers record it on every attempt they start
    (``WorkflowStatus.app_version``). None: the app's package version, else a hash of
    its workflow code (:func:`~shardflow.engine.versions.app_version`)."""

    def __init__(self, name: str, version: str | None = None) -> None:
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ValueError("App version must be a non-empty string")
        self.name = name
        self.version = version
        self.workflows: dict[str, Workflow[Any, Any]] = {}

    @overload
    def workflow(self, fn: Callable[P, R]) -> Workflow[P, R]: ...

    @overload
    def workflow(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout_seconds: float | None = None,
        schedule: str | None = None,
    ) -> Callable[[Callable[P, R]], Workflow[P, R]]: ...

    def workflow(
        self,
        fn: Callable[P, R] | None = None,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        timeout_seconds: float | None = None,
        schedule: str | None = None,
    ) -> Workflow[P, R] | Callable[[Callable[P, R]], Workflow[P, R]]:
        """Register a workflow. Its name defaults to ``module.qualname``: renaming or
        moving the function changes it, so set ``name=`` for long-lived workflows.

        ``timeout_seconds`` is the default timeout of each run (submit may override);
        ``schedule`` is a cron expression (5 fields, or 6 with seconds last): workers
        start it once per tick with the tick time (ISO 8601, UTC) as its argument."""
        problem = None if schedule is None else cron_problem(schedule)
        if problem:
            raise ValueError(problem)

        def register(f: Callable[P, R]) -> Workflow[P, R]:
            wf_name = name or f"{f.__module__}.{f.__qualname__}"
            if wf_name in self.workflows and self.workflows[wf_name].fn is not f:
                raise ValueError(f"workflow name {wf_name!r} is registered twice in {self.name}")
            wf = Workflow(f, wf_name, queue, self, timeout_seconds, schedule)
            self.workflows[wf_name] = wf
            return wf

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: Callable[P, R]) -> Step[P, R]: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        max_attempts: int = 1,
        backoff_seconds: float = 1.0,
        backoff_rate: float = 2.0,
        max_backoff_seconds: float = 60.0,
    ) -> Callable[[Callable[P, R]], Step[P, R]]: ...

    def step(
        self,
        fn: Callable[P, R] | None = None,
        *,
        name: str | None = None,
        max_attempts: int = 1,
        backoff_seconds: float = 1.0,
        backoff_rate: float = 2.0,
        max_backoff_seconds: float = 60.0,
    ) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
        """Make a function a checkpointed step, retried up to ``max_attempts`` times."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if backoff_seconds < 0 or backoff_rate < 1:
            raise ValueError("backoff_seconds must be >= 0 and backoff_rate >= 1")
        policy = RetryPolicy(max_attempts, backoff_seconds, backoff_rate, max_backoff_seconds)

        def wrap(f: Callable[P, R]) -> Step[P, R]:
            return Step(f, name or f.__qualname__, policy)

        return wrap(fn) if fn is not None else wrap

    def bind(self, instance: T) -> T:
        """Register ``instance`` as the object the workflow methods of its class (those of
        this app) run on, in this process; returns it. One instance per class and app:
        a second one of the same class replaces the first (a worker binds it at start)."""
        found = False
        for klass in type(instance).__mro__:
            for attr in vars(klass).values():
                if isinstance(attr, Workflow) and attr.is_method:
                    if self.workflows.get(attr.name) is not attr:
                        continue
                    attr.instance = instance
                    found = True
        if not found:
            raise ValueError(
                f"{type(instance).__name__} has no workflow methods registered in {self.name}"
            )
        return instance

    def lookup(self, name: str) -> Workflow[Any, Any]:
        try:
            return self.workflows[name]
        except KeyError:
            raise UnknownWorkflow(f"no workflow named {name!r} in app {self.name!r}") from None


def _positional_counts(
    signature: inspect.Signature | None, is_method: bool
) -> tuple[int, int] | None:
    """(required, all) counts of a signature made only of positional parameters (any
    call with that many positional arguments and no keywords binds), else None."""
    if signature is None:
        return None
    params = list(signature.parameters.values())[1 if is_method else 0 :]
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind not in plain for p in params):
        return None
    required = sum(1 for p in params if p.default is inspect.Parameter.empty)
    return required, len(params)
