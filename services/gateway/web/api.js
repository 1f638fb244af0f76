// Talking to the box: the stored credential, authenticated fetch, and server-sent
// events read from a fetch body (EventSource cannot send the Authorization header).

import { storageCipher } from "./pairing.js";

// ---- per-box storage -------------------------------------------------------------------
//
// What this app keeps (the credential, conversations, settings) is kept per box. Every
// box's USB link is the same origin (http://10.55.0.1), so another box must never be
// sent this box's token nor see its conversations: keys carry the box's certificate
// fingerprint, as the box states it (GET /v1/pairing) and as pairing confirmed it.
//
// Any page served at that origin can read its storage, though: another box's app, or
// a rogue gadget's own script. So on plain HTTP the values are sealed with a key the box
// hands out on its USB link only (`storage_key`), kept in memory, never on the phone.
// A page that is not this box reads ciphertext. Without the key (the box not
// connected) sealed values read as absent and nothing is written. Over HTTPS the
// origin is the box's own name or address, authenticated by its certificate; the box
// sends no key there and values are kept as they are.

const LAST_BOX_KEY = "llamabox.last-box";
const SEALED = "sealed:v1:";
/** What the app keeps per box (versions before per-box keys kept them at fixed names). */
const KEPT = ["credential", "conversations", "current", "settings"];
let box = null;
let cipher = null;

const normalFingerprint = (hex) => String(hex || "").replace(/[^0-9a-f]/gi, "").toLowerCase();

/** Asks the box who it is; offline, the box this app talked to last. */
export async function identifyBox() {
  let fingerprint = "";
  let storageKey = "";
  try {
    const response = await fetch("/v1/pairing", { cache: "no-store" });
    if (response.ok) {
      const status = await response.json();
      fingerprint = normalFingerprint(status.fingerprint);
      storageKey = typeof status.storage_key === "string" ? status.storage_key : "";
    }
  } catch {
    // offline: the service worker serves the app
  }
  if (fingerprint) localStorage.setItem(LAST_BOX_KEY, fingerprint);
  else fingerprint = localStorage.getItem(LAST_BOX_KEY) || "unknown";
  box = fingerprint;
  cipher = null;
  if (storageKey) {
    try {
      cipher = await storageCipher(storageKey);
    } catch (e) {
      console.error("cannot load the storage cipher", e);
    }
  }
  adoptUnkeyed();
  sealPlainValues();
  return box;
}

/** The storage key of `name` for this box. */
function boxKey(name) {
  return `llamabox.${box || "unknown"}.${name}`;
}

/** This box's value of `name`, opened; null when absent, or sealed and not openable here. */
export function boxGet(name) {
  const stored = localStorage.getItem(boxKey(name));
  if (stored === null || !stored.startsWith(SEALED)) return stored;
  if (!cipher) return null;
  try {
    return cipher.open(stored.slice(SEALED.length));
  } catch {
    return null; // sealed by another box that claims this one's fingerprint
  }
}

/** Keeps `value` for this box: sealed when the box gave a key; throws when it must be
 *  sealed and cannot be (plain HTTP without the box). */
export function boxSet(name, value) {
  if (cipher) {
    localStorage.setItem(boxKey(name), SEALED + cipher.seal(value));
  } else if (location.protocol === "https:") {
    localStorage.setItem(boxKey(name), value);
  } else {
    throw new Error("the box is not connected, so nothing can be kept on this phone for it");
  }
}

/** Whether this box's credential is kept sealed and the box is not here to open it. */
export function sealedWithoutKey() {
  const stored = localStorage.getItem(boxKey("credential"));
  return !cipher && stored !== null && stored.startsWith(SEALED);
}

export function boxRemove(name) {
  localStorage.removeItem(boxKey(name));
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
  for (const name of KEPT) {
    const value = localStorage.getItem(`llamabox.${name}`);
    if (value === null) continue;
    const key = `llamabox.${owner}.${name}`;
    if (localStorage.getItem(key) === null) localStorage.setItem(key, value);
    localStorage.removeItem(`llamabox.${name}`);
  }
}

// Values an earlier version kept unsealed for this box are sealed once it gives a key.
function sealPlainValues() {
  if (!cipher) return;
  for (const name of KEPT) {
    const stored = localStorage.getItem(boxKey(name));
    if (stored !== null && !stored.startsWith(SEALED)) boxSet(name, stored);
  }
}

export function loadCredential() {
  try {
    const credential = JSON.parse(boxGet("credential") || "null");
    return credential && typeof credential.token === "string" ? credential : null;
  } catch {
    return null;
  }
}

export function saveCredential(credential) {
  boxSet("credential", JSON.stringify(credential));
}

export function forgetCredential() {
  boxRemove("credential");
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
