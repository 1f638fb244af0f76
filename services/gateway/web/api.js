// Talking to the box: the stored credential, authenticated fetch, and server-sent
// events read from a fetch body (EventSource cannot send the Authorization header).

// ---- per-box storage -------------------------------------------------------------------
//
// What this app keeps (the credential, conversations, settings) is kept per box. Every
// box's USB link is the same origin (http://10.55.0.1), so another box must never be
// sent this box's token nor see its conversations: keys carry the box's certificate
// fingerprint, as the box states it (GET /v1/pairing) and as pairing confirmed it.

const LAST_BOX_KEY = "llamabox.last-box";
/** Keys of versions that kept one box's data at fixed names. */
const UNKEYED = ["credential", "conversations", "current", "settings"];
let box = null;

const normalFingerprint = (hex) => String(hex || "").replace(/[^0-9a-f]/gi, "").toLowerCase();

/** Asks the box who it is; offline, the box this app talked to last. */
export async function identifyBox() {
  let fingerprint = "";
  try {
    const response = await fetch("/v1/pairing", { cache: "no-store" });
    if (response.ok) fingerprint = normalFingerprint((await response.json()).fingerprint);
  } catch {
    // offline: the service worker serves the app
  }
  if (fingerprint) localStorage.setItem(LAST_BOX_KEY, fingerprint);
  else fingerprint = localStorage.getItem(LAST_BOX_KEY) || "unknown";
  box = fingerprint;
  adoptUnkeyed();
  return box;
}

/** The storage key of `name` for this box. */
export function boxKey(name) {
  return `llamabox.${box || "unknown"}.${name}`;
}

// Data an earlier version kept at fixed names goes to the box its credential names (or
// to this box when there is no credential), once.
function adoptUnkeyed() {
  let owner = box;
  try {
    const old = JSON.parse(localStorage.getItem("llamabox.credential") || "null");
    if (old && old.fingerprint) owner = normalFingerprint(old.fingerprint);
  } catch {
    // unreadable: treated as this box's
  }
  for (const name of UNKEYED) {
    const value = localStorage.getItem(`llamabox.${name}`);
    if (value === null) continue;
    const key = `llamabox.${owner}.${name}`;
    if (localStorage.getItem(key) === null) localStorage.setItem(key, value);
    localStorage.removeItem(`llamabox.${name}`);
  }
}

export function loadCredential() {
  try {
    const credential = JSON.parse(localStorage.getItem(boxKey("credential")) || "null");
    return credential && typeof credential.token === "string" ? credential : null;
  } catch {
    return null;
  }
}

export function saveCredential(credential) {
  localStorage.setItem(boxKey("credential"), JSON.stringify(credential));
}

export function forgetCredential() {
  localStorage.removeItem(boxKey("credential"));
}

/** A SHA-256 fingerprint the way browsers show certificates: AB:CD:… */
export function formatFingerprint(hex) {
  return (String(hex).toUpperCase().match(/../g) || []).join(":");
}

/** An API error in the box's shape: `{"error": {"message", "type", …}}`. */
export class ApiError extends Error {
  constructor(status, type, message, details = {}) {
    super(message);
    this.status = status;
    this.type = type;
    this.details = details;
  }
}

let onUnauthorized = () => {};

/** Called with the error when the box refuses this phone's credential (revoked). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's or the browser's page
  }
  const error = body && body.error;
  const message = (error && error.message) || `${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, (error && error.type) || "http_error", message, error || {});
}

/** fetch with this phone's credential; non-2xx answers throw an ApiError. */
export async function apiFetch(path, options = {}) {
  const credential = loadCredential();
  const headers = new Headers(options.headers || {});
  if (credential) headers.set("Authorization", `Bearer ${credential.token}`);
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    options = { ...options, body: JSON.stringify(options.json) };
  }
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "network", "Cannot reach the box (is the phone still connected to it?)");
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401 && credential) onUnauthorized(error);
    throw error;
  }
  return response;
}

export async function apiJson(path, options) {
  const response = await apiFetch(path, options);
  return response.status === 204 ? null : response.json();
}

/**
 * The events of a text/event-stream response: yields `{event, data}` per event.
 * Comments (keep-alives) are skipped.
 */
export async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const event = parseEvent(block);
        if (event) yield event;
      }
    }
    const last = parseEvent(buffer + decoder.decode());
    if (last) yield last;
  } finally {
    reader.releaseLock();
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value;
  }
  return data.length ? { event, data: data.join("\n") } : null;
}
