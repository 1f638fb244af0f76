// The service worker: keeps the app shell so the app opens without the box (offline
// once loaded). The API (/v1/…, /api/…, /health) is never cached: answers, phones and pairing
// always come from the box, or fail.
//
// VERSION is replaced with a hash of the app's files when the web folder is assembled
// (xtask/src/web.rs), so a new app means a new worker and a fresh cache.

const VERSION = "dev";
const CACHE = `llamabox-shell-${VERSION}`;
const SHELL = [
  "/",
  "/index.html",
  "/app.css",
  "/app.js",
  "/api.js",
  "/chat.js",
  "/device.js",
  "/dom.js",
  "/markdown.js",
  "/models.js",
  "/pairing.js",
  "/voice.js",
  "/pairing.wasm",
  "/manifest.webmanifest",
  "/icon.svg",
  "/icon-192.png",
  "/icon-512.png",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(CACHE)
      .then((cache) => cache.addAll(SHELL.map((path) => new Request(path, { cache: "reload" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("llamabox-shell-") && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

function isApi(url) {
  return url.pathname.startsWith("/v1/") || url.pathname === "/v1" || url.pathname.startsWith("/api/") || url.pathname === "/health";
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin || isApi(url)) return;
  // Pages: the shell (unknown paths are the app too, as on the box).
  const key = request.mode === "navigate" ? "/index.html" : url.pathname;
  event.respondWith(
    caches.open(CACHE).then(async (cache) => {
      const cached = await cache.match(key);
      // Cache first, refreshed in the background while the box answers.
      const fresh = fetch(request).then((response) => {
        if (response.ok && SHELL.includes(key)) cache.put(key, response.clone());
        return response;
      });
      if (cached) {
        event.waitUntil(fresh.catch(() => {}));
        return cached;
      }
      return fresh;
    }),
  );
});
