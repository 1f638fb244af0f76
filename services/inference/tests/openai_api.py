"""The inference service through the official `openai` client, against the real model.

Run by tests/openai_api.rs, which starts two servers and passes their addresses:
LLAMABOX_URL (4 parallel sequences, a queue) and LLAMABOX_TINY_URL (1 sequence, a queue
of 1, to reach the busy answer).
"""

import json
import os
import threading
import time
import unittest
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

URL = os.environ["LLAMABOX_URL"]
TINY_URL = os.environ["LLAMABOX_TINY_URL"]


def client(url=URL, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", **kw)


def model_id(c=None):
    return (c or client()).models.list().data[0].id


def metric(name, url=URL):
    with urllib.request.urlopen(url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith("llamabox_inference_" + name + " "):
                return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def wait_until(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def post_raw(path, body: bytes, url=URL):
    req = urllib.request.Request(url + path, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


GREEDY = dict(temperature=0, max_tokens=24)


class Api(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.model = model_id(cls.c)

    def chat(self, content, **kw):
        args = dict(GREEDY)
        args.update(kw)
        return self.c.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], **args
        )

    def test_models_list_names_the_loaded_model(self):
        models = self.c.models.list().data
        self.assertEqual(len(models), 1)
        self.assertTrue(models[0].id.startswith("SmolLM2-135M-Instruct"))
        self.assertEqual(self.c.models.retrieve(self.model).id, self.model)

    def test_chat_non_streaming(self):
        r = self.chat("What is the capital of France?")
        choice = r.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertTrue(choice.message.content.strip())
        self.assertIn(choice.finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.prompt_tokens, 10)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        timings = r.model_extra["timings"]
        self.assertEqual(timings["predicted_n"], r.usage.completion_tokens)

    def test_chat_streaming_matches_non_streaming(self):
        whole = self.chat("Name three colors.").choices[0].message.content
        pieces, finish, usage = [], None, None
        stream = self.chat("Name three colors.", stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
        self.assertGreater(len(pieces), 1, "a streamed reply arrives in several chunks")
        self.assertEqual("".join(pieces), whole)
        self.assertIn(finish, ("stop", "length"))
        self.assertIsNotNone(usage)
        self.assertEqual(usage.completion_tokens, GREEDY["max_tokens"] if finish == "length" else usage.completion_tokens)

    def test_system_and_assistant_turns_and_prefix_reuse(self):
        messages = [
            {"role": "system", "content": "You are a terse assistant. " * 20},
            {"role": "user", "content": "Count to three."},
        ]
        first = self.c.chat.completions.create(model=self.model, messages=messages, **GREEDY)
        messages += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And to four?"},
        ]
        second = self.c.chat.completions.create(model=self.model, messages=messages, **GREEDY)
        self.assertTrue(second.choices[0].message.content)
        cached = second.usage.prompt_tokens_details.cached_tokens
        # The whole first turn's prompt is reused on the second.
        self.assertGreaterEqual(cached, first.usage.prompt_tokens)

    def test_stop_strings_end_the_reply(self):
        r = self.chat("List the numbers from one to ten, one per line.", max_tokens=60, stop=["\n"])
        self.assertNotIn("\n", r.choices[0].message.content)
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_seeded_sampling_is_repeatable(self):
        a = self.chat("Tell me a word.", temperature=1.0, top_p=0.9, seed=42, max_tokens=12)
        b = self.chat("Tell me a word.", temperature=1.0, top_p=0.9, seed=42, max_tokens=12)
        self.assertEqual(a.choices[0].message.content, b.choices[0].message.content)

    def test_completions(self):
        r = self.c.completions.create(model=self.model, prompt="The sky is", **GREEDY)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(r.choices[0].text)
        self.assertGreater(r.usage.completion_tokens, 0)
        streamed = "".join(
            c.choices[0].text
            for c in self.c.completions.create(model=self.model, prompt="The sky is", stream=True, **GREEDY)
            if c.choices
        )
        self.assertEqual(streamed, r.choices[0].text)

    def test_embeddings(self):
        r = self.c.embeddings.create(model=self.model, input=["a cat", "a cat", "the stock market"])
        vectors = [d.embedding for d in r.data]
        self.assertEqual(len(vectors), 3)
        self.assertEqual(len(vectors[0]), 576)  # SmolLM2-135M's embedding width
        norm = sum(x * x for x in vectors[0]) ** 0.5
        self.assertAlmostEqual(norm, 1.0, places=3)
        self.assertEqual(vectors[0], vectors[1])
        self.assertNotEqual(vectors[0], vectors[2])
        self.assertGreater(r.usage.prompt_tokens, 0)
        floats = self.c.embeddings.create(model=self.model, input="a cat", encoding_format="float")
        for x, y in zip(floats.data[0].embedding, vectors[0]):
            self.assertAlmostEqual(x, y, places=5)

    def test_json_schema_output_parses_and_matches(self):
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0},
                "languages": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
            },
            "required": ["name", "age", "languages"],
            "additionalProperties": False,
        }
        r = self.chat(
            "Describe a fictional programmer as JSON.",
            max_tokens=200,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        )
        self.assertEqual(r.choices[0].finish_reason, "stop")
        value = json.loads(r.choices[0].message.content)
        self.assertEqual(set(value), {"name", "age", "languages"})
        self.assertIsInstance(value["name"], str)
        self.assertIsInstance(value["age"], int)
        self.assertGreaterEqual(value["age"], 0)
        self.assertTrue(1 <= len(value["languages"]) <= 3)
        self.assertTrue(all(isinstance(x, str) for x in value["languages"]))

    def test_json_object_mode(self):
        r = self.chat("Give me a JSON object about the weather.", max_tokens=300, response_format={"type": "json_object"})
        self.assertIsInstance(json.loads(r.choices[0].message.content), dict)

    def test_bad_json_is_a_clear_400(self):
        status, body = post_raw("/v1/chat/completions", b'{"messages": [')
        self.assertEqual(status, 400)
        self.assertIn("not valid", body["error"]["message"])
        status, body = post_raw("/v1/chat/completions", b'{"messages": "hello"}')
        self.assertEqual(status, 400)
        self.assertIn("messages", body["error"]["message"])

    def test_unknown_model_is_a_404(self):
        with self.assertRaises(openai.NotFoundError) as e:
            self.c.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
        self.assertIn("gpt-9", str(e.exception))
        self.assertEqual(e.exception.code, "model_not_found")

    def test_over_long_prompt_is_a_400_with_the_numbers(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.chat("word " * 5000)
        err = e.exception
        self.assertEqual(err.code, "context_length_exceeded")
        self.assertRegex(err.message, r"prompt is \d+ tokens, but the context holds \d+ tokens")

    def test_invalid_parameters_are_400s_naming_the_parameter(self):
        for kw, param in [
            (dict(temperature=5), "temperature"),
            (dict(top_p=1.5), "top_p"),
            (dict(max_tokens=0), "max_tokens"),
            (dict(n=2), "n"),
            (dict(presence_penalty=3), "presence_penalty"),
        ]:
            with self.subTest(param=param):
                with self.assertRaises(openai.BadRequestError) as e:
                    self.chat("hi", **kw)
                self.assertEqual(e.exception.param, param)
        with self.assertRaises(openai.BadRequestError):
            self.c.chat.completions.create(model=self.model, messages=[{"role": "robot", "content": "x"}])
        with self.assertRaises(openai.BadRequestError):
            self.c.chat.completions.create(model=self.model, messages=[])

    def test_disconnected_stream_stops_generating(self):
        cancelled = metric("generations_cancelled_total")
        stream = self.chat("Write a very long story about the sea.", stream=True, max_tokens=900)
        received = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received == 3:
                break
        stream.close()
        wait_until(lambda: metric("generations_cancelled_total") == cancelled + 1, "the cancellation")
        wait_until(lambda: metric("active_sequences") == 0, "the sequence to be freed")
        generated = metric("generated_tokens_total")
        # Nothing is decoded for a request that no longer exists: a new request still works,
        # and generated tokens grow only by what it asked for.
        r = self.chat("hi", max_tokens=4)
        self.assertLessEqual(metric("generated_tokens_total"), generated + r.usage.completion_tokens)

    def test_health(self):
        with urllib.request.urlopen(URL + "/health") as r:
            self.assertEqual(json.load(r)["status"], "ok")


class Concurrency(unittest.TestCase):
    PROMPTS = [f"Write two sentences about a {w}." for w in ["cat", "dog", "robot", "ship", "tree", "river", "king", "star"]]

    def ask(self, prompt):
        c = client()
        r = c.chat.completions.create(
            model=model_id(c), messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=32
        )
        return r.choices[0].message.content

    def test_eight_concurrent_greedy_requests_equal_their_solo_answers(self):
        alone = [self.ask(p) for p in self.PROMPTS]
        with ThreadPoolExecutor(len(self.PROMPTS)) as pool:
            together = list(pool.map(self.ask, self.PROMPTS))
        for prompt, a, t in zip(self.PROMPTS, alone, together):
            self.assertEqual(a, t, prompt)
        self.assertEqual(len(set(alone)), len(alone), "different prompts, different answers")

    def test_a_full_queue_answers_503(self):
        # TINY serves one sequence with a queue of one: a third request is turned away.
        c = client(TINY_URL, max_retries=0)
        model = model_id(c)
        opened = []
        try:
            for _ in range(2):
                s = c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Tell a long story."}], stream=True, max_tokens=500
                )
                opened.append(s)
            wait_until(lambda: metric("queue_depth", TINY_URL) == 1, "one queued request")
            with self.assertRaises(openai.APIStatusError) as e:
                c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2)
            self.assertEqual(e.exception.status_code, 503)
            self.assertIn("busy", e.exception.message)
        finally:
            for s in opened:
                s.close()
        wait_until(lambda: metric("active_sequences", TINY_URL) == 0, "the streams to be cancelled")


if __name__ == "__main__":
    unittest.main()
