import shardflow

app = shardflow.App("orders")


@app.step(max_attempts=3, backoff_seconds=0.5)  # retried with backoff; runs once
def charge(order_id: str) -> dict:
    return {"id": f"rcpt-{order_id}"}


@app.workflow(name="orders.process", queue="default")
def process_order(order_id: str, wait_seconds: float = 2.0) -> str:
    receipt = charge(order_id)  # checkpointed: never runs twice
    shardflow.sleep(wait_seconds)  # durable: survives restarts, holds no thread
    return receipt["id"]
