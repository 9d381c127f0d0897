"""Handles are typed: ``result()`` has the workflow's return type, and a type checker
rejects wrong arguments given through ``with_options(...).submit``. Runs mypy on a
small user program (no database)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

PROGRAM = textwrap.dedent(
    """
    import shardflow

    app = shardflow.App("typed")

    @app.workflow()
    def total(order_id: str, quantity: int = 1) -> int:
        return quantity

    cluster = shardflow.connect("cluster.yaml")
    h1 = cluster.submit(total, "o-1", workflow_id="order-o-1")
    reveal_type(h1)
    reveal_type(h1.result(timeout=1))
    h2 = cluster.with_options(workflow_id="order-o-2", queue="default").submit(total, "o-2", 3)
    reveal_type(h2.result())
    cluster.with_options().submit(total, 42)
    cluster.with_options().submit(total, "o-3", quantity="many")
    cluster.with_options(workflow_idd="x")
    h3 = cluster.submit("typed.total", "o-4")
    reveal_type(h3)
    """
)


def test_handles_carry_the_return_type_and_arguments_are_checked(tmp_path: Path) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(PROGRAM, encoding="utf-8")
    out, _, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(program)]
    )
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if ": " in line]
    assert 'note: Revealed type is "shardflow.engine.handles.WorkflowHandle[int]"' in lines
    assert lines.count('note: Revealed type is "int"') == 2
    assert 'note: Revealed type is "shardflow.engine.handles.WorkflowHandle[Any]"' in lines
    errors = [line for line in lines if line.startswith("error:")]
    assert any(
        'Argument 2 to "submit" of "Submitter" has incompatible type "int"' in e for e in errors
    )
    assert any('Argument "quantity" to "submit" of "Submitter"' in e for e in errors)
    assert any('Unexpected keyword argument "workflow_idd"' in e for e in errors)
    assert len(errors) == 3, out
