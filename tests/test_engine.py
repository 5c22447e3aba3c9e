"""The continuous-batching engine against the single-sequence generation loop (SmolLM2)."""

import threading
import time

import pytest
import torch

import llamaherd
from llamaherd.cache import KVCache
from llamaherd.engine import ContextTooLong, Engine, QueueFull, Request, generate_batch
from llamaherd.generate import SamplingParams, generate_tokens

GREEDY = SamplingParams(temperature=0)
# eight prompts of different lengths (as token ids, so the tokenizer is not under test here)
PROMPTS = [[1] + list(range(100 + 37 * i, 100 + 37 * i + 3 + 4 * i)) for i in range(8)]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return llamaherd.load(smollm2_path)


@pytest.fixture(scope="module")
def engine(llm):
    with Engine(llm.model, max_batch=8, max_queue=8, context_length=256) as e:
        yield e


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def test_batched_decode_logits_pick_the_same_argmax_as_single_runs(llm):
    """Rows at different positions in one decode forward give their single-run logits."""
    model = llm.model
    singles = []
    with torch.inference_mode():
        for ids in PROMPTS:
            cache = KVCache(model.config, 1, 64)
            model(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1).unsqueeze(0), cache)
            singles.append(model(torch.tensor([[ids[-1]]]), torch.tensor([[len(ids) - 1]]), cache)[0, -1])
        cache = KVCache(model.config, 8, 64)
        # prefill all rows in one right-padded forward, as the engine does
        width = max(len(p) for p in PROMPTS) - 1
        padded = torch.tensor([p[:-1] + [0] * (width - len(p) + 1) for p in PROMPTS])
        model(padded, torch.arange(width).expand(8, width), cache, last_only=True)
        batched = model(torch.tensor([[p[-1]] for p in PROMPTS]), torch.tensor([[len(p) - 1] for p in PROMPTS]), cache)
    for row, single in enumerate(singles):
        assert int(batched[row, -1].argmax()) == int(single.argmax())
        assert (batched[row, -1] - single).abs().max().item() < 1e-3


def test_greedy_batch_equals_single_generation(llm, engine):
    expected = [list(generate_tokens(llm.model, p, 4, GREEDY)) for p in PROMPTS]
    assert generate_batch(engine, PROMPTS, 4, GREEDY) == expected


def test_seeded_sampling_is_independent_of_the_batch(engine):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    alone = generate_batch(engine, PROMPTS[:1], 6, params)[0]
    together = generate_batch(engine, PROMPTS, 6, params)
    assert together[0] == alone
    assert all(len(t) == 6 for t in together)


def test_a_new_request_joins_the_running_batch(engine):
    steps_seen = {}
    long = Request(PROMPTS[0], GREEDY, 20)
    engine.submit(long)
    wait_until(lambda: len(long.output_ids) >= 3)
    late = Request(PROMPTS[1], GREEDY, 3, listener=lambda t: steps_seen.setdefault("late", len(long.output_ids)))
    engine.submit(late)
    late.wait(60)
    # the late request produced its first token while the long one was still generating
    assert steps_seen["late"] < 20
    assert late.finish_reason == "length" and len(late.output_ids) == 3
    assert not long.done or len(long.output_ids) > steps_seen["late"]
    list(long)
    assert long.finish_reason == "length"


def test_finished_rows_leave_at_once_and_a_waiting_request_takes_the_row(llm):
    with Engine(llm.model, max_batch=1, max_queue=4, context_length=64) as engine:
        first, second = Request(PROMPTS[0], GREEDY, 4), Request(PROMPTS[1], GREEDY, 4)
        engine.submit(first, second)
        assert list(first) and list(second)
        assert engine.running == 0 and engine.queue_length == 0
        assert second.finish_reason == "length"


def test_cancel_frees_the_row_within_one_decode_step(engine):
    request = Request(PROMPTS[2], GREEDY, 200)
    engine.submit(request)
    wait_until(lambda: len(request.output_ids) >= 2)
    steps_at_cancel = engine.steps
    request.cancel()
    assert request.wait(30)
    assert request.finish_reason == "cancelled"
    assert engine.steps - steps_at_cancel <= 1
    wait_until(lambda: engine.running == 0)


def test_stop_ids_end_the_sequence_without_being_emitted(llm, engine):
    first = generate_batch(engine, PROMPTS[:1], 4, GREEDY)[0]
    request = Request(PROMPTS[0], GREEDY, 4, stop_ids=frozenset({first[2]}))
    engine.submit(request)
    assert list(request) == first[:2]
    assert request.finish_reason == "stop"


def test_limits(llm, engine):
    with pytest.raises(ContextTooLong):
        engine.submit(Request([1] * 256, GREEDY, 4))
    clamped = Request([1] * 250, GREEDY, 10_000)
    engine.submit(clamped)
    assert len(list(clamped)) == 6 and clamped.max_tokens == 6
    with pytest.raises(ValueError):
        engine.submit(Request([], GREEDY, 4))
    with pytest.raises(ValueError):
        engine.submit(Request([llm.config.vocab_size], GREEDY, 4))
    with Engine(llm.model, max_batch=1, max_queue=1, context_length=64) as small:
        gate = threading.Event()
        running = Request(PROMPTS[0], GREEDY, 50, listener=lambda t: gate.wait(30))
        small.submit(running)
        small.submit(Request(PROMPTS[1], GREEDY, 2))
        with pytest.raises(QueueFull):
            small.submit(Request(PROMPTS[2], GREEDY, 2))
        running.cancel()
        gate.set()
