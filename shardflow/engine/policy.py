"""How a failing step is retried: the policy ``@app.step(max_attempts=...)`` builds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits ``backoff * rate**(n-1)``, at most
    ``max_backoff``, times a random factor in [0.5, 1.0]."""

    max_attempts: int = 1
    backoff_seconds: float = 1.0
    backoff_rate: float = 2.0
    max_backoff_seconds: float = 60.0

    def delay(self, failed_attempts: int, jitter: float) -> float:
        raw = self.backoff_seconds * self.backoff_rate ** (failed_attempts - 1)
        return min(raw, self.max_backoff_seconds) * (0.5 + 0.5 * jitter)
