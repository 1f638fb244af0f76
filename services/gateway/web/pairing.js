// Pairing with the box from the browser: the SPAKE2 exchange of docs/pairing.md, run by
// pairing.wasm (built from services/gateway/pairing, the code the box runs too).
//
//   const { token, phoneId, device, fingerprint } = await pair("2718 2818", "My phone");
//
// Randomness is crypto.getRandomValues (also there on plain HTTP, unlike crypto.subtle).
// The setup code never leaves this page: only SPAKE2 messages and proofs are sent.

export class PairingError extends Error {
  constructor(message, { type = "pairing", status = 0, attemptsLeft } = {}) {
    super(message);
    this.type = type;
    this.status = status;
    this.attemptsLeft = attemptsLeft;
  }
}

// Status codes of the module's steps (src/wasm.rs).
const STEP_ERRORS = {
  [-1]: ["format", "A setup code is 8 digits."],
  [-2]: ["weak_code", "That is not a setup code a box would have (codes like 12345678 or 11111111 are never used). Check the code and try again."],
  [-3]: ["bad_message", "The box answered with a malformed pairing message. Try again."],
  [-4]: ["box_proof", "The box could not prove that it knows the setup code: this may not be your box. Pairing stopped."],
  [-5]: ["bad_seal", "The credential from the box did not decrypt. Pairing stopped."],
  [-6]: ["order", "Pairing steps ran out of order. Try again."],
};

let exportsPromise = null;

function loadModule() {
  exportsPromise ??= (async () => {
    const response = await fetch(new URL("./pairing.wasm", import.meta.url));
    if (!response.ok) throw new PairingError(`Loading pairing.wasm failed: ${response.status}`);
    const module = await WebAssembly.compile(await response.arrayBuffer());
    // The module needs nothing from the page; anything it imports fails loudly.
    const imports = {};
    for (const { module: name, name: field } of WebAssembly.Module.imports(module)) {
      imports[name] ??= {};
      imports[name][field] = () => { throw new Error(`pairing.wasm called ${name}.${field}`); };
    }
    const instance = await WebAssembly.instantiate(module, imports);
    return instance.exports;
  })();
  exportsPromise.catch(() => { exportsPromise = null; });
  return exportsPromise;
}

/** The code as the module wants it: eight digits; spaces and dashes are dropped. */
export function normalizeCode(code) {
  const digits = String(code).replace(/[\s\-.]/g, "");
  if (!/^\d{8}$/.test(digits)) throw new PairingError(STEP_ERRORS[-1][1], { type: "format" });
  return digits;
}

function check(rc) {
  if (rc < 0) {
    const [type, message] = STEP_ERRORS[rc] || ["pairing", `Pairing failed (${rc}).`];
    throw new PairingError(message, { type });
  }
}

/** Copies `bytes` into the module's memory; returns [ptr, len] for the step calls. */
function put(wasm, bytes) {
  const ptr = wasm.lb_alloc(bytes.length);
  new Uint8Array(wasm.memory.buffer, ptr, bytes.length).set(bytes);
  return [ptr, bytes.length];
}

function output(wasm) {
  return new Uint8Array(wasm.memory.buffer, wasm.lb_out_ptr(), wasm.lb_out_len()).slice();
}

/** Runs one step with inputs copied in and freed afterwards; returns its output. */
function step(wasm, fn, inputs) {
  const placed = inputs.map((bytes) => put(wasm, bytes));
  try {
    check(wasm[fn](...placed.flat()));
    const result = output(wasm);
    new Uint8Array(wasm.memory.buffer, wasm.lb_out_ptr(), wasm.lb_out_len()).fill(0);
    return result;
  } finally {
    for (const [ptr, len] of placed) {
      new Uint8Array(wasm.memory.buffer, ptr, len).fill(0);
      wasm.lb_free(ptr, len);
    }
  }
}

const toBase64 = (bytes) => btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

async function post(path, body) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new PairingError("Cannot reach the box. Is the phone connected to it (USB cable or the same Wi-Fi)?", { type: "network" });
  }
  let json = null;
  try {
    json = await response.json();
  } catch {
    // handled below
  }
  if (response.ok && json) return json;
  const error = (json && json.error) || {};
  throw new PairingError(describe(response.status, error), {
    type: error.type || "http_error",
    status: response.status,
    attemptsLeft: error.attempts_left,
  });
}

function describe(status, error) {
  if (error.type === "wrong_code") {
    const left = error.attempts_left;
    if (left === 0) return "Wrong setup code. Pairing is now closed until the box restarts.";
    return `Wrong setup code. ${left} attempt${left === 1 ? "" : "s"} left before pairing closes.`;
  }
  if (error.type === "unknown_session") return "The pairing attempt expired. Try again.";
  if (error.message) return error.message.charAt(0).toUpperCase() + error.message.slice(1) + ".";
  return `The box refused pairing (${status}).`;
}

/**
 * Pairs this browser with the box using its setup code.
 * Resolves to `{token, phoneId, device, fingerprint}`; rejects with a PairingError
 * whose message can be shown as it is.
 */
export async function pair(code, name) {
  const digits = normalizeCode(code);
  const wasm = await loadModule();
  // lb_start(code_ptr, code_len, seed_ptr): the 32-byte seed goes in as a third input.
  const seed = crypto.getRandomValues(new Uint8Array(32));
  const [codePtr, codeLen] = put(wasm, new TextEncoder().encode(digits));
  const [seedPtr, seedLen] = put(wasm, seed);
  seed.fill(0);
  let message;
  try {
    check(wasm.lb_start(codePtr, codeLen, seedPtr));
    message = output(wasm);
  } finally {
    for (const [ptr, len] of [[codePtr, codeLen], [seedPtr, seedLen]]) {
      new Uint8Array(wasm.memory.buffer, ptr, len).fill(0);
      wasm.lb_free(ptr, len);
    }
  }
  const started = await post("/v1/pairing/start", { name, message: toBase64(message) });
  const session = new TextEncoder().encode(started.session);
  const proof = step(wasm, "lb_finish", [fromBase64(started.message), session]);
  const finished = await post("/v1/pairing/finish", { session: started.session, proof: toBase64(proof) });
  const plain = step(wasm, "lb_open", [fromBase64(finished.proof), fromBase64(finished.sealed)]);
  const credential = JSON.parse(new TextDecoder().decode(plain));
  plain.fill(0);
  return {
    token: credential.token,
    phoneId: credential.phone_id,
    device: credential.device,
    fingerprint: credential.fingerprint,
  };
}

/**
 * Seals and opens what the app keeps on this phone with the key the box holds
 * (src/phone_storage.rs): `seal(text)` gives base64, `open(base64)` the text back, or
 * throws when the value was not sealed with this key (another box's, or changed).
 */
export async function storageCipher(keyBase64) {
  const wasm = await loadModule();
  const key = fromBase64(keyBase64);
  return {
    seal(text) {
      const nonce = crypto.getRandomValues(new Uint8Array(24));
      return toBase64(step(wasm, "lb_seal_stored", [key, nonce, new TextEncoder().encode(text)]));
    },
    open(sealed) {
      return new TextDecoder().decode(step(wasm, "lb_open_stored", [key, fromBase64(sealed)]));
    },
  };
}
