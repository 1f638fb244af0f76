"""Several models, one resident: the factory model and a pulled one (docs/models.md).

Run by tests/openai_api.rs against a service whose model store (--models-dir) holds a
second model, `smollm2:copy` (LLAMABOX_URL), with the official `ollama` and `openai`
clients. Listing, switching by name, switching while another model streams (the
request waits, nothing fails), and the errors.
"""

import os
import threading
import time
import unittest

import ollama
import openai

URL = os.environ["LLAMABOX_URL"]
PULLED = "smollm2:copy"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 16}

OLLAMA = ollama.Client(host=URL)
OPENAI = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0)


def factory():
    return next(m.model for m in OLLAMA.list().models if m.model != PULLED)


def resident():
    return [m.model for m in OLLAMA.ps().models]


class Models(unittest.TestCase):
    def test_0_the_default_model_is_loaded_at_start_and_listed_first(self):
        deadline = time.monotonic() + 60
        while resident() != [PULLED] and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(resident(), [PULLED])
        self.assertEqual(OPENAI.models.list().data[0].id, PULLED)

    def test_1_both_models_are_listed_by_both_apis(self):
        names = [m.model for m in OLLAMA.list().models]
        self.assertEqual(len(names), 2, names)
        self.assertIn(PULLED, names)
        pulled = next(m for m in OLLAMA.list().models if m.model == PULLED)
        self.assertEqual(pulled.details.quantization_level, "Q4_1")
        self.assertEqual(pulled.details.parameter_size, "135M")
        self.assertRegex(pulled.digest, r"^[0-9a-f]{64}$")
        ids = [m.id for m in OPENAI.models.list().data]
        self.assertEqual(len(ids), 2, ids)
        self.assertIn(PULLED, ids)
        shown = OLLAMA.show(PULLED)
        self.assertEqual(shown.details.family, "llama")
        self.assertIn("temperature", shown.parameters or "")

    def test_2_a_request_for_another_model_loads_it(self):
        reply = OLLAMA.chat(model=PULLED, messages=QUESTION, options=GREEDY, stream=False)
        self.assertTrue(reply.message.content)
        self.assertEqual(reply.model, PULLED)
        self.assertEqual(resident(), [PULLED])
        # And back, through the OpenAI API.
        chat = OPENAI.chat.completions.create(
            model=factory().removesuffix(":latest"), messages=QUESTION, max_tokens=8
        )
        self.assertTrue(chat.choices[0].message.content)
        self.assertEqual(resident(), [factory()])

    def test_3_a_switch_waits_for_the_stream_of_the_resident_model(self):
        first = factory()
        OLLAMA.chat(model=first, messages=QUESTION, options=GREEDY, stream=False)
        finished = {}

        def stream_long():
            parts = OLLAMA.chat(
                model=first,
                messages=[{"role": "user", "content": "Count from one to one hundred."}],
                options={"temperature": 0, "num_predict": 96},
                stream=True,
            )
            text = "".join(p.message.content for p in parts)
            finished["a"] = (time.monotonic(), text)

        streaming = threading.Thread(target=stream_long)
        streaming.start()
        time.sleep(0.5)  # the stream is running
        reply = OLLAMA.chat(model=PULLED, messages=QUESTION, options=GREEDY, stream=False)
        answered = time.monotonic()
        streaming.join()
        self.assertTrue(reply.message.content)
        self.assertIn("a", finished, "the stream of the first model did not finish")
        self.assertTrue(finished["a"][1], "the first model's stream was cut")
        self.assertLessEqual(finished["a"][0], answered, "the switch did not wait")
        self.assertEqual(resident(), [PULLED])

    def test_4_unknown_names_and_deletes(self):
        with self.assertRaises(ollama.ResponseError) as e:
            OLLAMA.chat(model="nope:1b", messages=QUESTION, stream=False)
        self.assertEqual(e.exception.status_code, 404)
        self.assertIn(PULLED, str(e.exception))
        with self.assertRaises(openai.NotFoundError):
            OPENAI.chat.completions.create(model="nope", messages=QUESTION, max_tokens=4)
        # The service cannot delete a pulled model (the update service owns the store;
        # through the gateway a delete goes there), nor the factory model.
        with self.assertRaises(ollama.ResponseError) as e:
            OLLAMA.delete(PULLED)
        self.assertEqual(e.exception.status_code, 404)
        with self.assertRaises(ollama.ResponseError) as e:
            OLLAMA.delete(factory())
        self.assertEqual(e.exception.status_code, 403)


if __name__ == "__main__":
    unittest.main()
