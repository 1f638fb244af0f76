// Llama Box web app: pairing, then chat, voice and device tabs.

import { forgetCredential, formatFingerprint, identifyBox, loadCredential, saveCredential, sealedWithoutKey, setUnauthorizedHandler } from "./api.js";
import { initChat, loadModels, overlay, stopChat } from "./chat.js";
import { initDevice, showDevice } from "./device.js";
import { pair } from "./pairing.js";
import { startVoice, stopVoice } from "./voice.js";

const $ = (id) => document.getElementById(id);
const TABS = ["chat", "voice", "device"];
const TITLES = { voice: "Voice", device: "Device" };

// ---- offline shell ---------------------------------------------------------------------

// Service workers exist only in secure contexts (HTTPS, or the box over loopback): over
// plain HTTP on the USB link the app still works, it just is not kept for offline use.
if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((e) => {
    console.warn("service worker not registered:", e);
  });
}

// ---- pairing ---------------------------------------------------------------------------

function defaultPhoneName() {
  const ua = navigator.userAgent;
  if (/Android/i.test(ua)) return "Android phone";
  if (/iPhone/i.test(ua)) return "iPhone";
  if (/iPad/i.test(ua)) return "iPad";
  if (/Macintosh/i.test(ua)) return navigator.maxTouchPoints > 1 ? "iPad" : "Mac";
  if (/Windows/i.test(ua)) return "Windows PC";
  if (/CrOS/i.test(ua)) return "Chromebook";
  if (/Linux/i.test(ua)) return "Linux computer";
  return "Phone";
}

async function showPairingState() {
  const state = $("pair-state");
  try {
    const response = await fetch("/v1/pairing", { cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    const status = await response.json();
    $("pair-device").textContent = status.device;
    if (status.open) {
      const minutes = Math.max(1, Math.ceil(status.closes_in_s / 60));
      const left = status.attempts_left < status.max_failures ? ` ${status.attempts_left} attempts left.` : "";
      state.textContent = `Pairing is open for ${minutes} more min.${left}`;
      state.className = "muted";
    } else if (status.attempts_left === 0) {
      state.textContent = `Pairing is closed until the box restarts: ${status.max_failures} wrong setup codes were tried.`;
      state.className = "error";
    } else {
      state.textContent = "Pairing is closed: the pairing window has ended. Restart the box, or open pairing from a phone that is already paired.";
      state.className = "error";
    }
    $("pair-button").disabled = !status.open;
  } catch {
    state.textContent = "Cannot reach the box. Connect the phone to it (USB cable or the same Wi-Fi) and reload.";
    state.className = "error";
  }
}

function showPairing(message) {
  stopChat();
  stopVoice();
  $("app").hidden = true;
  $("pairing").hidden = false;
  $("pair-form").hidden = false;
  $("pair-done").hidden = true;
  const error = $("pair-error");
  error.textContent = message || "";
  error.hidden = !message;
  if (!$("pair-name").value) $("pair-name").value = defaultPhoneName();
  showPairingState();
}

function initPairing() {
  const code = $("pair-code");
  // Digits only, shown as "1234 5678".
  code.addEventListener("input", () => {
    const digits = code.value.replace(/\D/g, "").slice(0, 8);
    code.value = digits.length > 4 ? `${digits.slice(0, 4)} ${digits.slice(4)}` : digits;
  });
  $("pair-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("pair-button");
    const error = $("pair-error");
    error.hidden = true;
    button.disabled = true;
    button.textContent = "Pairing…";
    try {
      const name = $("pair-name").value.trim() || defaultPhoneName();
      // The box may have been plugged in since the app opened: ask again who it is (and
      // for its storage key) before keeping a credential for it.
      await identifyBox();
      const credential = await pair(code.value, name);
      saveCredential({ ...credential, pairedAt: Date.now() });
      code.value = "";
      $("pair-form").hidden = true;
      $("pair-done").hidden = false;
      $("paired-device").textContent = credential.device;
      $("paired-fingerprint").textContent = formatFingerprint(credential.fingerprint);
      $("pair-state").textContent = "";
      $("pair-continue").focus();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      showPairingState();
    } finally {
      button.textContent = "Pair";
      button.disabled = false;
    }
  });
  $("pair-continue").addEventListener("click", () => showApp());
}

// ---- the paired app --------------------------------------------------------------------

function currentTab() {
  const tab = location.hash.slice(1);
  return TABS.includes(tab) ? tab : "chat";
}

function showTab(tab) {
  for (const name of TABS) $(name).hidden = name !== tab;
  for (const button of document.querySelectorAll(".tabs button")) {
    if (button.dataset.tab === tab) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  $("conv-toggle").hidden = tab !== "chat";
  $("settings-toggle").hidden = tab !== "chat";
  overlay(null);
  if (tab !== "chat") $("title").textContent = TITLES[tab];
  if (tab === "voice") startVoice();
  else stopVoice();
  if (tab === "device") showDevice(() => unpaired());
  if (tab === "chat") $("chat").dispatchEvent(new Event("shown"));
}

let appReady = false;

function showApp() {
  $("pairing").hidden = true;
  $("app").hidden = false;
  if (!appReady) {
    appReady = true;
    initChat();
    initDevice(() => unpaired());
    for (const button of document.querySelectorAll(".tabs button")) {
      button.addEventListener("click", () => {
        history.replaceState(null, "", `#${button.dataset.tab}`);
        showTab(button.dataset.tab);
      });
    }
  }
  loadModels();
  showTab(currentTab());
}

function unpaired(message) {
  forgetCredential();
  showPairing(message);
}

setUnauthorizedHandler(() => {
  if (!loadCredential()) return;
  unpaired("This phone is no longer paired with the box (its pairing was revoked). Pair again with the setup code.");
});

// ---- start -----------------------------------------------------------------------------

// The label's QR code opens `/#pair` (the code is typed from the label, never carried by
// a link a spoofed name could serve). A `#pair=<code>` someone typed themselves fills the
// form; the fragment never leaves the phone and is taken out of the address bar and
// history at once.
function codeFromLink() {
  if (location.hash === "#pair") {
    history.replaceState(null, "", location.pathname);
    return;
  }
  const match = /^#pair=([0-9 -]{8,12})$/.exec(location.hash);
  if (!match) return;
  history.replaceState(null, "", location.pathname);
  $("pair-code").value = match[1];
}

codeFromLink();
initPairing();
// Which box this is decides whose credential and conversations the app may use.
identifyBox().then(() => {
  if (loadCredential()) showApp();
  else if (sealedWithoutKey()) showPairing("What this phone keeps for the box is sealed with the box's key: connect the phone to the box to open it.");
  else showPairing();
});
