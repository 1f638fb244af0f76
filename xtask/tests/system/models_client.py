"""Issue 13's scenario, as an app sees it: the official `ollama` and `openai` clients
against a booted box's gateway (HTTPS, a paired phone's token). Run by models.rs.

Pull a model from the signed catalog with streamed progress, list it, chat with it
(streamed), delete it; `/v1/models` agrees at each step, and the factory model
answers throughout.
"""

import os

import ollama
import openai

URL = os.environ["LLAMABOX_URL"]
TOKEN = os.environ["LLAMABOX_TOKEN"]
PULLED = os.environ["LLAMABOX_MODEL"]
LENGTH = int(os.environ["LLAMABOX_MODEL_LENGTH"])
TIMEOUT = 900

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OLLAMA = ollama.Client(host=URL, headers=AUTH, verify=False, timeout=TIMEOUT)
OPENAI = openai.OpenAI(
    base_url=URL + "/v1",
    api_key=TOKEN,
    timeout=TIMEOUT,
    max_retries=0,
    http_client=openai.DefaultHttpxClient(verify=False),
)


def listed():
    return sorted(m.model for m in OLLAMA.list().models)


def v1_ids():
    return sorted(m.id for m in OPENAI.models.list().data)


def factory_answers(factory):
    reply = OPENAI.chat.completions.create(
        model=factory, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None, reply
    return reply.choices[0].message.content


def expect_error(status, call):
    try:
        call()
    except ollama.ResponseError as e:
        assert e.status_code == status, (status, e.status_code, e.error)
        return e.error
    raise AssertionError(f"expected a {status}")


# Before: the factory model alone, on both APIs; no credential, no answer.
expect_error(401, lambda: ollama.Client(host=URL, verify=False).list())
(factory_name,) = listed()
(factory,) = v1_ids()
print("factory model:", factory_name, factory)

# Pull, with progress; the factory model answers while the pull runs.
statuses, progress = [], []
answered_during_pull = None
for part in OLLAMA.pull(PULLED, stream=True):
    statuses.append(part.status)
    if part.completed is not None:
        assert part.digest and part.digest.startswith("sha256:"), part
        assert part.total == LENGTH, part
        progress.append(part.completed)
        if answered_during_pull is None:
            answered_during_pull = factory_answers(factory)
assert statuses[0] == "pulling manifest", statuses
assert statuses[-1] == "success", statuses
assert progress and progress == sorted(progress), progress
assert progress[-1] == LENGTH, progress
assert answered_during_pull is not None, "no progress line came"
print(f"pulled {PULLED}: {len(progress)} progress lines; the factory model said {answered_during_pull!r} meanwhile")

# Listed by both APIs, with its signed facts.
assert listed() == sorted([factory_name, PULLED]), listed()
assert v1_ids() == sorted([factory, PULLED]), v1_ids()
entry = next(m for m in OLLAMA.list().models if m.model == PULLED)
assert entry.size == LENGTH, entry
assert entry.details.quantization_level == "Q4_K_M", entry
shown = OLLAMA.show(PULLED)
assert shown.template, "the catalog's chat template is missing"

# Chat with it, streamed: the service switches to it.
text = "".join(
    part.message.content
    for part in OLLAMA.chat(
        model=PULLED,
        messages=[{"role": "user", "content": "Say hello."}],
        options={"temperature": 0, "num_predict": 8},
        stream=True,
    )
)
assert text.strip(), "an empty answer"
assert [m.model for m in OLLAMA.ps().models] == [PULLED], OLLAMA.ps()
print(f"{PULLED} said {text!r}")
print("the factory model said", repr(factory_answers(factory)))

# Delete it: gone from both lists; the factory model cannot be deleted.
OLLAMA.delete(PULLED)
assert listed() == [factory_name], listed()
assert v1_ids() == [factory], v1_ids()
expect_error(404, lambda: OLLAMA.delete(PULLED))
expect_error(403, lambda: OLLAMA.delete(factory_name))
expect_error(404, lambda: OLLAMA.chat(model=PULLED, messages=[{"role": "user", "content": "x"}]))
expect_error(404, lambda: OLLAMA.pull("nothing:here"))
print("the factory model said", repr(factory_answers(factory)))
print("models scenario: ok")
