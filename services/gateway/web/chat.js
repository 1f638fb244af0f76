// The chat screen: conversations kept on this phone (sealed, api.js), answers streamed
// from the box's OpenAI-compatible API, rendered as Markdown while they arrive.

import { apiFetch, apiJson, ApiError, boxGet, boxRemove, boxSet, serverSentEvents } from "./api.js";
import { renderMarkdown } from "./markdown.js";


const $ = (id) => document.getElementById(id);

// ---- storage ---------------------------------------------------------------------------

function load(name, fallback) {
  try {
    return JSON.parse(boxGet(name)) ?? fallback;
  } catch {
    return fallback;
  }
}

// This box's (api.js: identifyBox), loaded by initChat.
let conversations = [];
let currentId = null;
let settings = {};

function loadStore() {
  conversations = load("conversations", []);
  currentId = boxGet("current");
  settings = load("settings", {});
}

function save() {
  try {
    boxSet("conversations", JSON.stringify(conversations));
    if (currentId) boxSet("current", currentId);
    else boxRemove("current");
  } catch (e) {
    showError(`Could not save the conversation on this phone: ${e.message}`);
  }
}

function saveSettings() {
  try {
    boxSet("settings", JSON.stringify(settings));
  } catch (e) {
    showError(`Could not save the settings on this phone: ${e.message}`);
  }
}

function current() {
  return conversations.find((c) => c.id === currentId) || null;
}

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- rendering -------------------------------------------------------------------------

let streaming = null; // { conversation, message, controller, element }

function showError(text) {
  const banner = $("chat-error");
  banner.textContent = text || "";
  banner.hidden = !text;
}

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function messageElement(message, isLast) {
  const element = document.createElement("div");
  element.className = `msg ${message.role}`;
  const body = document.createElement("div");
  body.className = "body";
  element.append(body);
  if (message.role === "user") {
    body.textContent = message.content;
  } else {
    fillAssistant(element, message, isLast);
  }
  return element;
}

function fillAssistant(element, message, isLast) {
  const body = element.querySelector(".body");
  body.innerHTML = renderMarkdown(message.content);
  element.dataset.state = message.state || "done";
  element.querySelector(".meta")?.remove();
  if (message.state === "streaming") return;
  const meta = document.createElement("div");
  meta.className = "meta";
  if (message.state === "stopped") meta.append(note("stopped"));
  if (message.state === "error") meta.append(note(message.error || "failed"));
  if (message.finish === "length") meta.append(note("cut at the token limit"));
  if (isLast) {
    const again = document.createElement("button");
    again.type = "button";
    again.className = "regenerate";
    again.textContent = "↻ Regenerate";
    again.addEventListener("click", regenerate);
    meta.append(again);
  }
  if (meta.childElementCount) element.append(meta);
}

function note(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span;
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  const conversation = current();
  const messages = conversation ? conversation.messages : [];
  if (!messages.length) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Ask the box anything. Answers are made on the box; nothing leaves it, and this conversation stays on this phone.";
    box.append(empty);
  }
  messages.forEach((message, i) => {
    const element = messageElement(message, i === messages.length - 1);
    if (streaming && streaming.message === message) streaming.element = element;
    box.append(element);
  });
  $("title").textContent = conversation ? conversation.title : "New chat";
  scrollToBottom();
  renderList();
}

