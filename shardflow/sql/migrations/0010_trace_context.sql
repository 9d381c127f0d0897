-- shardflow: online
-- Tracing (docs/operations.md#tracing): the submitter's OpenTelemetry trace context, as
-- the global propagator writes it (W3C `traceparent` / `tracestate`), stored with the
-- workflow at submit and returned by every claim, so that each run attempt (after a
-- recovery on another worker, after a move to another shard) continues the same trace.
-- NULL when the submitter had no active span (tracing off, or the `otel` extra absent).
-- A move copies whole rows, so the column travels with the workflow.
-- ADD COLUMN without a default only changes the catalog (no rewrite); no index.
ALTER TABLE shardflow.workflow_status ADD COLUMN IF NOT EXISTS trace_context jsonb;
