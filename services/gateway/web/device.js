// The device screen: this box, its paired phones (revocable), opening pairing for
// another phone, and the box's status when the box reports one.

import { apiJson, formatFingerprint, loadCredential } from "./api.js";
import { initModels, loadModels } from "./models.js";
import { $, text } from "./dom.js";

async function loadPhones(onSelfRevoked) {
  const list = $("phone-list");
  let result;
  try {
    result = await apiJson("/v1/phones");
  } catch (e) {
    if (e.status !== 401) list.replaceChildren(text("li", `Could not load the phones: ${e.message}`, "error"));
    return;
  }
  list.replaceChildren();
  for (const phone of result.phones) {
    const li = document.createElement("li");
    const who = document.createElement("div");
    who.className = "who";
    who.append(text("span", phone.name));
    const you = phone.id === result.you;
    if (you) who.append(text("span", "this phone", "you"));
    if (phone.id === result.owner) who.append(text("span", "owner", "you"));
    who.append(text("span", `paired ${new Date(phone.paired_at * 1000).toLocaleString()}`, "since"));
    const revoke = text("button", "Revoke", "danger");
    revoke.type = "button";
    revoke.addEventListener("click", async () => {
      const question = you
        ? "Revoke this phone? It will need the setup code to pair again."
        : `Revoke “${phone.name}”? It will need the setup code to pair again.`;
      if (!confirm(question)) return;
      try {
        await apiJson(`/v1/phones/${encodeURIComponent(phone.id)}`, { method: "DELETE" });
      } catch (e) {
        if (e.status !== 401) alert(`Revoking failed: ${e.message}`);
        return;
      }
      if (you) onSelfRevoked();
      else loadPhones(onSelfRevoked);
    });
    // The owner (the phone paired first) may remove any phone; others only themselves.
    if (you || result.you === result.owner) li.append(who, revoke);
    else li.append(who);
    list.append(li);
  }
}

function facts(entries) {
  const dl = document.createElement("dl");
  dl.className = "facts";
  for (const [key, value] of entries) {
    dl.append(text("dt", key));
    dl.append(text("dd", typeof value === "object" && value !== null ? JSON.stringify(value) : String(value)));
  }
  return dl;
}

function gigabytes(bytes) {
  return `${(bytes / 1e9).toFixed(1)} GB`;
}

/** One part of the status: its facts, or why the box could not read it. */
function partFacts(part, label, describe) {
  if (!part || typeof part !== "object") return [];
  if (part.error) return [[label, `not available: ${part.error}`]];
  return describe(part);
}

function renderStatus(status) {
  const entries = [
    ...partFacts(status.release, "Version", (r) => [["Version", `${r.version ?? "?"} (slot ${r.slot ?? "?"})`]]),
    ...partFacts(status.storage, "Storage", (s) => [["Storage", `${gigabytes(s.free_bytes)} free of ${gigabytes(s.total_bytes)}`]]),
    ...partFacts(status.update, "Updates", (u) => [["Updates", u.available ? `${u.available} available (${u.phase})` : `${u.phase}${u.last_result ? `: ${u.last_result}` : ""}`]]),
  ];
  const out = [facts(entries)];
  if (Array.isArray(status.services)) {
    const list = document.createElement("ul");
    list.className = "service-list";
    for (const service of status.services) {
      const state = service.ready ? "ready" : service.state;
      list.append(text("li", `${service.name}: ${state}${service.critical ? "" : " (optional)"}`, service.ready || service.state === "stopped" ? "" : "error"));
    }
    out.push(text("h3", "Services"), list);
  } else if (status.services?.error) {
    out.push(text("p", `Services: not available: ${status.services.error}`, "muted"));
  }
  return out;
}

/** The Updates section: what the update service says, and Install when it has one. Its
 * status keeps the update service's own (hyphenated) names: docs/updates.md. */
function showUpdate(update) {
  const state = $("update-state");
  const apply = $("update-apply");
  apply.hidden = true;
  if (!update || update.error) {
    state.textContent = update?.error ? `The update service is not available: ${update.error}` : "";
    return;
  }
  if (update.phase === "installing") {
    const total = update["total-bytes"];
    const percent = total ? Math.floor((100 * update["done-bytes"]) / total) : 0;
    state.textContent = `Installing ${update.available ?? "an update"}: ${percent}%`;
  } else if (update.phase === "installed") {
    state.textContent = "The update is installed: it takes effect when the box restarts.";
  } else if (update.available) {
    state.textContent = `Version ${update.available} is available (running ${update["running-version"]}).`;
    apply.textContent = `Install ${update.available}`;
    apply.hidden = false;
  } else {
    const last = update["last-result"];
    state.textContent = `Running ${update["running-version"]}.${last ? ` ${last}` : ""}`;
  }
}

async function loadStatus() {
  const box = $("dev-status");
  try {
    const status = await apiJson("/v1/device/status");
    box.className = "";
    box.replaceChildren(...renderStatus(status || {}));
    showUpdate(status?.update);
  } catch (e) {
    if (e.status === 401) return;
    box.className = "muted";
    box.textContent = e.status === 404 || e.status === 502 || e.status === 503
      ? "Device status (services, storage, version) is not available on this box."
      : `Device status could not be loaded: ${e.message}`;
  }
}

export function showDevice(onSelfRevoked) {
  const credential = loadCredential();
  if (credential) {
    $("dev-name").textContent = credential.device;
    $("dev-fingerprint").textContent = formatFingerprint(credential.fingerprint);
  }
  loadPhones(onSelfRevoked);
  loadStatus();
  loadModels();
}

export function initDevice(onForget) {
  initModels();
  $("update-check").addEventListener("click", async () => {
    const state = $("update-state");
    state.textContent = "Checking…";
    try {
      const checked = await apiJson("/v1/update/check", { method: "POST" });
      state.textContent = checked.result;
      loadStatus();
    } catch (e) {
      if (e.status !== 401) state.textContent = `Checking failed: ${e.message}`;
    }
  });
  $("update-apply").addEventListener("click", async () => {
    if (!confirm("Install the update? The box keeps working while it installs, and uses it after its next restart.")) return;
    try {
      await apiJson("/v1/update/apply", { method: "POST" });
      loadStatus();
    } catch (e) {
      if (e.status !== 401) $("update-state").textContent = `Installing failed: ${e.message}`;
    }
  });
  $("pair-another").addEventListener("click", async () => {
    const state = $("window-state");
    try {
      const window = await apiJson("/v1/pairing/window", { method: "POST" });
      const minutes = Math.max(1, Math.round(window.closes_in_s / 60));
      state.textContent = `Pairing is open for ${minutes} min: open this app on the other phone and enter the box's setup code.`;
    } catch (e) {
      if (e.status !== 401) state.textContent = `Could not open pairing: ${e.message}`;
    }
  });
  $("forget").addEventListener("click", async () => {
    if (!confirm("Unpair this phone? It is removed from the box, and pairing again needs the setup code.")) return;
    const credential = loadCredential();
    try {
      if (credential) await apiJson(`/v1/phones/${encodeURIComponent(credential.phoneId)}`, { method: "DELETE" });
    } catch {
      // Unreachable box or already revoked: forget it here anyway.
    }
    onForget();
  });
}
