"""The inference service through the official `openai` client, against the real model.

Run by tests/openai_api.rs, which starts two servers and passes their addresses:
LLAMABOX_URL (4 parallel sequences, a queue) and LLAMABOX_TINY_URL (1 sequence, a queue
of 1, to reach the busy answer).
"""

import json
import os
import threading
import unittest
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
from common import metric, wait_until

URL = os.environ["LLAMABOX_URL"]
TINY_URL = os.environ["LLAMABOX_TINY_URL"]


def client(url=URL, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", **kw)


def model_id(c=None):
    return (c or client()).models.list().data[0].id


def post_raw(path, body: bytes, url=URL):
    req = urllib.request.Request(url + path, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


GREEDY = dict(temperature=0, max_tokens=24)


class ModelTest(unittest.TestCase):
    """A client of the main server and the name of its model."""

    @classmethod
    def setUpClass(cls):
        cls.c = client()
        cls.model = model_id(cls.c)


class Api(ModelTest):

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
        reply = self.chat("Name three colors.")
        whole = reply.choices[0].message.content
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
        self.assertEqual(usage.completion_tokens, reply.usage.completion_tokens)
        if finish == "length":
            self.assertEqual(usage.completion_tokens, GREEDY["max_tokens"])

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
            (dict(n=5), "n"),  # the server decodes 4 sequences together
            (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
            (dict(tool_choice="required"), "tool_choice"),  # no tools offered
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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def check_arguments(test, call):
    """The call's arguments parse and satisfy its function's schema."""
    args = json.loads(call.arguments)
    if call.name == "get_weather":
        test.assertEqual(set(args), {"city", "unit"})
        test.assertIsInstance(args["city"], str)
        test.assertIn(args["unit"], ["celsius", "fahrenheit"])
    else:
        test.assertEqual(call.name, "get_time")
        test.assertEqual(set(args), {"timezone"})
        test.assertIsInstance(args["timezone"], str)
    return args


def user(content):
    return [{"role": "user", "content": content}]


class Tools(ModelTest):

    def create(self, messages, **kw):
        args = dict(temperature=0, max_tokens=120)
        args.update(kw)
        return self.c.chat.completions.create(model=self.model, messages=messages, **args)

    def test_a_named_tool_choice_gives_a_call_that_matches_the_schema(self):
        r = self.create(user("What is the weather in Paris?"), tools=[WEATHER, TIME], tool_choice=NAMED_WEATHER)
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertIsNone(choice.message.content)
        calls = choice.message.tool_calls
        self.assertGreaterEqual(len(calls), 1)
        for call in calls:
            self.assertEqual(call.type, "function")
            self.assertTrue(call.id.startswith("call_"))
            self.assertEqual(call.function.name, "get_weather")
            check_arguments(self, call.function)
        self.assertEqual(len({c.id for c in calls}), len(calls), "call ids are unique")

    def test_required_picks_one_of_the_offered_functions(self):
        # Parallel calls are allowed: room for the most a reply may hold (4).
        r = self.create(user("What time is it in Tokyo?"), tools=[WEATHER, TIME], tool_choice="required", max_tokens=200)
        self.assertLessEqual(len(r.choices[0].message.tool_calls), 4)
        self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        for call in r.choices[0].message.tool_calls:
            self.assertIn(call.function.name, ["get_weather", "get_time"])
            check_arguments(self, call.function)

    def test_parallel_tool_calls_false_gives_one_call(self):
        r = self.create(user("Weather in Paris and in Rome?"), tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
        self.assertEqual(len(r.choices[0].message.tool_calls), 1)

    def test_a_streamed_call_is_assembled_by_the_client(self):
        whole = self.create(user("What is the weather in Paris?"), tools=[WEATHER], tool_choice=NAMED_WEATHER)
        with self.c.chat.completions.stream(
            model=self.model,
            messages=user("What is the weather in Paris?"),
            tools=[WEATHER],
            tool_choice=NAMED_WEATHER,
            temperature=0,
            max_tokens=120,
        ) as stream:
            final = stream.get_final_completion()
        streamed = final.choices[0]
        self.assertEqual(streamed.finish_reason, "tool_calls")
        self.assertEqual(
            [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls],
            [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls],
        )
        check_arguments(self, streamed.message.tool_calls[0].function)

    def test_a_tool_result_turn_is_answered_in_text(self):
        messages = user("What is the weather in Paris?") + [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18, "condition": "sunny"}'},
        ]
        r = self.create(messages, tools=[WEATHER], max_tokens=60)
        choice = r.choices[0]
        self.assertIsNone(choice.message.tool_calls)
        self.assertIn(choice.finish_reason, ("stop", "length"))
        self.assertTrue(choice.message.content.strip())
        # The result reached the model: its answer uses it.
        self.assertRegex(choice.message.content.lower(), "18|sunny")

    def test_auto_answers_in_text_when_no_tool_is_needed(self):
        r = self.create(user("Say hello to me."), tools=[WEATHER], tool_choice="auto", max_tokens=40)
        choice = r.choices[0]
        self.assertIsNone(choice.message.tool_calls)
        self.assertNotEqual(choice.finish_reason, "tool_calls")
        self.assertTrue(choice.message.content.strip())

    def test_bad_tools_are_400s(self):
        for kw, param in [
            (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
            (dict(tools=[{"type": "retrieval"}]), "tools"),
            (dict(tools=[WEATHER], response_format={"type": "json_object"}), "response_format"),
        ]:
            with self.subTest(param=param):
                with self.assertRaises(openai.BadRequestError) as e:
                    self.create(user("hi"), **kw)
                self.assertIn(param, (e.exception.param or "") + e.exception.message)


class Logprobs(ModelTest):

    def check_entries(self, tokens, logprobs, tops):
        self.assertGreater(len(tokens), 0)
        for token, logprob, top in zip(tokens, logprobs, tops):
            self.assertLessEqual(logprob, 0.0)
            self.assertEqual(len(top), 3)
            top_logprobs = [lp for _, lp in top]
            self.assertEqual(top_logprobs, sorted(top_logprobs, reverse=True))
            self.assertTrue(all(lp <= 0.0 for lp in top_logprobs))
            # Greedy: the chosen token is the most likely one.
            self.assertEqual(top[0][0], token)
            self.assertAlmostEqual(top[0][1], logprob, places=5)

    def test_chat_logprobs_stream_and_not(self):
        kw = dict(model=self.model, messages=user("The capital of France is"), temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
        r = self.c.chat.completions.create(**kw)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.check_entries(
            [e.token for e in content], [e.logprob for e in content], [[(t.token, t.logprob) for t in e.top_logprobs] for e in content]
        )
        self.assertEqual("".join(e.token for e in content), r.choices[0].message.content)
        self.assertEqual(content[0].bytes, list(content[0].token.encode()))
        streamed = []
        for chunk in self.c.chat.completions.create(stream=True, **kw):
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                streamed += chunk.choices[0].logprobs.content
        self.assertEqual([e.token for e in streamed], [e.token for e in content])
        for a, b in zip(streamed, content):
            self.assertAlmostEqual(a.logprob, b.logprob, places=4)

    def test_completion_logprobs_stream_and_not(self):
        kw = dict(model=self.model, prompt="The sky is", temperature=0, max_tokens=8, logprobs=3)
        r = self.c.completions.create(**kw)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), r.usage.completion_tokens)
        # The legacy shape is a dict per token: its order carries no meaning.
        tops = [sorted(d.items(), key=lambda kv: -kv[1]) for d in lp.top_logprobs]
        self.check_entries(lp.tokens, lp.token_logprobs, tops)
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        self.assertEqual(lp.text_offset[0], 0)
        tokens = []
        for chunk in self.c.completions.create(stream=True, **kw):
            if chunk.choices and chunk.choices[0].logprobs:
                tokens += chunk.choices[0].logprobs.tokens
        self.assertEqual(tokens, lp.tokens)


class Choices(ModelTest):

    def test_two_choices_from_one_prompt_decoded_once(self):
        before = metric("prompt_tokens_total")
        kw = dict(model=self.model, messages=user("Tell me a short story about a fox."), temperature=1.0, seed=7, max_tokens=16, n=2)
        r = self.c.chat.completions.create(**kw)
        self.assertEqual([c.index for c in r.choices], [0, 1])
        texts = [c.message.content for c in r.choices]
        self.assertTrue(all(t.strip() for t in texts))
        self.assertNotEqual(texts[0], texts[1], "each choice samples with its own seed")
        # The prompt was read once, not once per choice.
        self.assertEqual(metric("prompt_tokens_total") - before, r.usage.prompt_tokens)
        self.assertLessEqual(r.model_extra["timings"]["prompt_n"], r.usage.prompt_tokens)
        # Seeded: the same request gives the same two choices.
        again = self.c.chat.completions.create(**kw)
        self.assertEqual([c.message.content for c in again.choices], texts)
        # Streamed: both choices arrive, each with its own end.
        parts, finished = {0: [], 1: []}, set()
        for chunk in self.c.chat.completions.create(stream=True, **kw):
            for c in chunk.choices:
                if c.delta.content:
                    parts[c.index].append(c.delta.content)
                if c.finish_reason:
                    finished.add(c.index)
        self.assertEqual(finished, {0, 1})
        self.assertEqual(["".join(parts[0]), "".join(parts[1])], texts)

    def test_greedy_choices_are_identical(self):
        r = self.c.chat.completions.create(model=self.model, messages=user("Name a fruit."), temperature=0, max_tokens=10, n=3)
        self.assertEqual(len({c.message.content for c in r.choices}), 1)
        alone = self.c.chat.completions.create(model=self.model, messages=user("Name a fruit."), temperature=0, max_tokens=10)
        self.assertEqual(r.choices[0].message.content, alone.choices[0].message.content)


RESPONSES_WEATHER = dict(WEATHER["function"], type="function")


class Responses(ModelTest):

    def create(self, **kw):
        args = dict(model=self.model, temperature=0, max_output_tokens=40)
        args.update(kw)
        return self.c.responses.create(**args)

    def test_text_and_its_stream(self):
        kw = dict(input="What is the capital of France?", instructions="Answer in one short sentence.")
        r = self.create(**kw)
        self.assertEqual(r.object, "response")
        self.assertIn(r.status, ("completed", "incomplete"))
        self.assertTrue(r.output_text.strip())
        self.assertGreater(r.usage.input_tokens, 10)
        self.assertEqual(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens)

        events = list(self.create(stream=True, **kw))
        types = [e.type for e in events]
        self.assertEqual(types[:2], ["response.created", "response.in_progress"])
        self.assertIn(types[-1], ("response.completed", "response.incomplete"))
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        self.assertEqual(deltas, r.output_text)
        self.assertEqual(events[-1].response.output_text, r.output_text)

        # The client's own stream helper accumulates the same response.
        with self.c.responses.stream(model=self.model, temperature=0, max_output_tokens=40, **kw) as stream:
            final = stream.get_final_response()
        self.assertEqual(final.output_text, r.output_text)

    def test_json_schema_format(self):
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
            "required": ["city", "population"],
            "additionalProperties": False,
        }
        fmt = {"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}}
        r = self.create(input="Describe the largest city of France as JSON.", text=fmt, max_output_tokens=80)
        value = json.loads(r.output_text)
        self.assertEqual(set(value), {"city", "population"})
        self.assertIsInstance(value["city"], str)
        self.assertIsInstance(value["population"], int)
        streamed = "".join(
            e.delta
            for e in self.create(input="Describe the largest city of France as JSON.", text=fmt, max_output_tokens=80, stream=True)
            if e.type == "response.output_text.delta"
        )
        self.assertEqual(streamed, r.output_text)

    def test_function_call_then_its_output(self):
        r = self.create(
            input="What is the weather in Paris?",
            tools=[RESPONSES_WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=120,
        )
        calls = [o for o in r.output if o.type == "function_call"]
        self.assertGreaterEqual(len(calls), 1)
        self.assertEqual(calls[0].name, "get_weather")
        check_arguments(self, calls[0])
        self.assertTrue(calls[0].call_id.startswith("call_"))

        events = list(
            self.create(
                input="What is the weather in Paris?",
                tools=[RESPONSES_WEATHER],
                tool_choice={"type": "function", "name": "get_weather"},
                max_output_tokens=120,
                stream=True,
            )
        )
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        self.assertEqual(done[0].arguments, calls[0].arguments)
        self.assertEqual(events[-1].type, "response.completed")

        follow_up = self.create(
            input=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
                {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temperature": 18, "condition": "sunny"}'},
            ],
            tools=[RESPONSES_WEATHER],
            max_output_tokens=60,
        )
        self.assertEqual([o.type for o in follow_up.output], ["message"])
        self.assertTrue(follow_up.output_text.strip())

    def test_stateless(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.create(input="hi", previous_response_id="resp_1")
        self.assertEqual(e.exception.param, "previous_response_id")


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

    TOOL_PROMPTS = ["What time is it in Tokyo?", "What is the weather in Paris?", "Is it raining in London?", "What time is it in New York?"]

    def mixed(self, i):
        """Request i of eight that mix plain chat, tool calls and logprobs."""
        c = client()
        prompt = self.PROMPTS[i] if i % 2 == 0 else self.TOOL_PROMPTS[i // 2]
        # Calls get room to finish: they are compared parsed (name, arguments).
        extra = [
            dict(max_tokens=32),
            dict(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, max_tokens=120),
            dict(logprobs=True, top_logprobs=2, max_tokens=32),
            dict(tools=[WEATHER], tool_choice=NAMED_WEATHER, max_tokens=120),
        ][i % 4]
        r = c.chat.completions.create(model=model_id(c), messages=user(prompt), temperature=0, **extra)
        m = r.choices[0].message
        return (
            m.content,
            [(t.function.name, t.function.arguments) for t in m.tool_calls or []],
            [(e.token, round(e.logprob, 3)) for e in r.choices[0].logprobs.content] if r.choices[0].logprobs else None,
        )

    def test_eight_concurrent_requests_mixing_tools_and_logprobs_equal_their_solo_answers(self):
        alone = [self.mixed(i) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(self.mixed, range(8)))
        for i, (a, t) in enumerate(zip(alone, together)):
            self.assertEqual(a, t, i)
        self.assertTrue(any(calls for _, calls, _ in alone))
        self.assertTrue(any(lp for _, _, lp in alone))

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
