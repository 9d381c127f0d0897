"""Workflows under test in test_order_logic.py."""

import shardflow

app = shardflow.App("order-logic")


@app.step()
def price(quantity: int) -> int:
    return 250 * quantity


@app.workflow(name="orders.quote")
def quote(order_id: str, quantity: int) -> dict:
    return {"order_id": order_id, "total": price(quantity)}
