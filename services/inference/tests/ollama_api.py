"""The inference service's Ollama API through the official `ollama` client, on the real model.

Run by tests/openai_api.rs with the same servers as openai_api.py (LLAMABOX_URL).
Every route the service offers, streaming and not, and the errors an app meets.
"""

import json
import math
import os
import re
import time
import unittest
import urllib.error
import urllib.request
from datetime import datetime

import ollama
from common import metric, wait_until

URL = os.environ["LLAMABOX_URL"]
# Greedy and short: the same request gives the same text, streamed or not.
GREEDY = {"temperature": 0, "num_predict": 24}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


_CLIENT = ollama.Client(host=URL)


def client():
    return _CLIENT


def name():
    return client().list().models[0].model


class Models(unittest.TestCase):
    def test_the_root_and_the_version_answer_as_ollama_does(self):
        with urllib.request.urlopen(URL + "/") as r:
            self.assertEqual(r.read().decode(), "Ollama is running")
        with urllib.request.urlopen(URL + "/api/version") as r:
            self.assertRegex(json.load(r)["version"], r"^\d+\.\d+\.\d+$")

    def test_list_names_the_model_with_its_file_and_details(self):
        models = client().list().models
        self.assertEqual(len(models), 1)
        m = models[0]
        self.assertTrue(m.model.endswith(":latest"), m.model)
        self.assertRegex(m.digest, r"^[0-9a-f]{64}$")
        self.assertGreater(m.size, 50_000_000)
        self.assertIsInstance(m.modified_at, datetime)
        self.assertEqual(m.details.format, "gguf")
        self.assertEqual(m.details.family, "llama")
        self.assertEqual(m.details.quantization_level, "Q4_1")
        self.assertRegex(m.details.parameter_size, r"^\d+\.\d\dM$")

    def test_a_name_without_its_tag_or_in_other_case_is_the_same_model(self):
        full = name()
        short = full.removesuffix(":latest").upper()
        reply = client().chat(model=short, messages=QUESTION, options=GREEDY, stream=False)
        self.assertEqual(reply.model, full)

    def test_show_describes_the_model(self):
        shown = client().show(name())
        self.assertIn("completion", shown.capabilities)
        self.assertIn("tools", shown.capabilities)
        self.assertEqual(shown.modelinfo["general.architecture"], "llama")
        self.assertGreater(shown.modelinfo["llama.context_length"], 0)
        self.assertGreater(shown.modelinfo["general.parameter_count"], 100_000_000)
        self.assertIn("im_start", shown.template)
        self.assertEqual(shown.details.quantization_level, "Q4_1")

    def test_ps_shows_the_loaded_model(self):
        running = client().ps().models
        self.assertEqual([m.model for m in running], [name()])
        self.assertGreater(running[0].context_length, 0)
        self.assertGreater(running[0].expires_at.year, datetime.now().year)

    def test_the_box_model_cannot_be_deleted_and_pulls_are_not_offered(self):
        with self.assertRaises(ollama.ResponseError) as e:
            client().delete(name())
        self.assertEqual(e.exception.status_code, 403)
        self.assertIn("cannot be deleted", e.exception.error)
        with self.assertRaises(ollama.ResponseError) as e:
            client().pull("gemma3:270m")
        self.assertEqual(e.exception.status_code, 501)


