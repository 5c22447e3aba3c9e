"""Counters for GET /metrics, written in Prometheus' text format."""

from __future__ import annotations

import collections
import threading

from ..engine import Engine


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def render(self, engine: Engine | None, ready: bool) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        with self._lock:
            requests = sorted(self.requests.items())
        metric("llamaherd_requests_total", "counter", "HTTP requests by endpoint and status code.",
               [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in requests])
        metric("llamaherd_model_ready", "gauge", "1 once the model is loaded.", [("", float(ready))])
        e = engine
        metric("llamaherd_queue_length", "gauge", "Requests waiting for a batch row.",
               [("", e.queue_length if e else 0)])
        metric("llamaherd_running_sequences", "gauge", "Sequences generating in the batch now.",
               [("", e.running if e else 0)])
        metric("llamaherd_batch_rows", "gauge", "Rows in the batch (--max-batch).", [("", e.max_batch if e else 0)])
        metric("llamaherd_tokens_generated_total", "counter", "Tokens generated.", [("", e.tokens_generated if e else 0)])
        metric("llamaherd_prompt_tokens_total", "counter", "Prompt tokens prefilled.", [("", e.prompt_tokens if e else 0)])
        metric("llamaherd_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.",
               [("", round(e.tokens_per_second(), 3) if e else 0)])
        metric("llamaherd_decode_steps_total", "counter", "Batched decode forwards run.", [("", e.steps if e else 0)])
        finished = sorted(e.requests_finished.items()) if e else []
        metric("llamaherd_sequences_finished_total", "counter", "Sequences finished, by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in finished])
        return "\n".join(lines) + "\n"