function renderList() {
  const list = $("conv-list");
  list.replaceChildren();
  const sorted = [...conversations].sort((a, b) => b.updated - a.updated);
  for (const conversation of sorted) {
    const item = document.createElement("li");
    if (conversation.id === currentId) item.className = "current";
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.title;
    open.addEventListener("click", () => {
      select(conversation.id);
      toggleDrawer(false);
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "✕";
    remove.setAttribute("aria-label", `Delete “${conversation.title}”`);
    remove.addEventListener("click", () => {
      if (!confirm(`Delete “${conversation.title}” from this phone?`)) return;
      if (streaming && streaming.conversation === conversation) streaming.controller.abort();
      conversations = conversations.filter((c) => c !== conversation);
      if (currentId === conversation.id) currentId = null;
      save();
      renderMessages();
    });
    item.append(open, remove);
    list.append(item);
  }
  if (!sorted.length) {
    const item = document.createElement("li");
    item.className = "muted";
    item.textContent = "No conversations yet.";
    list.append(item);
  }
}

function select(id) {
  currentId = id;
  save();
  showError("");
  renderMessages();
}

/** Shows the conversation drawer, the settings sheet, or neither (null). */
export function overlay(which) {
  $("drawer").hidden = which !== "drawer";
  $("settings").hidden = which !== "settings";
  $("scrim").hidden = !which;
}

function toggleDrawer(show) {
  overlay(show ? "drawer" : null);
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

// ---- talking to the box ----------------------------------------------------------------

function number(value) {
  if (value === "" || value === null || value === undefined) return undefined;
  const n = Number(value);
  return Number.isFinite(n) ? n : undefined;
}

function requestBody(conversation, upTo) {
  const messages = [];
  if (settings.system && settings.system.trim()) messages.push({ role: "system", content: settings.system.trim() });
  for (const message of conversation.messages.slice(0, upTo)) {
    if (message.role === "assistant" && (message.state === "error" || !message.content)) continue;
    messages.push({ role: message.role, content: message.content });
  }
  const body = { messages, stream: true };
  if (settings.model) body.model = settings.model;
  const temperature = number(settings.temperature);
  const topP = number(settings.top_p);
  const maxTokens = number(settings.max_tokens);
  if (temperature !== undefined) body.temperature = temperature;
  if (topP !== undefined) body.top_p = topP;
  if (maxTokens !== undefined) body.max_tokens = Math.max(1, Math.round(maxTokens));
  return body;
}

async function answer(conversation) {
  const message = { role: "assistant", content: "", state: "streaming" };
  conversation.messages.push(message);
  conversation.updated = Date.now();
  const controller = new AbortController();
  streaming = { conversation, message, controller, element: null };
  save();
  if (conversation.id === currentId) renderMessages();
  setBusy(true);
  showError("");

  let frame = 0;
  const paint = () => {
    frame = 0;
    const element = streaming && streaming.element;
    if (!element || !element.isConnected) return;
    const follow = nearBottom();
    element.querySelector(".body").innerHTML = renderMarkdown(message.content);
    element.dataset.updates = String(Number(element.dataset.updates || 0) + 1);
    if (follow) scrollToBottom();
  };

  try {
    const response = await apiFetch("/v1/chat/completions", {
      method: "POST",
      json: requestBody(conversation, conversation.messages.length - 1),
      signal: controller.signal,
    });
    for await (const event of serverSentEvents(response)) {
      if (event.data === "[DONE]") break;
      let chunk;
      try {
        chunk = JSON.parse(event.data);
      } catch {
        continue;
      }
      if (chunk.error) throw new ApiError(200, chunk.error.type || "error", chunk.error.message || "the answer failed");
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && typeof choice.delta.content === "string") {
        message.content += choice.delta.content;
        if (!frame) frame = requestAnimationFrame(paint);
      }
      if (choice.finish_reason) message.finish = choice.finish_reason;
    }
    message.state = "done";
  } catch (e) {
    if (e.name === "AbortError") {
      message.state = "stopped";
    } else {
      message.state = "error";
      message.error = e.message;
      if (!(e instanceof ApiError && e.status === 401)) showError(e.message);
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    streaming = null;
    conversation.updated = Date.now();
    save();
    setBusy(false);
    if (conversation.id === currentId) renderMessages();
  }
}

function send(text) {
  let conversation = current();
  if (!conversation) {
    conversation = { id: newId(), title: "New chat", created: Date.now(), updated: Date.now(), messages: [] };
    conversations.push(conversation);
    currentId = conversation.id;
  }
  if (!conversation.messages.length) conversation.title = text.replace(/\s+/g, " ").trim().slice(0, 48);
  conversation.messages.push({ role: "user", content: text });
  answer(conversation);
}

function regenerate() {
  const conversation = current();
  if (!conversation || streaming) return;
  const last = conversation.messages[conversation.messages.length - 1];
  if (last && last.role === "assistant") conversation.messages.pop();
  if (!conversation.messages.length) return;
  answer(conversation);
}

// ---- models and settings ---------------------------------------------------------------

export async function loadModels() {
  const select = $("set-model");
  let models = [];
  try {
    const list = await apiJson("/v1/models");
    models = (list.data || []).map((m) => m.id).filter((id) => typeof id === "string");
  } catch (e) {
    if (e.status === 401) return;
  }
  select.replaceChildren();
  if (!models.length) select.append(new Option("the box's default model", ""));
  for (const id of models) select.append(new Option(id, id));
  if (settings.model && !models.includes(settings.model) && models.length) settings.model = models[0];
  if (!settings.model && models.length) settings.model = models[0];
  select.value = settings.model || "";
}

function fillSettings() {
  $("set-system").value = settings.system || "";
  $("set-temperature").value = settings.temperature ?? "";
  $("set-top-p").value = settings.top_p ?? "";
  $("set-max-tokens").value = settings.max_tokens ?? "";
}

function readSettings() {
  settings = {
    model: $("set-model").value,
    system: $("set-system").value,
    temperature: $("set-temperature").value,
    top_p: $("set-top-p").value,
    max_tokens: $("set-max-tokens").value,
  };
  saveSettings();
}

// ---- wiring ----------------------------------------------------------------------------

export function initChat() {
  loadStore();
  // An answer cut off by a reload is kept as it was, marked stopped.
  for (const conversation of conversations) {
    for (const message of conversation.messages) {
      if (message.state === "streaming") message.state = "stopped";
    }
  }
  if (currentId && !current()) currentId = null;
  fillSettings();

  const prompt = $("prompt");
  const grow = () => {
    prompt.style.height = "auto";
    prompt.style.height = `${Math.min(prompt.scrollHeight, 144)}px`;
  };
  prompt.addEventListener("input", grow);
  prompt.addEventListener("keydown", (e) => {
    // Enter sends on a hardware keyboard; Shift+Enter is a new line.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && matchMedia("(hover: hover)").matches) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || streaming) return;
    prompt.value = "";
    grow();
    send(text);
  });
  $("stop").addEventListener("click", () => streaming && streaming.controller.abort());
  $("new-chat").addEventListener("click", () => {
    currentId = null;
    save();
    renderMessages();
    toggleDrawer(false);
    prompt.focus();
  });
  $("conv-toggle").addEventListener("click", () => toggleDrawer($("drawer").hidden));
  $("settings-toggle").addEventListener("click", () => overlay($("settings").hidden ? "settings" : null));
  $("settings-close").addEventListener("click", () => overlay(null));
  $("scrim").addEventListener("click", () => overlay(null));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") overlay(null);
  });
  for (const id of ["set-model", "set-system", "set-temperature", "set-top-p", "set-max-tokens"]) {
    $(id).addEventListener("change", readSettings);
  }
  // Copy buttons of code blocks (markdown.js draws them; one listener serves all).
  $("messages").addEventListener("click", (e) => {
    const button = e.target.closest("button.copy");
    if (!button) return;
    const code = button.parentElement.querySelector("code").textContent;
    copyText(code).then(
      () => { button.textContent = "Copied"; },
      () => { button.textContent = "Copy failed"; },
    ).finally(() => setTimeout(() => { button.textContent = "Copy"; }, 1500));
  });
  $("chat").addEventListener("shown", () => {
    $("title").textContent = current() ? current().title : "New chat";
  });
  renderMessages();
}

/** The clipboard API exists only in secure contexts; plain HTTP on USB uses the old way. */
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("copy refused");
}

/** Stops an answer in progress (leaving the chat, or unpairing). */
export function stopChat() {
  if (streaming) streaming.controller.abort();
}
