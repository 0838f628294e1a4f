"""python -m llm.serve as its users meet it: a live server on loopback, the official OpenAI client,
concurrent streams, bad requests, a client that leaves mid-stream, and the page in a real Chromium."""

import json
import shutil
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import httpx
import pytest
import torch

from llm.bench.serve import running_server
from llm.inference.engine import Engine
from llm.inference.reply_text import ReplyText, readable
from llm.config.derived import ModelShape
from llm.model import attention
from llm.model.kv_cache import KVCache
from llm.serve.app import build_app
from llm.serve.scheduler import Pool, Replica, Sampling
from llm.train.load import load_model
from tests.conftest import REPO, TINY_RUN
from tests.engine_fakes import byte_tokenizer

ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory, llm_home) -> Path:
    """A tiny model with a 512-token context, so that a stream can outlast a client that leaves."""
    from llm.config import compose_run
    from llm.train.loop import train

    run = tmp_path_factory.mktemp("serve") / "run"
    train(compose_run([*TINY_RUN, "model.sequence_len=512", "train.device_batch_size=1",
                       "budget.num_iterations=40", "eval.every=0"]), run)
    return run


@pytest.fixture(scope="module")
def url(serve_run):
    with running_server(serve_run, device="cpu") as address:
        yield address


def greedy_reply(run: Path, message: str, max_tokens: int) -> str:
    """The reply the engine itself gives, outside any server: the readable text of a greedy stream."""
    attention.set_backend("sdpa")
    model, tokenizer, _ = load_model(run)
    prompt = tokenizer.render_conversation({"messages": [{"role": "user", "content": message}]})[0]
    engine, text, shown = Engine(model, tokenizer), ReplyText(tokenizer), []
    for column, _ in engine.generate(prompt + [tokenizer.encode_special("<|assistant_start|>")],
                                     max_tokens=max_tokens, temperature=0.0):
        if column[0] in engine.stop_tokens:
            break
        shown.append(readable(text.add(column[0])))
    return "".join(shown) + readable(text.finish())


