"""Continuous batching: requests in, token streams out.

One background thread owns the model and a KV cache of `max_batch` rows. Each step it
(1) frees the rows of cancelled requests, (2) admits waiting requests into free rows,
prefilling their prompts (all but the last token) in one padded forward, then (3) runs
ONE decode forward for every active row, each at its own position, new rows feeding their
last prompt token, and samples a token per row with that request's own Sampler.
A request that arrives mid-generation joins at the next step; a finished one leaves the
batch at once, so its row is free for the next arrival.

Tokens reach the caller through a listener (called on the engine thread with each id,
then None at the end) or, without one, by iterating the Request.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from .cache import KVCache
from .generate import Sampler, SamplingParams
from .model import Transformer

PREFILL_CHUNK = 512  # prompt tokens per prefill forward: bounds the attention scores' memory
RATE_WINDOW_S = 10.0  # tokens/s is measured over this trailing window

Listener = Callable[[int | None], None]


class QueueFull(RuntimeError):
    """The engine's waiting queue cannot take the request(s)."""


class ContextTooLong(ValueError):
    """The prompt leaves no room in the engine's context for even one new token."""


@dataclass(eq=False)
class Request:
    """One sequence to generate. `finish_reason` is "stop" (a stop id), "length"
    (max_tokens), "cancelled" or "error" once it is done."""

    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    stop_ids: frozenset[int] = frozenset()
    listener: Listener | None = None

    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: BaseException | None = None
    id: int = field(default_factory=itertools.count().__next__)
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _queue: queue.SimpleQueue | None = None

    def __post_init__(self) -> None:
        if self.listener is None:  # no listener: buffer for iteration
            self._queue = queue.SimpleQueue()
            self.listener = self._queue.put

    def cancel(self) -> None:
        """Ask the engine to drop this request; its row is freed at the start of the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def __iter__(self) -> Iterator[int]:
        """The generated ids, as they come (only for requests submitted without a listener)."""
        if self._queue is None:
            raise RuntimeError("this request delivers its tokens to a listener")
        while (token := self._queue.get()) is not None:
            yield token
        if self.error is not None:
            raise RuntimeError(f"generation failed: {self.error}") from self.error


@dataclass
class _Slot:
    """A request in a cache row, with what the next decode step needs."""

    request: Request
    sampler: Sampler
    history: list[int]  # prompt + generated ids; the last one is fed next

    @property
    def next_position(self) -> int:
        return len(self.history) - 1


class Engine:
    def __init__(
        self,
        model: Transformer,
        max_batch: int = 8,
        max_queue: int = 64,
        context_length: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.context_length = min(context_length or model.config.max_seq_len, model.config.max_seq_len)
        weight = model.tok_embeddings.weight
        self.device = weight.device
        self.cache = KVCache(model.config, max_batch, self.context_length, dtype=weight.dtype, device=weight.device)
        self._slots: list[_Slot | None] = [None] * max_batch
        self._waiting: collections.deque[Request] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # counters for /metrics
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self.requests_finished: collections.Counter[str] = collections.Counter()
        self.steps = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llamaherd-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Finish every request as cancelled and end the engine thread."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- submitting -----------------------------------------------------------------

    def room_for(self, prompt_len: int) -> int:
        """How many new tokens fit after a prompt of prompt_len tokens (<= 0: none)."""
        return self.context_length - prompt_len

    def submit(self, *requests: Request) -> None:
        """Queue requests (all or none). Raises ContextTooLong, QueueFull, ValueError."""
        for r in requests:
            if not r.prompt_ids:
                raise ValueError("the prompt is empty: give at least one token (e.g. BOS)")
            vocab = self.model.config.vocab_size
            if any(not 0 <= int(i) < vocab for i in r.prompt_ids):
                raise ValueError(f"prompt token ids must lie in [0, {vocab})")
            if self.room_for(len(r.prompt_ids)) < 1:
                raise ContextTooLong(
                    f"the prompt has {len(r.prompt_ids)} tokens; the context is {self.context_length} tokens")
            if r.max_tokens < 0:
                raise ValueError(f"max_tokens must be >= 0, got {r.max_tokens}")
            r.max_tokens = min(r.max_tokens, self.room_for(len(r.prompt_ids)))  # clamp to what fits
        with self._wakeup:
            if self._stopping:
                raise RuntimeError("the engine is stopped")
            free_rows = self._slots.count(None)
            if len(self._waiting) + len(requests) > self.max_queue + free_rows:
                raise QueueFull(f"the queue is full ({self.max_queue} waiting requests)")
            self._waiting.extend(requests)
            self._wakeup.notify_all()

    # ---- state for /metrics ---------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(s is not None for s in self._slots)

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S seconds."""
        now = time.monotonic()
        recent = [n for t, n in list(self._recent) if now - t <= RATE_WINDOW_S]
        return sum(recent) / RATE_WINDOW_S

    # ---- the engine thread ----------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while not self._stopping and not self._waiting and self.running == 0:
                        self._wakeup.wait()
                    if self._stopping:
                        break
                self._retire_cancelled()
                self._admit_waiting()
                if self.running:
                    self._decode_step()
        for i, slot in enumerate(self._slots):
            if slot is not None:
                self._finish(i, "cancelled")
        with self._wakeup:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for r in waiting:
            self._end(r, "cancelled")

    def _retire_cancelled(self) -> None:
        for i, slot in enumerate(self._slots):
            if slot is not None and slot.request.cancelled:
                self._finish(i, "cancelled")

    def _admit_waiting(self) -> None:
        """Put waiting requests into free rows and prefill them together; they join this step's decode."""
        admitted = []
        while None in self._slots:
            with self._wakeup:
                if not self._waiting:
                    break
                request = self._waiting.popleft()
            if request.cancelled:
                self._end(request, "cancelled")
                continue
            row = self._slots.index(None)
            self._slots[row] = _Slot(request, Sampler(request.params), list(request.prompt_ids))
            self.prompt_tokens += len(request.prompt_ids)
            if request.max_tokens == 0:
                self._finish(row, "length")
            else:
                admitted.append(row)
        if not admitted:
            return
        try:
            self._prefill(admitted)
        except Exception as e:  # a failure here is these requests' alone
            for row in admitted:
                self._slots[row].request.error = e
                self._finish(row, "error")

    def _prefill(self, rows: list[int]) -> None:
        """Store all but the last prompt token of each row in the cache, in one padded forward
        per chunk. The last token is fed by the decode step, whose logits give the first new token."""
        prompts = [(row, self._slots[row].history[:-1]) for row in rows]
        prompts = [(row, ids) for row, ids in prompts if ids]
        longest = max((len(ids) for _, ids in prompts), default=0)
        for start in range(0, longest, PREFILL_CHUNK):
            part = [(row, ids[start : start + PREFILL_CHUNK]) for row, ids in prompts if len(ids) > start]
            width = max(len(ids) for _, ids in part)
            # Padding lands in slots after a row's prompt; they are overwritten before anything attends to them.
            tokens = torch.tensor([ids + [0] * (width - len(ids)) for _, ids in part], device=self.device)
            positions = torch.arange(start, start + width, device=self.device).expand(len(part), width)
            rows_t = torch.tensor([row for row, _ in part], device=self.device)
            self.model(tokens, positions, self.cache, rows=rows_t, last_only=True)

    def _decode_step(self) -> None:
        active = [i for i, s in enumerate(self._slots) if s is not None]
        slots = [self._slots[i] for i in active]
        tokens = torch.tensor([[s.history[-1]] for s in slots], device=self.device)
        positions = torch.tensor([[s.next_position] for s in slots], device=self.device)
        # rows 0..B-1 in order let the cache slice instead of gather
        rows = None if active == list(range(len(active))) else torch.tensor(active, device=self.device)
        try:
            logits = self.model(tokens, positions, self.cache, rows=rows, last_only=True)
        except Exception as e:  # should not happen; fail these requests rather than the thread
            for i, slot in zip(active, slots):
                slot.request.error = e
                self._finish(i, "error")
            return
        self.steps += 1
        for b, (i, slot) in enumerate(zip(active, slots)):
            self._accept(i, slot, logits[b, -1])

    def _accept(self, row: int, slot: _Slot, logits: torch.Tensor) -> None:
        """Sample the next token for a row and hand it out, or finish the row."""
        request = slot.request
        token = slot.sampler(logits, slot.history)
        if token in request.stop_ids:
            self._finish(row, "stop")
            return
        slot.history.append(token)
        request.output_ids.append(token)
        self.tokens_generated += 1
        self._recent.append((time.monotonic(), 1))
        while self._recent and time.monotonic() - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        if not self._deliver(request, token):
            self._finish(row, "cancelled")
        elif len(request.output_ids) >= request.max_tokens:
            self._finish(row, "length")

    def _deliver(self, request: Request, token: int | None) -> bool:
        try:
            request.listener(token)
            return True
        except Exception:  # a listener that fails (e.g. its event loop closed) cancels its request
            request.cancel()
            return False

    def _finish(self, row: int, reason: str) -> None:
        slot = self._slots[row]
        self._slots[row] = None
        self._end(slot.request, reason)

    def _end(self, request: Request, reason: str) -> None:
        request.finish_reason = reason
        self.requests_finished[reason] += 1
        request._done.set()
        self._deliver(request, None)


def generate_batch(
    engine: Engine, prompts: Iterable[list[int]], max_tokens: int, params: SamplingParams, stop_ids: Iterable[int] = ()
) -> list[list[int]]:
    """Generate for several prompts at once through the engine; the ids for each, in order."""
    requests = [Request(list(p), params, max_tokens, frozenset(stop_ids)) for p in prompts]
    engine.submit(*requests)
    return [list(r) for r in requests]
