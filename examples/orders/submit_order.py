import os
import sys

import shardflow
from myapp import process_order

order_id = sys.argv[1] if len(sys.argv) > 1 else "o-1"
with shardflow.connect(os.environ.get("SHARDFLOW_CONFIG", "cluster.yaml")) as cluster:
    handle = cluster.submit(process_order, order_id, workflow_id=f"order-{order_id}")
    print(handle.result(timeout=120))  # idempotent: submitting again returns the same