def stream_native(url: str, message: str, max_tokens: int, client: httpx.Client | None = None) -> tuple[str, dict]:
    """(text, final event) of the reference's streaming route at temperature 0."""
    body = {"messages": [{"role": "user", "content": message}], "temperature": 0, "max_tokens": max_tokens}
    pieces = []
    with (client or httpx).stream("POST", f"{url}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "token" in event:
                    pieces.append(event["token"])
                else:
                    return "".join(pieces), event
    raise AssertionError("the stream ended without a done event")


def test_openai_client_streamed_and_not(url, serve_run):
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    [model] = client.models.list().data
    assert model.id == serve_run.name
    expected = greedy_reply(serve_run, "hello there", max_tokens=12)
    whole = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "hello there"}],
                                           max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == expected and expected
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
    streamed = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "hello there"}],
                                              max_tokens=12, temperature=0, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    # n choices, each with its own seed; a stop string cuts the text before it.
    sampled = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "hi"}], n=3,
                                             max_tokens=6, temperature=1.0, seed=7, extra_body={"top_k": 20})
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    again = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "hi"}], n=3,
                                           max_tokens=6, temperature=1.0, seed=7, extra_body={"top_k": 20})
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]
    # A nucleus this small holds only the most likely token: sampling at temperature 1 is then greedy.
    nucleus = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "hello there"}],
                                             max_tokens=12, temperature=1.0, top_p=1e-6, seed=3)
    assert nucleus.choices[0].message.content == expected
    stop = expected[3:5]
    cut = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "hello there"}],
                                         max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == expected[:expected.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_greedy_streams_equal_each_alone(url):
    prompts = [f"question {i}: what is {i} plus {i * 3}?" for i in range(32)]
    alone = {prompt: stream_native(url, prompt, max_tokens=24)[0] for prompt in prompts}
    before = httpx.get(f"{url}/stats").json()
    together, errors = {}, []

    def ask(prompt):
        try:
            together[prompt] = stream_native(url, prompt, max_tokens=24)[0]
        except Exception as error:  # reported below: a thread's assert would be lost
            errors.append(error)

    threads = [threading.Thread(target=ask, args=(prompt,)) for prompt in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert together == alone
    after = httpx.get(f"{url}/stats").json()
    steps = after["replicas"][0]["decode_steps"] - before["replicas"][0]["decode_steps"]
    tokens = after["tokens_generated"] - before["tokens_generated"]
    # Shared steps: one forward advanced many streams (alone it would be about one step per token).
    assert tokens >= 32 and steps < tokens / 4, (steps, tokens)


LONG = "x" * 8001
TOO_LONG_IN_TOTAL = [{"role": "user" if i % 2 == 0 else "assistant", "content": "y" * 7000} for i in range(5)]


@pytest.mark.parametrize("body, named", [
    ({"messages": [{"role": "user", "content": "hi"}] * 501}, "500 messages"),
    ({"messages": [{"role": "user", "content": LONG}]}, "8000 characters per message"),
    ({"messages": TOO_LONG_IN_TOTAL}, "32000 characters per conversation"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 2.5}, "temperature must be between 0.0 and 2.0"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_k": 0}, "top_k must be between 1 and 200"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4097}, "max_tokens must be between 1 and 4096"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 9}, "n must be between 1 and 8"),
    ({"messages": []}, "messages is empty"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     "must end with a user message"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "the model's context is 512"),
    ({"messages": "hello"}, "malformed request: messages"),
])
def test_bad_requests_are_refused_naming_the_limit(url, body, named):
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and named in response.json()["error"]["message"], response.text
    if "n" not in body:  # the reference's route applies the same checks
        native = httpx.post(f"{url}/chat/completions", json=body, timeout=30)
        assert native.status_code == 400 and named in native.json()["error"]["message"]


def test_malformed_json_is_refused_and_the_server_stays_up(url):
    response = httpx.post(f"{url}/v1/chat/completions", content=b'{"messages": [', timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    assert stream_native(url, "still there?", max_tokens=4)[1]["done"] is True


def test_a_client_leaving_mid_stream_frees_its_row(serve_run):
    with running_server(serve_run, "--rows", "1", device="cpu") as address:
        body = {"messages": [{"role": "user", "content": "tell me everything"}], "temperature": 0, "max_tokens": 4000}
        with httpx.stream("POST", f"{address}/chat/completions", json=body, timeout=60) as response:
            for number, _ in enumerate(response.iter_lines()):
                if number == 6:
                    break  # leaving the block closes the connection mid-stream
        for _ in range(100):
            stats = httpx.get(f"{address}/stats").json()
            if stats["requests_cancelled"] == 1:
                break
            time.sleep(0.05)
        assert stats["requests_cancelled"] == 1 and stats["active"] == 0, stats
        assert stats["tokens_generated"] < 400  # it stopped well before its 4000 tokens or the context
        # The one row is free again: the next request is served, not queued behind the abandoned one.
        text, done = stream_native(address, "and now?", max_tokens=5)
        assert done["done"] and done["usage"]["completion_tokens"] >= 1
        assert httpx.get(f"{address}/stats").json()["requests_finished"] == 1


@pytest.mark.skipif(not shutil.which("chromedriver"), reason="needs chromium and chromium-driver (see .ci/run)")
def test_the_page_streams_a_reply_in_chromium(url, serve_run):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        temperature = driver.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        driver.find_element(By.ID, "input").send_keys("hello there")
        driver.find_element(By.ID, "send").click()
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant")
                   and not d.find_elements(By.CSS_SELECTOR, ".streaming"))
        reply = driver.find_element(By.CSS_SELECTOR, ".message.assistant .body").text
        expected, _ = stream_native(url, "hello there", max_tokens=512)
        assert reply.strip() == expected.strip() and reply.strip()
        assert "hello there" in driver.find_element(By.ID, "messages").text
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-ui.png"))
        # Regenerating at temperature 0 gives the same reply again; a new conversation clears the page.
        driver.find_element(By.XPATH, "//div[contains(@class,'assistant')]//button[text()='Regenerate']").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".streaming"))
        assert driver.find_element(By.CSS_SELECTOR, ".message.assistant .body").text.strip() == reply.strip()
        # An error is shown, not swallowed: top-k outside the server's range.
        top_k = driver.find_element(By.ID, "top-k")
        top_k.clear()
        top_k.send_keys("500")
        driver.find_element(By.ID, "input").send_keys("again")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "top_k must be between 1 and 200" in driver.find_element(By.ID, "error").text
        driver.find_element(By.ID, "new-chat").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".message") == []
    finally:
        driver.quit()


