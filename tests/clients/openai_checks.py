"""Drives a running `pocketvl serve` with the official `openai` Python package (and the
standard library's urllib for the non-OpenAI endpoints and raw bodies), checking every answer
against expectations computed by the Rust test from `pocketvl run` and the library.

Usage: openai_checks.py BASE_URL SPEC.json CHECK...   (checks: basic, errors, load, disconnect,
auth). Exits non-zero with the failing check's message.
"""

import base64
import concurrent.futures
import json
import sys
import urllib.error
import urllib.request

import openai

BASE, SPEC_PATH, CHECKS = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(SPEC_PATH) as f:
    SPEC = json.load(f)
MODEL = SPEC["model"]
KEY = SPEC.get("api_key") or "unused"


def client(key=KEY):
    return openai.OpenAI(base_url=BASE + "/v1", api_key=key, max_retries=0, timeout=120)


def data_url(path):
    with open(path, "rb") as f:
        return "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()


def messages(case):
    """The chat messages of one expectation case."""
    out = []
    for m in case["messages"]:
        if m.get("image"):
            content = [
                {"type": "text", "text": m["text"]},
                {"type": "image_url", "image_url": {"url": data_url(m["image"])}},
            ]
        else:
            content = m["text"]
        out.append({"role": m["role"], "content": content})
    return out


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def finish(case):
    return "length" if case["stop"] in ("maxtokens", "context") else "stop"


def create(c, case, **kw):
    return c.chat.completions.create(
        model=MODEL,
        messages=messages(case),
        max_tokens=case["max_tokens"],
        temperature=0,
        **kw,
    )


def check_plain(c, case):
    r = create(c, case)
    got = r.choices[0].message.content
    expect(got == case["text"], f"{case['name']}: {got!r} != {case['text']!r}")
    expect(r.choices[0].finish_reason == finish(case), f"{case['name']}: finish_reason")
    expect(r.usage.prompt_tokens == case["prompt_tokens"], f"{case['name']}: prompt_tokens")
    expect(r.usage.completion_tokens == case["completion_tokens"], f"{case['name']}: completion")
    expect(r.usage.total_tokens == case["prompt_tokens"] + case["completion_tokens"], "total")
    expect(isinstance(r.choices[0].message.model_extra.get("boxes"), list), "boxes field")
    return r


