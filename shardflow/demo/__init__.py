"""The demo: a document pipeline on an embedded 3-shard cluster (``shardflow demo``)."""
