// The Models section of the device screen (docs/models.md): the models on the box, the
// ones its signed catalog offers, pulling one (with progress, cancellable) and deleting
// one. Installed models come from Ollama's `/api/tags` (the factory model too), the
// catalog, the pull in progress and the free space from `/v1/device/models`.

import { apiFetch, apiJson } from "./api.js";
import { $, text } from "./dom.js";

function megabytes(bytes) {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(1)} GB` : `${Math.round(bytes / 1e6)} MB`;
}

/** The pull this page runs, so Cancel can stop it (aborting the stream cancels it). */
let pulling = null;

function setState(message, isError = false) {
  const state = $("models-state");
  state.textContent = message;
  state.className = isError ? "error" : "muted";
}

function button(label, className, onClick) {
  const b = text("button", label, className);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

async function makeDefault(name, label) {
  try {
    await apiJson("/v1/device/models/default", { method: "POST", json: { model: name } });
    setState(`${label} is loaded when the box starts.`);
  } catch (e) {
    if (e.status !== 401) setState(`Could not change the default model: ${e.message}`, true);
  }
  loadModels();
}

async function remove(name) {
  if (!confirm(`Delete ${name} from the box? It can be pulled again from the catalog.`)) return;
  try {
    await apiFetch("/api/delete", { method: "DELETE", json: { model: name } });
    setState(`Deleted ${name}.`);
  } catch (e) {
    if (e.status !== 401) setState(`Deleting ${name} failed: ${e.message}`, true);
  }
  loadModels();
}

/** Reads Ollama's NDJSON progress lines until the pull ends; throws on an error line. */
async function follow(response, name) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const bar = $("models-progress");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (!line) continue;
      const part = JSON.parse(line);
      if (part.error) throw new Error(part.error);
      if (part.total) {
        bar.max = part.total;
        bar.value = part.completed || 0;
        setState(`Pulling ${name}: ${megabytes(part.completed || 0)} of ${megabytes(part.total)}, each piece checked against its signature`);
      } else if (part.status === "success") {
        return;
      }
    }
  }
  throw new Error("the box stopped answering before the pull ended");
}

async function pull(name) {
  if (pulling) return;
  pulling = new AbortController();
  $("models-progress").hidden = false;
  $("models-progress").removeAttribute("value");
  $("models-cancel").hidden = false;
  setState(`Pulling ${name}…`);
  try {
    const response = await apiFetch("/api/pull", {
      method: "POST",
      json: { model: name, stream: true },
      signal: pulling.signal,
    });
    await follow(response, name);
    setState(`${name} is installed.`);
  } catch (e) {
    if (e.name === "AbortError") setState(`Cancelled: the pieces already checked are kept, so pulling ${name} again resumes.`);
    else if (e.status !== 401) setState(`Pulling ${name} failed: ${e.message}`, true);
  } finally {
    pulling = null;
    $("models-progress").hidden = true;
    $("models-cancel").hidden = true;
    loadModels();
  }
}

function row(name, facts, actions) {
  const li = document.createElement("li");
  const who = document.createElement("div");
  who.className = "who";
  who.append(text("span", name));
  who.append(text("span", facts, "since"));
  li.append(who, ...actions);
  return li;
}

export async function loadModels() {
  const installed = $("models-installed");
  const available = $("models-available");
  let tags;
  let device;
  try {
    [tags, device] = await Promise.all([apiJson("/api/tags"), apiJson("/v1/device/models")]);
  } catch (e) {
    if (e.status !== 401) setState(`The models could not be loaded: ${e.message}`, true);
    return;
  }
  const pulled = new Set((device.installed || []).map((m) => m.name));
  const chosen = device.default;
  installed.replaceChildren(
    ...tags.models.map((m) => {
      const builtIn = !pulled.has(m.model);
      const isDefault = builtIn ? !chosen : chosen === m.model;
      const details = `${megabytes(m.size)} · ${m.details?.quantization_level ?? "?"} · ${m.details?.parameter_size ?? "?"} parameters${builtIn ? " · built in" : ""}${isDefault ? " · default" : ""}`;
      const actions = isDefault ? [] : [button("Make default", "", () => makeDefault(builtIn ? "" : m.model, m.model))];
      if (!builtIn) actions.push(button("Delete", "danger", () => remove(m.model)));
      return row(m.model, details, actions);
    }),
  );
  const offered = (device.catalog || []).filter((m) => m.kind === "llm" && !pulled.has(m.name));
  const have = new Set(tags.models.map((m) => m.model));
  available.replaceChildren(
    ...offered
      .filter((m) => !have.has(m.name))
      .map((m) => row(m.name, `${megabytes(m.length)} · ${m.quantization} · ${m.parameters} parameters · ${m.license}`, [
        button("Pull", "", () => pull(m.name)),
      ])),
  );
  if (!device.catalog) available.replaceChildren(text("li", "Check the catalog to see what the update server offers.", "muted"));
  else if (!available.children.length) available.replaceChildren(text("li", "Every model the catalog offers is on the box.", "muted"));
  $("models-free").textContent = device["free-bytes"] != null ? `${megabytes(device["free-bytes"])} free for models.` : "";
}

export function initModels() {
  $("models-catalog").addEventListener("click", async () => {
    setState("Checking the catalog…");
    try {
      await apiJson("/v1/device/models/catalog", { method: "POST" });
    } catch (e) {
      if (e.status !== 401) {
        setState(`Checking the catalog failed: ${e.message}`, true);
        return;
      }
    }
    loadModels();
  });
  $("models-cancel").addEventListener("click", () => pulling?.abort());
}
