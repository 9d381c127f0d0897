"""The exception tree written in shardflow/errors.py's docstring is the real one: every
exception class defined in the package appears in it, under its real base class, and
nothing else does."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import shardflow
import shardflow.errors

# A tree line: indentation, a branch (none on a root), a class name, its description.
# A line with indentation but no branch continues the description above it.
_NODE = re.compile(r"^(?P<indent>(?:│   |    )*)(?P<branch>[├└]── )?(?P<name>[A-Z]\w*)")


def documented_tree() -> dict[str, str]:
    """``{class name: parent name}`` from the docstring's tree (roots map to "")."""
    doc = shardflow.errors.__doc__ or ""
    block = doc.split("The tree", 1)[1].split("::", 1)[1].split("Where the classes live")[0]
    parents: dict[str, str] = {}
    stack: list[str] = []
    for raw in block.splitlines():
        match = _NODE.match(raw.removeprefix("    "))
        if match is None or (match.group("indent") and not match.group("branch")):
            continue
        depth = len(match.group("indent")) // 4 + (1 if match.group("branch") else 0)
        name = match.group("name")
        assert name not in parents, f"{name} appears twice in the tree"
        del stack[depth:]
        assert len(stack) == depth, f"{name} is indented under nothing"
        parents[name] = stack[-1] if stack else ""
        stack.append(name)
    return parents


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every public exception class defined in a shardflow module, by name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(shardflow.__path__, "shardflow."):
        if info.name.endswith("__main__"):
            continue  # running it is the CLI
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == info.name
                and not name.startswith("_")
            ):
                assert found.get(name, obj) is obj, f"two exception classes named {name}"
                found[name] = obj
    return found


def test_the_docstring_tree_is_the_class_graph() -> None:
    tree = documented_tree()
    classes = defined_exceptions()
    roots = {name for name, parent in tree.items() if not parent}
    assert roots == {"ShardflowError", "Exception", "BaseException"}
    # The same classes...
    assert set(tree) - roots == set(classes) - {"ShardflowError"}
    # ... each under its real base.
    real = {}
    for name, cls in classes.items():
        bases = [b for b in cls.__bases__ if issubclass(b, BaseException)]
        assert len(bases) == 1, f"{name} has several exception bases: {bases}"
        real[name] = bases[0].__name__
    # ShardflowError heads its own tree; it is an Exception.
    assert real.pop("ShardflowError") == "Exception"
    assert {name: tree[name] for name in real} == real


def test_every_error_is_exported_from_errors_or_its_module() -> None:
    # The classes written in errors.py are all in its __all__ (the public import path).
    here = {
        name
        for name, obj in vars(shardflow.errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == "shardflow.errors"
    }
    assert here == set(shardflow.errors.__all__)


def test_user_facing_errors_are_shardflow_errors() -> None:
    from shardflow.engine.serialization import StepFailed
    from shardflow.engine.store_errors import DedupConflict, Fenced, StoreError, TransientStoreError

    for cls in (StepFailed, StoreError, TransientStoreError, DedupConflict, Fenced):
        assert issubclass(cls, shardflow.ShardflowError), cls
    assert Fenced is shardflow.errors.LeaseLost
    error = Fenced("wf-1", "CANCELLED")
    assert (error.workflow_id, error.state) == ("wf-1", "CANCELLED")
    assert "no longer ours" in str(error)
