// One camera (/cameras/<id>): its latest snapshot with the published zones drawn over it, and for
// supervisors a zone editor. The SVG overlay's viewBox is the zone file's frame_wh, so a point
// clicked on the image is stored in the file's own pixel coordinates whatever the displayed size.
// "Publish to edge" PUTs the zone file; the device's reported version shows whether it applied it.
"use strict";

(() => {
  const root = document.getElementById("camera");
  if (!root) return;
  const { api, el, svg } = curbwatch;

  const cameraId = root.dataset.cameraId;
  const canEdit = root.dataset.canEdit === "true";
  const url = `/api/v1/cameras/${encodeURIComponent(cameraId)}`;
  const REFRESH_MS = 5000;
  const HANDLE_PX = 6;
  const LABEL_PX = 14;
  const DEFAULT_FRAME = [1280, 720];
  // The keys each kind takes besides name, kind, polygon, schedule and timezone (extra keys are refused).
  const KIND_KEYS = {
    no_parking: ["min_dwell_s", "event_codes", "vehicle_classes", "two_wheeler_classes"],
    no_vending: ["min_dwell_s", "event_codes", "person_classes", "vending_classes", "vendor_radius"],
    bin_site: ["min_dwell_s", "event_codes", "clear_dwell_s"],
    permitted_vending: [],
    privacy_mask: [],
  };
  const LIST_FIELDS = ["vehicle_classes", "two_wheeler_classes", "person_classes", "vending_classes"];
  const NUMBER_FIELDS = ["min_dwell_s", "clear_dwell_s"];

  const image = document.getElementById("snapshot");
  const overlay = document.getElementById("zone-svg");
  const noSnapshot = document.getElementById("no-snapshot");
  const zoneList = document.getElementById("zone-list");
  const form = document.getElementById("zone-form");
  const errors = document.getElementById("zone-errors");
  const published = document.getElementById("zone-published");
  const timezone = document.getElementById("zone-timezone");

  let camera = null;
  let doc = null; // the zone file being edited
  let selected = -1;
  let dirty = false;
  let drag = null;
  let undelivered = null; // a version the broker refused

  const copy = (value) => JSON.parse(JSON.stringify(value));

  function startingDocument() {
    if (camera.zones) return copy(camera.zones);
    const snapshot = camera.snapshot;
    return {
      version: 1,
      camera: cameraId,
      frame_wh: snapshot ? [snapshot.width, snapshot.height] : DEFAULT_FRAME,
      timezone: root.dataset.timezone,
      zones: [],
    };
  }

  function label(value) {
    const text = String(value).replaceAll("_", " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "—";
  }

  function facts(target, pairs) {
    target.replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
  }

  function showCamera() {
    const device = camera.device;
    const metrics = camera.metrics;
    const filter = `?camera=${encodeURIComponent(cameraId)}`;
    document.getElementById("camera-health").replaceChildren(
      el("span", { class: `dot dot-${device.health}` }), " ", label(device.health));
    facts(document.getElementById("facts"), [
      ["Device", device.device_id],
      ["Heartbeat", device.heartbeat_at ? `${when(device.heartbeat_at)} (${Math.round(device.heartbeat_age_s)} s ago)` : "never"],
      ["Throughput", metrics ? `${metrics.fps.toFixed(1)} fps · ${Math.round(metrics.inferred_share * 100)}% inferred · ${Math.round(metrics.inference_ms)} ms` : "—"],
      ["Open cases", el("a", { href: `/cases${filter}` }, camera.open_cases)],
      ["Awaiting verification", el("a", { href: `/queue${filter}` }, camera.awaiting_verification)],
      ["Snapshot", camera.snapshot ? `${label(camera.snapshot.role)}, ${when(camera.snapshot.ts)}` : "none yet"],
    ]);
    showConfig();
  }

  function configState(device) {
    if (!device.desired_version) return "The edge runs its own zone file; nothing was published from here.";
    if (undelivered === device.desired_version) return "Not delivered: the broker refused it. Publish again.";
    if (device.reported_version === device.desired_version) return "Applied by the device.";
    if (device.reported_error) return `Refused by the device: ${device.reported_error}`;
    return "Waiting for the device to apply it…";
  }

  function showConfig() {
    const device = camera.device;
    facts(document.getElementById("config-facts"), [
      ["Published", device.desired_version ? `${device.desired_version} (${when(device.desired_at)})` : "—"],
      ["Applied on device", device.reported_version ? `${device.reported_version} (${when(device.reported_at)})` : "—"],
      ["State", configState(device)],
    ]);
  }

  // Drawing ------------------------------------------------------------------------------------

  function frame() {
    return doc.frame_wh;
  }

  // Frame pixels per screen pixel, so handles and labels keep their on-screen size.
  function scale() {
    const shown = overlay.getBoundingClientRect().width || frame()[0];
    return frame()[0] / shown;
  }

  function toFrame(event) {
    const point = overlay.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    const local = point.matrixTransform(overlay.getScreenCTM().inverse());
    const [width, height] = frame();
    return [Math.round(Math.min(width, Math.max(0, local.x))), Math.round(Math.min(height, Math.max(0, local.y)))];
  }

  function zoneShape(zone, index) {
    const points = zone.polygon.map((point) => point.join(",")).join(" ");
    const classes = `zone kind-${zone.kind}${index === selected ? " selected" : ""}`;
    const shape = zone.polygon.length >= 3
      ? svg("polygon", { points, class: classes, "data-index": index })
      : svg("polyline", { points, class: classes, "data-index": index });
    const group = svg("g", {}, shape);
    if (zone.polygon.length) {
      const [x, y] = zone.polygon[0];
      const size = LABEL_PX * scale();
      group.append(svg("text", { x, y, class: "zone-label", dy: "-0.4em", "font-size": size, "stroke-width": size / 5 },
        zone.name));
    }
    if (canEdit && index === selected) {
      const radius = HANDLE_PX * scale();
      zone.polygon.forEach(([x, y], point) => {
        group.append(svg("circle", { cx: x, cy: y, r: radius, class: "handle", "data-point": point }));
      });
    }
    return group;
  }

  function draw() {
    const [width, height] = frame();
    overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
    overlay.setAttribute("preserveAspectRatio", "none");
    overlay.replaceChildren(...doc.zones.map(zoneShape));
    if (timezone) timezone.value = doc.timezone || "";
    showList();
  }

  function showList() {
    zoneList.replaceChildren(...doc.zones.map((zone, index) => {
      const item = el("button", { type: "button", class: index === selected ? "selected" : "", "data-index": index },
        el("strong", {}, zone.name), ` ${label(zone.kind)} · ${zone.polygon.length} points`);
      return el("li", {}, item);
    }));
    if (!doc.zones.length) zoneList.append(el("li", { class: "sub" }, "No zones."));
    if (!canEdit) return;
    document.getElementById("zone-delete").disabled = selected < 0;
    form.hidden = selected < 0;
    if (selected >= 0) fillForm(doc.zones[selected]);
  }

  // Editing ------------------------------------------------------------------------------------

  function changed() {
    dirty = true;
    published.hidden = true;
    draw();
  }

  function select(index) {
    selected = index;
    draw();
  }

  function fillForm(zone) {
    form.elements.name.value = zone.name;
    form.elements.kind.value = zone.kind;
    for (const name of NUMBER_FIELDS) form.elements[name].value = zone[name] ?? "";
    for (const name of LIST_FIELDS) form.elements[name].value = (zone[name] || []).join(", ");
    for (const field of form.querySelectorAll("[data-field]")) {
      field.hidden = !KIND_KEYS[zone.kind].includes(field.dataset.field);
    }
    document.getElementById("point-count").textContent =
      zone.polygon.length < 3 ? `Click on the image to add points (${zone.polygon.length} of at least 3).` : "";
  }

  function setKind(zone, kind) {
    const keep = new Set(KIND_KEYS[kind]);
    for (const key of Object.values(KIND_KEYS).flat()) if (!keep.has(key)) delete zone[key];
    if (kind === "privacy_mask") delete zone.schedule; // masks are always in force
    zone.kind = kind;
  }

  function readField(zone, target) {
    const name = target.name;
    const value = target.value.trim();
    if (name === "kind") {
      setKind(zone, value);
    } else if (name === "name") {
      zone.name = value;
    } else if (NUMBER_FIELDS.includes(name)) {
      if (value === "") delete zone[name]; // the kind's default applies
      else zone[name] = Number(value);
    } else if (LIST_FIELDS.includes(name)) {
      const items = value.split(",").map((item) => item.trim()).filter(Boolean);
      if (items.length) zone[name] = items;
      else delete zone[name];
    }
  }

  function bindEditor() {
    overlay.classList.add("editable");
    form.addEventListener("input", (event) => {
      if (selected < 0) return;
      readField(doc.zones[selected], event.target);
      changed();
    });
    form.addEventListener("submit", (event) => event.preventDefault());
    zoneList.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-index]");
      if (button) select(Number(button.dataset.index));
    });
    document.getElementById("zone-add").addEventListener("click", () => {
      const names = new Set(doc.zones.map((zone) => zone.name));
      let n = doc.zones.length + 1;
      while (names.has(`zone-${n}`)) n += 1;
      doc.zones.push({ name: `zone-${n}`, kind: "no_parking", polygon: [] });
      selected = doc.zones.length - 1;
      changed();
    });
    document.getElementById("zone-delete").addEventListener("click", () => {
      if (selected < 0 || !window.confirm(`Delete zone ${doc.zones[selected].name}?`)) return;
      doc.zones.splice(selected, 1);
      selected = -1;
      changed();
    });
    timezone.addEventListener("input", () => { doc.timezone = timezone.value.trim(); dirty = true; });
    document.getElementById("zone-reset").addEventListener("click", () => {
      doc = startingDocument();
      selected = -1;
      dirty = false;
      errors.hidden = true;
      draw();
    });
    document.getElementById("zone-publish").addEventListener("click", publish);
    overlay.addEventListener("pointerdown", pointerDown);
    overlay.addEventListener("pointermove", (event) => {
      if (!drag) return;
      doc.zones[selected].polygon[drag.point] = toFrame(event);
      drag.moved = true;
      draw();
    });
    overlay.addEventListener("pointerup", () => {
      if (drag && drag.moved) changed();
      drag = null;
    });
  }

  function pointerDown(event) {
    const target = event.target;
    if (target.classList.contains("handle")) {
      const point = Number(target.dataset.point);
      if (event.shiftKey) {
        doc.zones[selected].polygon.splice(point, 1);
        changed();
        return;
      }
      drag = { point, moved: false };
      overlay.setPointerCapture(event.pointerId);
      return;
    }
    const index = target.dataset.index === undefined ? -1 : Number(target.dataset.index);
    if (index >= 0 && index !== selected) {
      select(index);
      return;
    }
    if (selected < 0) return;
    doc.zones[selected].polygon.push(toFrame(event));
    changed();
  }

  async function publish() {
    errors.hidden = true;
    published.hidden = true;
    published.textContent = "";
    try {
      const answer = await api("PUT", `${url}/zones`, doc);
      undelivered = null;
      dirty = false;
      published.textContent = `Published as ${answer.version}.`;
      published.hidden = false;
    } catch (failure) {
      const version = /saved as version (\S+) but not delivered/.exec(failure.message);
      if (version) undelivered = version[1];
      errors.textContent = failure.message;
      errors.hidden = false;
    }
    await refresh();
  }

  // Loading ------------------------------------------------------------------------------------

  function showSnapshot() {
    const snapshot = camera.snapshot;
    noSnapshot.hidden = Boolean(snapshot);
    image.hidden = !snapshot;
    overlay.classList.toggle("standalone", !snapshot);
    if (snapshot && image.getAttribute("src") !== snapshot.url) image.src = snapshot.url;
  }

  async function refresh() {
    try {
      camera = await api("GET", url);
    } catch (failure) {
      errors.textContent = `Could not load the camera: ${failure.message}`;
      errors.hidden = false;
      return;
    }
    showCamera();
    showSnapshot();
    if (!dirty) {
      doc = startingDocument();
      selected = Math.min(selected, doc.zones.length - 1);
      draw();
    }
  }

  if (canEdit) bindEditor();
  window.addEventListener("resize", () => doc && draw());
  image.addEventListener("load", () => doc && draw());
  refresh();
  setInterval(() => { if (!drag) refresh(); }, REFRESH_MS);
})();