def test_serve_benchmark_reports_every_concurrency(serve_run):
    from llm.bench.serve import CONCURRENCY, benchmark_serve

    result = benchmark_serve(serve_run, max_tokens=6, device="cpu")
    for streams in CONCURRENCY:
        assert streams <= result[f"tokens@{streams}"] <= 6 * streams
        assert result[f"tokens_per_sec@{streams}"] > 0
        assert 0 < result[f"ttft_p50_ms@{streams}"] <= result[f"ttft_p95_ms@{streams}"]
    assert result["speedup_32_vs_1"] == result["tokens_per_sec@32"] / result["tokens_per_sec@1"]


class ScriptedRows(torch.nn.Module):
    """A stand-in model whose greedy reply follows a script, for rows of a RowCache or a prefill cache.

    The real model never writes a calculator call this early in training; this one does, so the
    tool path of a live app (forced output tokens, parts in the stream) is exercised end to end.
    """

    def __init__(self, script: list[int], prompt_len: int):
        super().__init__()
        self.script, self.prompt_len = script, prompt_len
        self.config = ModelShape(depth=1, model_dim=32, n_head=2, n_kv_head=2, head_dim=16, sequence_len=128,
                                 window_pattern="L", vocab_size=265)
        self.anchor = torch.nn.Linear(1, 1, bias=False)  # where the scheduler reads device and dtype

    def forward(self, ids, kv_cache):
        rows, new = ids.shape
        lengths = [kv_cache.filled] * rows if isinstance(kv_cache, KVCache) else kv_cache.lengths[:rows]
        logits = torch.zeros(rows, new, self.config.vocab_size)
        for row in range(rows):
            step = lengths[row] + new - self.prompt_len
            if step < len(self.script) and self.script[step] is not None:
                logits[row, -1, self.script[step]] = 10.0
        kv_cache.commit(new)
        return logits


def test_tool_calls_stream_as_parts_and_as_readable_text():
    from fastapi.testclient import TestClient

    tokenizer = byte_tokenizer()
    special = tokenizer.encode_special
    script = [*b"it is ", special("<|python_start|>"), *b"6*7", special("<|python_end|>"), None, None, None, None,
              *b" ok", special("<|assistant_end|>")]
    prompt = tokenizer.render_conversation({"messages": [{"role": "user", "content": "6 times 7?"}]})[0]
    model = ScriptedRows(script, prompt_len=len(prompt) + 1)
    pool = Pool([Replica("test", model, tokenizer, nullcontext(), rows=4)])
    defaults = Sampling(max_tokens=64, temperature=0.0, top_k=None, top_p=None, seed=0)
    client = TestClient(build_app(pool, tokenizer, context=128, defaults=defaults, model_id="scripted"))
    body = {"messages": [{"role": "user", "content": "6 times 7?"}], "temperature": 0}
    events = [json.loads(line[6:]) for line in client.post("/chat/completions", json=body).text.splitlines()
              if line.startswith("data: ")]
    parts = {}
    for event in events[:-1]:
        parts[event["part"]] = parts.get(event["part"], "") + event["token"]
    assert parts == {"text": "it is  ok", "python": "6*7", "python_output": "42"}
    assert events[-1]["done"] and events[-1]["finish_reason"] == "stop"
    whole = client.post("/v1/chat/completions", json=body).json()
    assert whole["choices"][0]["message"]["content"] == "it is [python: 6*7][output: 42] ok"
