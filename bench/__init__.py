"""Side-by-side benchmarks of shardflow, DBOS Transact, PgQueuer and a raw psycopg ceiling.

Run ``python -m bench`` (or ``shardflow bench``) from a source checkout; see
docs/performance.md for what each row measures and how to read the results.
"""
