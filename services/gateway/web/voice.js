// The voice screen: what the box hears and answers, live from /v1/voice/events
// (event types: services/voice/src/events.rs). The voice service may be missing or
// restarting: the screen says so and tries again.

import { apiFetch, serverSentEvents } from "./api.js";

const $ = (id) => document.getElementById(id);
const KEEP = 50;
const RETRY_MS = 10000;

let controller = null;
let retry = 0;
const utterances = new Map(); // utterance number → list item

function state(text) {
  $("voice-state").textContent = text;
}

function item(utterance) {
  let li = utterances.get(utterance);
  if (!li) {
    li = document.createElement("li");
    const heard = document.createElement("div");
    heard.className = "heard";
    heard.textContent = "…";
    const answer = document.createElement("div");
    answer.className = "answer";
    const when = document.createElement("div");
    when.className = "when";
    when.textContent = new Date().toLocaleTimeString();
    li.append(heard, answer, when);
    utterances.set(utterance, li);
    $("voice-list").prepend(li);
    while (utterances.size > KEEP) {
      const [oldest, element] = utterances.entries().next().value;
      element.remove();
      utterances.delete(oldest);
    }
  }
  return li;
}

function show(event) {
  switch (event.type) {
    case "speech-started":
      state("Hearing someone speak…");
      item(event.utterance);
      break;
    case "transcript": {
      const li = item(event.utterance);
      li.querySelector(".heard").textContent = event.text ? `“${event.text}”` : "(no words heard)";
      li.querySelector(".when").textContent = `${new Date().toLocaleTimeString()} · ${event.language || ""} · transcribed in ${event.latency_ms} ms`;
      state("Listening.");
      break;
    }
    case "answer-delta": {
      const answer = item(event.utterance).querySelector(".answer");
      answer.textContent += event.text;
      break;
    }
    case "answer-done":
      item(event.utterance).querySelector(".answer").textContent = event.text;
      break;
    case "answer-failed":
      item(event.utterance).querySelector(".answer").textContent = `No answer: ${event.error}`;
      break;
    case "capture-error":
      state(`The microphone is not working: ${event.error} (the box keeps trying).`);
      break;
    default:
      break;
  }
}

async function listen() {
  clearTimeout(retry);
  controller = new AbortController();
  const signal = controller.signal;
  state("Connecting to the voice service…");
  try {
    const response = await apiFetch("/v1/voice/events", { signal, headers: { Accept: "text/event-stream" } });
    state("Listening. What the box hears appears here.");
    for await (const event of serverSentEvents(response)) {
      if (event.event === "lagged") continue;
      try {
        show(JSON.parse(event.data));
      } catch {
        // not an event we know
      }
    }
    if (signal.aborted) return;
    state("The voice service closed the stream; reconnecting…");
  } catch (e) {
    if (signal.aborted || e.name === "AbortError") return;
    if (e.status === 401) return;
    if (e.status === 502 || e.status === 503 || e.status === 404) {
      state("Voice is not available: the voice service is not running on the box (yet). Trying again every 10 s.");
    } else {
      state(`Voice events failed: ${e.message}. Trying again every 10 s.`);
    }
  }
  if (!signal.aborted) retry = setTimeout(listen, RETRY_MS);
}

export function startVoice() {
  if (controller && !controller.signal.aborted) return;
  listen();
}

export function stopVoice() {
  clearTimeout(retry);
  if (controller) controller.abort();
}
