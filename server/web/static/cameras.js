// Cameras list (/cameras): each camera with its device's health, heartbeat age, throughput, latest
// snapshot and case counts, from GET /api/v1/cameras, refreshed every REFRESH_MS.
"use strict";

(() => {
  const root = document.getElementById("cameras");
  if (!root) return;
  const { api, el } = curbwatch;

  const REFRESH_MS = 15000;
  const rows = document.getElementById("camera-rows");
  const empty = document.getElementById("cameras-empty");
  const count = document.getElementById("camera-count");
  const updated = document.getElementById("cameras-updated");
  const error = document.getElementById("cameras-error");

  const HEALTH = { online: "Online", stale: "No recent heartbeat", offline: "Offline", unknown: "Never reported" };

  function age(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return `${minutes} min`;
    const hours = Math.round(minutes / 60);
    return hours < 48 ? `${hours} h` : `${Math.round(hours / 24)} d`;
  }

  function dot(health) {
    return el("span", { class: `dot dot-${health}`, title: HEALTH[health] || health, "aria-label": HEALTH[health] || health });
  }

  function countLink(n, href) {
    return n ? el("a", { href }, n) : "0";
  }

  function row(camera) {
    const href = `/cameras/${encodeURIComponent(camera.camera_id)}`;
    const filter = `?camera=${encodeURIComponent(camera.camera_id)}`;
    const device = camera.device;
    const metrics = camera.metrics;
    const thumb = camera.snapshot
      ? el("img", { src: camera.snapshot.url, alt: `Latest image of ${camera.camera_id}`, loading: "lazy", width: "112", height: "63" })
      : el("span", { class: "no-thumb" }, "no image");
    const zones = camera.zones ? `${camera.zones.zones.length} · ${camera.zones_version}` : "edge's own file";
    return el("tr", {},
      el("td", { class: "thumb" }, el("a", { href }, thumb)),
      el("td", { class: "what" }, el("a", { href }, camera.camera_id),
        el("div", { class: "sub" }, metrics ? metrics.state : "not in the last heartbeat")),
      el("td", {}, dot(device.health), " ", device.device_id),
      el("td", { class: "age" }, device.heartbeat_age_s === null ? "never" : `${age(device.heartbeat_age_s)} ago`),
      el("td", { class: "num" }, metrics ? metrics.fps.toFixed(1) : "—"),
      el("td", { class: "num" }, metrics ? `${Math.round(metrics.inferred_share * 100)}%` : "—"),
      el("td", { class: "num" }, metrics ? `${Math.round(metrics.inference_ms)} ms` : "—"),
      el("td", { class: "num" }, countLink(camera.open_cases, `/cases${filter}`)),
      el("td", { class: "num" }, countLink(camera.awaiting_verification, `/queue${filter}`)),
      el("td", { class: "sub" }, zones));
  }

  async function refresh() {
    try {
      const cameras = await api("GET", "/api/v1/cameras");
      rows.replaceChildren(...cameras.map(row));
      empty.hidden = cameras.length > 0;
      count.textContent = `(${cameras.length})`;
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      error.hidden = true;
    } catch (failure) {
      error.textContent = `Could not load the cameras: ${failure.message}`;
      error.hidden = false;
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
