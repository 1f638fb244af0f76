"""OpenAI's transcription endpoint through the official `openai` client, on the real model.

Run by tests/openai_api.rs, which starts the voice service and writes the audio:
LLAMABOX_VOICE_URL, LLAMABOX_SPEECH_WAV (16 kHz mono), LLAMABOX_SPEECH_STEREO_WAV (the same
speech at 44.1 kHz stereo), LLAMABOX_SPEECH_TEXT (what was said).
"""

import os
import re
import unittest

import openai

URL = os.environ["LLAMABOX_VOICE_URL"]
WAV = os.environ["LLAMABOX_SPEECH_WAV"]
STEREO_WAV = os.environ["LLAMABOX_SPEECH_STEREO_WAV"]
TEXT = os.environ["LLAMABOX_SPEECH_TEXT"]
MODEL = os.environ["LLAMABOX_VOICE_MODEL"]


def words(text):
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def client():
    return openai.OpenAI(base_url=URL + "/v1", api_key="unused")


class Transcriptions(unittest.TestCase):
    def assert_heard(self, text):
        heard, said = set(words(text)), words(TEXT)
        missing = [w for w in said if w not in heard]
        self.assertLessEqual(len(missing), 1, f"heard {text!r} for {TEXT!r}")

    def test_json(self):
        with open(WAV, "rb") as f:
            result = client().audio.transcriptions.create(model="whisper-1", file=f)
        self.assert_heard(result.text)

    def test_text_and_language(self):
        with open(WAV, "rb") as f:
            result = client().audio.transcriptions.create(
                model="whisper-1", file=f, response_format="text", language="en"
            )
        self.assertIsInstance(result, str)
        self.assert_heard(result)

    def test_verbose_json_has_segments(self):
        with open(WAV, "rb") as f:
            result = client().audio.transcriptions.create(
                model="whisper-1", file=f, response_format="verbose_json"
            )
        self.assert_heard(result.text)
        self.assertEqual(result.language, "en")
        self.assertGreater(result.duration, 1.0)
        self.assertTrue(result.segments)
        self.assertLessEqual(result.segments[-1].end, result.duration + 0.5)

    def test_other_rates_and_channels_are_converted(self):
        with open(STEREO_WAV, "rb") as f:
            result = client().audio.transcriptions.create(model="whisper-1", file=f)
        self.assert_heard(result.text)

    def test_the_models_own_name_works_and_others_are_not_found(self):
        c = client()
        with open(WAV, "rb") as f:
            self.assert_heard(c.audio.transcriptions.create(model=MODEL, file=f).text)
        with open(WAV, "rb") as f:
            with self.assertRaises(openai.NotFoundError) as caught:
                c.audio.transcriptions.create(model="whisper-large-v3", file=f)
        self.assertIn("does not exist", str(caught.exception))

    def test_bad_input_is_a_clear_400(self):
        c = client()
        with self.assertRaises(openai.BadRequestError) as caught:
            c.audio.transcriptions.create(
                model="whisper-1", file=("notes.mp3", b"ID3 not really audio")
            )
        self.assertIn("send WAV", str(caught.exception))
        with open(WAV, "rb") as f:
            with self.assertRaises(openai.BadRequestError) as caught:
                c.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
        self.assertIn("json, text or verbose_json", str(caught.exception))
        with open(WAV, "rb") as f:
            with self.assertRaises(openai.BadRequestError) as caught:
                c.audio.transcriptions.create(model="whisper-1", file=f, temperature=3)
        self.assertIn("temperature", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
