"""One workflow, ``shop.order``, in the releases of an upgrade (tests/integration/
test_upgrades.py): each release is its own App registering the same workflow name, as a
deploy swaps the code under running workflows.

- ``v1``: charge, wait for an approval message, ship;
- ``v2``: the charge changed, behind ``shardflow.patched("charge-v2")``;
- ``v3``: the clean-up release, ``shardflow.deprecate_patch("charge-v2")``;
- ``broken``: the same change without a patch (replay-check must flag it);
- ``compatible``: a change after the wait point only (replays every v1 history).
"""

from __future__ import annotations

from typing import Any

import shardflow

NAME = "shop.order"

v1 = shardflow.App("shop", version="1")
v2 = shardflow.App("shop", version="2")
v3 = shardflow.App("shop", version="3")
broken = shardflow.App("shop", version="broken")
compatible = shardflow.App("shop", version="compatible")


@v1.step(name="charge")
def charge(order: str) -> str:
    return f"old:{order}"


@v1.step(name="charge_v2")
def charge_v2(order: str) -> str:
    return f"new:{order}"


@v1.step(name="ship")
def ship(order: str) -> str:
    return f"shipped:{order}"


def _rest(order: str, paid: str) -> dict[str, Any]:
    approval = shardflow.recv("approve", timeout=None)
    return {"paid": paid, "approval": approval, "shipped": ship(order)}


@v1.workflow(name=NAME)
def order_v1(order: str) -> dict[str, Any]:
    return _rest(order, charge(order))


@v2.workflow(name=NAME)
def order_v2(order: str) -> dict[str, Any]:
    paid = charge_v2(order) if shardflow.patched("charge-v2") else charge(order)
    return _rest(order, paid)


@v3.workflow(name=NAME)
def order_v3(order: str) -> dict[str, Any]:
    shardflow.deprecate_patch("charge-v2")
    return _rest(order, charge_v2(order))


@broken.workflow(name=NAME)
def order_broken(order: str) -> dict[str, Any]:
    return _rest(order, charge_v2(order))


@compatible.workflow(name=NAME)
def order_compatible(order: str) -> dict[str, Any]:
    result = _rest(order, charge(order))
    result["note"] = "logged"  # not a step: replay is unaffected
    return result