def check_stream(c, case):
    chunks = list(create(c, case, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    expect(text == case["text"], f"{case['name']} streamed: {text!r} != {case['text']!r}")
    expect(chunks[0].choices[0].delta.role == "assistant", "first chunk carries the role")
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    expect(finishes[-1] == finish(case), f"stream finish_reason {finishes[-1]}")
    expect(all(f is None for f in finishes[:-1]), "finish_reason only on the last choice chunk")
    last = chunks[-1]
    expect(last.choices == [] and last.usage is not None, "usage chunk last")
    expect(last.usage.completion_tokens == case["completion_tokens"], "streamed usage")
    expect(all(ch.id == chunks[0].id for ch in chunks), "one id per stream")


def basic():
    c = client()
    models = c.models.list().data
    expect([m.id for m in models] == [MODEL], f"models {models}")
    expect("image" in models[0].model_extra["input_modalities"], "image input advertised")
    for case in SPEC["cases"]:
        check_plain(c, case)
        check_stream(c, case)
    # The follow-up turn: its first turn's positions come from the KV cache.
    fu = SPEC["follow_up"]
    check_plain(c, fu["first"])
    r = check_plain(c, fu["second"])
    cached = r.usage.prompt_tokens_details.cached_tokens
    expect(cached >= fu["min_cached"], f"follow-up reused {cached} < {fu['min_cached']} positions")
    # The non-OpenAI endpoints.
    toks = post("/tokenize", {"content": SPEC["tokenize"]["text"]})[1]["tokens"]
    expect(toks == SPEC["tokenize"]["ids"], f"tokenize {toks}")
    text = post("/detokenize", {"tokens": toks})[1]["content"]
    expect(text == SPEC["tokenize"]["text"], f"detokenize {text!r}")


def post(path, body, raw=None, key=KEY):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def expect_error(status, body, want_status, needle):
    expect(status == want_status, f"status {status} != {want_status}: {body}")
    err = body.get("error", {})
    expect(isinstance(err.get("message"), str) and err.get("type"), f"OpenAI error JSON: {body}")
    expect(needle in err["message"], f"{needle!r} not in {err['message']!r}")


def errors():
    c = client()
    plain = [{"role": "user", "content": "hi"}]
    try:
        c.chat.completions.create(model="gpt-4o", messages=plain)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        expect(e.status_code == 404 and e.code == "model_not_found", str(e))
    for kw, needle in [
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"temperature": -1}, "temperature must be 0 (greedy) or more"),
        ({"n": 2}, "only n = 1"),
    ]:
        try:
            c.chat.completions.create(model=MODEL, messages=plain, **kw)
            raise AssertionError(f"{kw} accepted")
        except openai.BadRequestError as e:
            expect(needle in e.message, f"{kw}: {e.message}")
    url = "/v1/chat/completions"
    cases = [
        (None, b"{not json", 400, "invalid request body"),
        ({"model": MODEL}, None, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "a " * 6000}]}, None, 400,
         "the context holds"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(SPEC["image"])}}] * 17}]},
         None, 400, "17 images in one prompt; the limit is 16"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": SPEC["image"]}}]}]},
         None, 400, "--allow-local-files"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         None, 400, "unrecognised image format"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "<image> where?"}]},
         None, 400, "1 <image> tag(s) but only 0 image(s)"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, None, 400,
         "unsupported message role"),
    ]
    for body, raw, status, needle in cases:
        expect_error(*post(url, body, raw), status, needle)
    big = b'{"model":"' + b"x" * (SPEC["max_request_bytes"] + 10) + b'"}'
    expect_error(*post(url, None, big), 413, "larger than the limit")
    # The server is still fine.
    check_plain(c, SPEC["cases"][0])


def load():
    """16 clients x 10 requests at temperature 0: no error, every answer as `pocketvl run`."""
    cases = SPEC["cases"]

    def one_client(i):
        c = client()
        for j in range(10):
            case = cases[(i + j) % len(cases)]
            if j % 3 == 2:
                chunks = create(c, case, stream=True)
                text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            else:
                text = create(c, case).choices[0].message.content
            expect(text == case["text"], f"client {i} request {j}: {text!r} != {case['text']!r}")
        return 10

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        done = sum(pool.map(one_client, range(16)))
    expect(done == 160, f"{done} requests")


def disconnect():
    c = client()
    case = SPEC["long"]
    stream = c.chat.completions.create(
        model=MODEL, messages=messages(case), max_tokens=case["max_tokens"], temperature=0,
        stream=True)
    got = 0
    for ch in stream:
        got += 1
        if got == 3:
            break
    stream.close()
    with urllib.request.urlopen(BASE + "/health", timeout=30) as r:
        expect(r.status == 200, "healthy after a disconnect")
    check_plain(c, SPEC["cases"][0])


def auth():
    plain = [{"role": "user", "content": "hi"}]
    for wrong in ["wrong-key", ""]:
        try:
            client(wrong or "x").chat.completions.create(model=MODEL, messages=plain, max_tokens=2)
            raise AssertionError("a wrong API key was accepted")
        except openai.AuthenticationError as e:
            expect(e.status_code == 401 and e.code == "invalid_api_key", str(e))
    try:
        client("wrong").models.list()
        raise AssertionError("models without the key")
    except openai.AuthenticationError:
        pass
    with urllib.request.urlopen(BASE + "/health", timeout=30) as r:
        expect(r.status == 200, "/health needs no key")
    check_plain(client(), SPEC["cases"][0])


for name in CHECKS:
    globals()[name]()
    print(f"ok: {name}")