class Chat(unittest.TestCase):
    def test_a_streamed_chat_equals_the_same_chat_in_one_reply(self):
        parts = list(
            client().chat(model=name(), messages=QUESTION, options=GREEDY, stream=True)
        )
        self.assertGreater(len(parts), 2)
        *text_parts, last = parts
        self.assertTrue(all(not p.done for p in text_parts))
        self.assertTrue(last.done)
        self.assertIn(last.done_reason, ("stop", "length"))
        self.assertGreater(last.eval_count, 0)
        self.assertGreater(last.prompt_eval_count, 5)
        self.assertGreater(last.eval_duration, 0)
        self.assertGreaterEqual(last.total_duration, last.eval_duration)
        streamed = "".join(p.message.content for p in parts)
        whole = client().chat(model=name(), messages=QUESTION, options=GREEDY, stream=False)
        self.assertEqual(whole.message.role, "assistant")
        self.assertEqual(whole.message.content, streamed)
        self.assertEqual(whole.eval_count, last.eval_count)

    def test_num_predict_and_stop_end_the_reply(self):
        short = client().chat(
            model=name(), messages=QUESTION, options={"temperature": 0, "num_predict": 3}
        )
        self.assertEqual(short.eval_count, 3)
        self.assertEqual(short.done_reason, "length")
        # A stop string from the greedy reply itself ends it there, unsent.
        full = client().chat(model=name(), messages=QUESTION, options=GREEDY).message.content
        word = full.split()[2]
        stopped = client().chat(
            model=name(), messages=QUESTION, options={**GREEDY, "stop": [word]}
        )
        self.assertEqual(stopped.done_reason, "stop")
        self.assertEqual(stopped.message.content, full[: full.index(word)])

    def test_format_schema_constrains_the_reply(self):
        schema = {
            "type": "object",
            "properties": {"capital": {"type": "string", "maxLength": 20}},
            "required": ["capital"],
        }
        reply = client().chat(
            model=name(),
            messages=QUESTION,
            format=schema,
            options={"temperature": 0, "num_predict": 64},
        )
        self.assertEqual(reply.done_reason, "stop", reply.message.content)
        self.assertIsInstance(json.loads(reply.message.content)["capital"], str)

    def test_logprobs_come_with_each_token(self):
        reply = client().chat(
            model=name(), messages=QUESTION, options=GREEDY, logprobs=True, top_logprobs=2
        )
        self.assertEqual(len(reply.logprobs), reply.eval_count)
        first = reply.logprobs[0]
        self.assertLessEqual(first.logprob, 0)
        self.assertEqual(len(first.top_logprobs), 2)
        # Greedy: the chosen token is the most likely one.
        self.assertAlmostEqual(first.logprob, first.top_logprobs[0].logprob, places=4)

    def test_a_conversation_with_tool_calls_and_results_is_answered(self):
        weather = {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
        messages = [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny, 21 degrees", "tool_name": "weather"},
        ]
        reply = client().chat(model=name(), messages=messages, tools=[weather], options=GREEDY)
        self.assertTrue(reply.done)
        self.assertGreater(reply.eval_count, 0)

    def test_an_empty_chat_only_loads_the_model(self):
        reply = client().chat(model=name(), messages=[])
        self.assertTrue(reply.done)
        self.assertEqual(reply.done_reason, "load")


class KeepAlive(unittest.TestCase):
    def loaded(self):
        return [m.model for m in client().ps().models] == [name()]

    def test_keep_alive_zero_frees_the_model_and_the_next_request_loads_it(self):
        self.assertTrue(self.loaded())
        # Ollama's way to free a model: an empty request with keep_alive 0.
        self.assertEqual(client().generate(model=name(), keep_alive=0).done_reason, "unload")
        wait_until(lambda: not self.loaded(), "the model to be freed")
        self.assertEqual(metric("model_loaded"), 0)
        # Still installed: listed, shown, and the service stays healthy.
        self.assertEqual(len(client().list().models), 1)
        self.assertIn("completion", client().show(name()).capabilities)
        with urllib.request.urlopen(URL + "/health") as r:
            self.assertEqual(json.load(r)["loaded"], False)
        # The next request loads it again and is answered; with keep_alive 0 the model
        # is freed again once the reply is complete.
        reply = client().chat(model=name(), messages=QUESTION, options=GREEDY, keep_alive=0)
        self.assertGreater(reply.eval_count, 0)
        wait_until(lambda: not self.loaded(), "the model to be freed after the reply")
        # Embeddings load it too.
        self.assertEqual(len(client().embed(model=name(), input="x", keep_alive=0).embeddings), 1)
        # A request without keep_alive brings back the default: loaded for good.
        client().chat(model=name(), messages=QUESTION, options=GREEDY)
        self.assertTrue(self.loaded())
        self.assertEqual(metric("model_loaded"), 1)
        self.assertGreater(client().ps().models[0].expires_at.year, datetime.now().year + 50)

    def test_a_keep_alive_duration_is_when_the_idle_model_expires(self):
        client().generate(model=name(), keep_alive="10m")

        def expires_in():
            return client().ps().models[0].expires_at.timestamp() - time.time()

        wait_until(lambda: 500 < expires_in() < 610, "expires_at 10 minutes from now")
        client().generate(model=name())
        wait_until(lambda: expires_in() > 3e9, "expires_at to be far away again")


class Generate(unittest.TestCase):
    def test_streamed_and_whole_generations_agree(self):
        prompt = "Name three colours."
        parts = list(client().generate(model=name(), prompt=prompt, options=GREEDY, stream=True))
        self.assertTrue(parts[-1].done)
        whole = client().generate(model=name(), prompt=prompt, options=GREEDY)
        self.assertEqual(whole.response, "".join(p.response for p in parts))
        self.assertGreater(whole.eval_count, 0)

    def test_raw_prompts_skip_the_template(self):
        raw = client().generate(
            model=name(), prompt="The capital of France is", raw=True, options=GREEDY
        )
        templated = client().generate(
            model=name(), prompt="The capital of France is", options=GREEDY
        )
        # The chat template adds its turn markers: the raw prompt is shorter.
        self.assertLess(raw.prompt_eval_count, templated.prompt_eval_count)

    def test_an_empty_prompt_only_loads_the_model(self):
        reply = client().generate(model=name())
        self.assertEqual(reply.done_reason, "load")
        self.assertEqual(reply.response, "")


class Embed(unittest.TestCase):
    def test_embeddings_are_normalized_and_can_be_shortened(self):
        reply = client().embed(model=name(), input=["a cat", "a dog"])
        self.assertEqual(len(reply.embeddings), 2)
        for v in reply.embeddings:
            self.assertEqual(len(v), 576)
            self.assertAlmostEqual(math.sqrt(sum(x * x for x in v)), 1.0, places=3)
        self.assertGreater(reply.prompt_eval_count, 2)
        short = client().embed(model=name(), input="a cat", dimensions=64)
        self.assertEqual(len(short.embeddings[0]), 64)
        self.assertAlmostEqual(math.sqrt(sum(x * x for x in short.embeddings[0])), 1.0, places=3)
        legacy = client().embeddings(model=name(), prompt="a cat")
        self.assertEqual(len(legacy.embedding), 576)

    def test_a_long_input_is_cut_unless_truncate_is_false(self):
        long = "word " * 5000
        self.assertEqual(len(client().embed(model=name(), input=long).embeddings), 1)
        with self.assertRaises(ollama.ResponseError) as e:
            client().embed(model=name(), input=long, truncate=False)
        self.assertEqual(e.exception.status_code, 400)
        self.assertIn("truncate", e.exception.error)


class Errors(unittest.TestCase):
    def test_an_unknown_model_is_a_404_naming_it(self):
        with self.assertRaises(ollama.ResponseError) as e:
            client().chat(model="llama3:8b", messages=QUESTION)
        self.assertEqual(e.exception.status_code, 404)
        self.assertIn("'llama3:8b' not found", e.exception.error)

    def test_bad_fields_are_a_400_naming_the_field(self):
        cases = [
            ({"think": True}, "thinking"),
            ({"keep_alive": "soon"}, "keep_alive"),
            ({"options": {"temperature": 7}}, "temperature"),
        ]
        for extra, word in cases:
            with self.subTest(extra=extra):
                with self.assertRaises(ollama.ResponseError) as e:
                    client().chat(model=name(), messages=QUESTION, **extra)
                self.assertEqual(e.exception.status_code, 400)
                self.assertIn(word, e.exception.error)
        with self.assertRaises(ollama.ResponseError) as e:
            client().generate(model=name(), prompt="x", images=[b"\x89PNG"])
        self.assertIn("images", e.exception.error)

    def test_bodies_the_client_would_not_send_are_a_400_in_ollama_shape(self):
        for body, word in [
            (b"{not json", "not valid"),
            (json.dumps({"model": name(), "messages": QUESTION, "format": "yaml"}).encode(), "format"),
        ]:
            req = urllib.request.Request(
                URL + "/api/chat", body, {"content-type": "application/json"}
            )
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req)
            self.assertEqual(e.exception.code, 400)
            error = json.load(e.exception)["error"]
            self.assertIsInstance(error, str)
            self.assertTrue(re.search(word, error), error)


if __name__ == "__main__":
    unittest.main()
