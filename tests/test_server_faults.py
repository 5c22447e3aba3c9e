"""Bad requests, vanishing clients, a full queue and wrong keys: 4xx in OpenAI's shape, and the
server keeps serving."""

import json
import shutil
import subprocess
import sys

import httpx
import openai
import pytest

from tests.server_util import MODEL_ID, SHARED_CONTEXT, ServerProcess, is_openai_error, metrics, shared_server, wait_for

GOOD_COMPLETION = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
GOOD_CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
LONG_PROMPT = "word " * (SHARED_CONTEXT + 20)
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def server(smollm2_path):
    return shared_server(smollm2_path)


@pytest.fixture(scope="module")
def small_server(smollm2_path):
    """One row, one queue place, and an API key."""
    s = ServerProcess(smollm2_path, "--max-batch", "1", "--max-queue", "1", "--ctx-size", "128", "--api-key", KEY)
    yield s.wait_ready()
    s.stop()


def malformed_requests() -> list[tuple[str, bytes | str, str]]:
    """(endpoint, raw body, content type) for 100 requests that must all get a 4xx."""
    cases: list[tuple[str, bytes | str, str]] = []
    json_type = "application/json"
    bad_json = ["", "{", "}", "[", "nul", "{'model': 'x'}", '{"model": }', '{"prompt": "a",}', "not json at all",
                '{"model": "' + MODEL_ID + '", "prompt": "a"', "[1, 2, 3]", "null", "42", '"a string"', "true"]
    for endpoint in ("/v1/completions", "/v1/chat/completions"):
        cases += [(endpoint, body, json_type) for body in bad_json]
    bad_fields = {
        "model": [None, 5, [], {}, "no-such-model", ""],
        "max_tokens": [-1, -100, "10", 1.5, 10**20, 2**63, True],
        "temperature": [-0.5, 3, "hot", None if False else [], 1e400],
        "top_p": [-0.1, 1.5, "x"],
        "n": [0, -1, 10**6, "2"],
        "stop": [5, [1, 2], ["a", "b", "c", "d", "e"]],
        "seed": ["1", 1.5, 2**80],
        "stream": ["yes", 1],
        "logprobs": [5],
        "stream_options": ["x"],
    }
    for field, values in bad_fields.items():
        for value in values:
            cases.append(("/v1/completions", json.dumps({**GOOD_COMPLETION, field: value}), json_type))
    for prompt in [None, 5, [], [-1], [10**9], [[]], "", [1.5], {"a": 1}, LONG_PROMPT]:
        cases.append(("/v1/completions", json.dumps({**GOOD_COMPLETION, "prompt": prompt}), json_type))
    for missing in ("model", "prompt"):
        cases.append(("/v1/completions", json.dumps({k: v for k, v in GOOD_COMPLETION.items() if k != missing}),
                      json_type))
    for missing in ("model", "messages"):
        cases.append(("/v1/chat/completions", json.dumps({k: v for k, v in GOOD_CHAT.items() if k != missing}),
                      json_type))
    for messages in [None, [], "hi", [{"role": "user"}], [{"content": "hi"}], [{"role": "wizard", "content": "hi"}],
                     [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image_url"}]}],
                     [{"role": "user", "content": "word " * (SHARED_CONTEXT + 20)}]]:
        cases.append(("/v1/chat/completions", json.dumps({**GOOD_CHAT, "messages": messages}), json_type))
    for field, value in [("max_tokens", 0), ("max_tokens", -5), ("max_completion_tokens", 10**30),
                         ("response_format", {"type": "json_object"})]:
        cases.append(("/v1/chat/completions", json.dumps({**GOOD_CHAT, field: value}), json_type))
    # invalid UTF-8 in the body, and a lone surrogate escaped in valid JSON
    cases.append(("/v1/completions", b'{"model": "' + MODEL_ID.encode() + b'", "prompt": "\xff\xfe bad"}', json_type))
    cases.append(("/v1/chat/completions", b'{"model": "x", "messages": [{"role": "user", "content": "\xc3"}]}',
                  json_type))
    cases.append(("/v1/completions", '{"model": "' + MODEL_ID + '", "prompt": "\\ud800"}', json_type))
    cases.append(("/v1/chat/completions",
                  '{"model": "' + MODEL_ID + '", "messages": [{"role": "user", "content": "a\\udfff"}]}', json_type))
    cases.append(("/v1/completions", json.dumps(GOOD_COMPLETION), "text/plain"))
    cases.append(("/v1/nothing-here", json.dumps(GOOD_COMPLETION), json_type))
    cases.append(("/v1/models/no-such-model", "", json_type))
    cases.append(("/v1/completions", "[" * 100_000 + "]" * 100_000, json_type))
    return cases


def test_100_malformed_requests_get_4xx_in_the_openai_shape(server):
    cases = malformed_requests()
    assert len(cases) >= 100
    failures = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for endpoint, body, content_type in cases:
            if endpoint.startswith("/v1/models/"):
                response = http.get(endpoint)
            else:
                response = http.post(endpoint, content=body, headers={"content-type": content_type})
            if not (400 <= response.status_code < 500 and is_openai_error(response)):
                failures.append((endpoint, str(body)[:80], response.status_code, response.text[:200]))
        assert not failures, failures
        # still serving
        assert http.post("/v1/completions", json=GOOD_COMPLETION).status_code == 200
    over_long = httpx.post(f"{server.url}/v1/completions", json={**GOOD_COMPLETION, "prompt": LONG_PROMPT}).json()
    assert over_long["error"]["code"] == "context_length_exceeded"
    unknown = httpx.post(f"{server.url}/v1/completions", json={**GOOD_COMPLETION, "model": "gpt-4"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_the_openai_client_sees_bad_requests_as_errors_without_retrying(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": LONG_PROMPT}])
    assert e.value.code == "context_length_exceeded"


def test_clients_that_disconnect_mid_stream_leave_no_sequence_behind(server):
    before = metrics(server.url)
    streams = []
    for i in range(4):
        client = httpx.Client(base_url=server.url, timeout=60)
        response = client.send(client.build_request("POST", "/v1/completions", json={
            **GOOD_COMPLETION, "prompt": f"{i}, {i + 1}, {i + 2},", "max_tokens": 120, "stream": True}), stream=True)
        lines = response.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        streams.append((client, response, lines))  # dropping `lines` would close the connection
    assert metrics(server.url)["llamaherd_running_sequences"] == 4
    for client, response, _ in streams:
        response.close()
        client.close()
    steps_at_close = metrics(server.url)["llamaherd_decode_steps_total"]
    after = wait_for(lambda: (m := metrics(server.url))["llamaherd_running_sequences"] == 0 and m, timeout=30)
    assert after["llamaherd_decode_steps_total"] - steps_at_close <= 3  # freed within a step or so of noticing
    assert after["llamaherd_tokens_generated_total"] - before["llamaherd_tokens_generated_total"] < 4 * 120
    assert after['llamaherd_sequences_finished_total{reason="cancelled"}'] >= 4


def test_a_full_queue_gives_429_and_keys_are_checked(small_server):
    url, auth = small_server.url, {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert is_openai_error(httpx.get(f"{url}/v1/models"))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{url}/health").status_code == 200  # health and metrics stay open

    body = {**GOOD_COMPLETION, "max_tokens": 100, "stream": True}
    with httpx.Client(base_url=url, timeout=60, headers=auth) as a, httpx.Client(base_url=url, timeout=60,
                                                                                headers=auth) as b:
        running = a.send(a.build_request("POST", "/v1/completions", json=body), stream=True)
        running_lines = running.iter_lines()  # kept: dropping it would close the connection
        next(running_lines)  # generating: the one row is taken
        waiting = b.send(b.build_request("POST", "/v1/completions", json=body), stream=True)
        wait_for(lambda: metrics(url)["llamaherd_queue_length"] == 1)
        refused = httpx.post(f"{url}/v1/completions", json=GOOD_COMPLETION, headers=auth)
        assert refused.status_code == 429 and is_openai_error(refused)
        running.close()
        waiting.close()
    wait_for(lambda: (m := metrics(url))["llamaherd_running_sequences"] == 0 and m["llamaherd_queue_length"] == 0)
    ok = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0).completions.create(**GOOD_COMPLETION)
    assert ok.usage.completion_tokens <= 2


@pytest.mark.skipif(shutil.which("st") is None and not shutil.os.path.exists(sys.prefix + "/bin/st"),
                    reason="schemathesis is not installed")
def test_schemathesis_finds_no_server_errors(smollm2_path, tmp_path):
    # A server with a tiny context keeps each generated example to a few tokens.
    s = ServerProcess(smollm2_path, "--max-batch", "8", "--ctx-size", "24").wait_ready()
    try:
        st = shutil.which("st") or sys.prefix + "/bin/st"
        result = subprocess.run(
            [st, "run", f"{s.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
             "--phases", "examples,coverage,fuzzing", "--seed", "1", "--workers", "1", "--no-shrink",
             "--request-timeout", "60", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert httpx.get(f"{s.url}/health").status_code == 200
    finally:
        s.stop()
