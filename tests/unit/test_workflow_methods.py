"""Workflow and step methods: what binding an instance does, without a database."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

import shardflow
from shardflow.engine.app import Workflow
from shardflow.errors import ShardflowError

app = shardflow.App("methods")


class Pricing:
    def __init__(self, rate: int) -> None:
        self.rate = rate

    @app.step(name="pricing.price")
    def price(self, units: int) -> int:
        return units * self.rate

    @app.workflow(name="pricing.quote")
    def quote(self, units: int, *, discount: int = 0) -> int:
        return self.price(units) - discount


def test_a_method_workflow_is_the_registered_workflow_from_class_and_instance() -> None:
    registered = app.lookup("pricing.quote")
    assert Pricing.quote is registered
    bound = Pricing(3).quote
    assert bound.name == registered.name and bound.is_method
    # Arguments are checked without ``self`` (it is never submitted).
    registered.check_arguments((2,), {"discount": 1})
    with pytest.raises(TypeError, match=r"pricing\.quote"):
        registered.check_arguments((2, 3), {})


def test_a_direct_call_runs_on_its_instance_and_the_worker_on_the_bound_one() -> None:
    assert Pricing(3).quote(2, discount=1) == 5
    assert Pricing(3).price(4) == 12
    app.lookup("pricing.quote").instance = None  # nothing bound yet in this process
    with pytest.raises(ShardflowError, match=r"app\.bind"):
        app.lookup("pricing.quote").call(2)
    bound = app.bind(Pricing(10))
    assert app.lookup("pricing.quote").call(2) == 20
    app.bind(Pricing(5))  # a second instance replaces the first
    assert app.lookup("pricing.quote").call(2) == 10
    assert bound.rate == 10


def test_binding_an_object_without_workflow_methods_fails() -> None:
    with pytest.raises(ValueError, match="no workflow methods"):
        app.bind(object())


checks = shardflow.App("checks")


def _plain(a: int, b: int, c: int = 0) -> None: ...


def _posonly(a: int, /, b: int = 1) -> None: ...


def _star(a: int, *rest: int) -> None: ...


def _keyword(a: int, *, k: int) -> None: ...


def _kwargs(a: int, **more: int) -> None: ...


class _Holder:
    def method(self, a: int, b: int = 2) -> None: ...


@pytest.mark.parametrize(
    "fn", [_plain, _posonly, _star, _keyword, _kwargs, _Holder.method], ids=lambda f: f.__name__
)
def test_argument_checks_agree_with_python_binding(fn: Callable[..., None]) -> None:
    """Whatever path the check takes (a count for plain positional parameters, a full
    bind otherwise), it refuses exactly what calling the function would refuse."""
    wf: Workflow[..., None] = checks.workflow(name=f"checks.{fn.__name__}")(fn)
    signature = inspect.signature(fn)
    calls: list[tuple[tuple[int, ...], dict[str, int]]] = [
        (args, kwargs)
        for n in range(5)
        for args in [tuple(range(n))]
        for kwargs in [{}, {"b": 1}, {"k": 1}, {"a": 1}, {"zzz": 1}]
    ]
    for args, kwargs in calls:
        prefix = (None,) if wf.is_method else ()
        try:
            signature.bind(*prefix, *args, **kwargs)
            binds = True
        except TypeError:
            binds = False
        if binds:
            wf.check_arguments(args, kwargs)
        else:
            with pytest.raises(TypeError, match=rf"checks\.{fn.__name__}"):
                wf.check_arguments(args, kwargs)
