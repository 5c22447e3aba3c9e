"""The OpenAI-compatible server, driven over real sockets by the official openai client."""

import asyncio
import concurrent.futures
import threading

import httpx
import openai
import pytest

import llamaherd
from tests.server_util import MODEL_ID, metrics, shared_server, wait_for

PROMPT = "The capital of France is"
# eight prompts of different lengths for the batch test; the first is the one checked above
BATCH_PROMPTS = [
    PROMPT,
    "Once upon a time",
    "List three colours:",
    "def add(a, b):",
    "The quick brown fox jumps over the lazy dog. Then the dog",
    "Water boils at",
    "In 1969, the first people to walk on the Moon were",
    "Question: what is two plus two? Answer:",
]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_path):
    return shared_server(smollm2_path)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return llamaherd.load(smollm2_path)


def test_health_was_503_while_loading_and_is_200_now(server):
    assert server.saw_503_while_loading
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_greedy_completion_equals_llm_generate_and_usage_matches_the_tokenizer(client, llm):
    expected = llm.generate(PROMPT, max_tokens=8, temperature=0)
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=8, temperature=0)
    assert out.choices[0].text == expected
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(llm.encode_prompt(PROMPT))
    assert out.usage.completion_tokens == 8 == len(llm.tokenizer.encode(expected))
    assert out.usage.total_tokens == out.usage.prompt_tokens + 8


def test_greedy_output_is_the_same_inside_a_batch_of_eight(client, server, llm):
    expected = [llm.generate(p, max_tokens=8, temperature=0) for p in BATCH_PROMPTS]
    before = metrics(server.url)
    start = threading.Barrier(len(BATCH_PROMPTS))

    def complete(prompt):
        start.wait()
        return client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=8, temperature=0).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(len(BATCH_PROMPTS)) as pool:
        got = list(pool.map(complete, BATCH_PROMPTS))
    assert got == expected
    after = metrics(server.url)
    tokens = after["llamaherd_tokens_generated_total"] - before["llamaherd_tokens_generated_total"]
    steps = after["llamaherd_decode_steps_total"] - before["llamaherd_decode_steps_total"]
    assert steps < tokens / 2, "the requests were not decoded together"


def test_chat_streaming_and_not_give_the_same_text(client, llm):
    whole = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=8, temperature=0,
                                            stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    expected = "".join(llm.chat(MESSAGES, max_tokens=8, temperature=0))
    assert text == expected
    prompt_tokens = len(llm.tokenizer.encode_chat(MESSAGES))
    assert whole.usage.prompt_tokens == prompt_tokens
    assert chunks[-1].usage.prompt_tokens == prompt_tokens
    # the model may end its answer (EOS) before max_tokens: count what LLM.chat generated
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == llm.last_stats.completion_tokens
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == llm.last_stats.finish_reason


def test_completion_stream_with_usage_chunk(client):
    whole = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=6, temperature=0)
    chunks = list(client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_stop_strings(client, llm):
    full = llm.generate(PROMPT, max_tokens=8, temperature=0)  # " Paris.\n\nThe answer is:"
    stop = "\n"
    assert stop in full
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=8, temperature=0, stop=[stop])
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=8, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < 8


def test_a_seed_gives_identical_outputs_and_n_gives_n_choices(client):
    kwargs = dict(model=MODEL_ID, prompt="My favourite animal is", max_tokens=6, temperature=1.0, seed=42, n=2)
    first, second = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert sorted(c.index for c in first.choices) == [0, 1]
    assert first.usage.completion_tokens == 12
    chat = dict(model=MODEL_ID, messages=MESSAGES, max_tokens=6, temperature=1.0, seed=7)
    a, b = client.chat.completions.create(**chat), client.chat.completions.create(**chat)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_max_tokens_beyond_the_context_is_clamped(client, llm):
    prompt = "word " * 150  # about 150 of the 160 context tokens
    n_prompt = len(llm.encode_prompt(prompt))
    out = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=100_000, temperature=0)
    assert out.usage.prompt_tokens == n_prompt
    assert out.usage.completion_tokens <= 160 - n_prompt
    assert out.choices[0].finish_reason in ("length", "stop")


def test_32_concurrent_streaming_clients_all_complete(server):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=4,
            temperature=0.7, seed=i, stream=True)
        finish = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return finish

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        results = await asyncio.gather(*(one(client, i) for i in range(32)), return_exceptions=True)
        await client.close()
        return results

    results = asyncio.run(main())
    assert all(r in ("length", "stop") for r in results), results
    m = wait_for(lambda: (m := metrics(server.url))["llamaherd_running_sequences"] == 0 and m)
    assert m["llamaherd_queue_length"] == 0


def test_metrics_are_prometheus_text(server):
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    m = metrics(server.url)
    for name in ("llamaherd_queue_length", "llamaherd_running_sequences", "llamaherd_tokens_generated_total",
                 "llamaherd_tokens_per_second"):
        assert name in m
    assert m['llamaherd_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert m["llamaherd_tokens_generated_total"] > 0


def test_presence_and_frequency_penalties_are_applied(client, llm):
    penalties = dict(presence_penalty=1.5, frequency_penalty=1.0)
    plain = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0)
    out = client.completions.create(model=MODEL_ID, prompt=PROMPT, max_tokens=24, temperature=0, **penalties)
    assert out.choices[0].text == llm.generate(PROMPT, max_tokens=24, temperature=0, **penalties)
    assert out.choices[0].text != plain.choices[0].text
