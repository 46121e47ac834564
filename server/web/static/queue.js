// Case lists: the live review queue (/queue) and the list of all cases (/cases).
// Rows come from GET /api/v1/cases, oldest first, page by page through the API cursor. The queue
// also asks every POLL_MS for cases created after the newest it has seen, so new ones appear
// without a reload. Keyboard: j / k move the selection, Enter opens it.
"use strict";

(() => {
  const root = document.getElementById("case-list");
  if (!root) return;
  const { api, el } = curbwatch;

  const POLL_MS = 2000;
  const PAGE = 50;
  const live = root.dataset.live === "true";
  const rows = document.getElementById("case-rows");
  const empty = document.getElementById("list-empty");
  const more = document.getElementById("load-more");
  const count = document.getElementById("list-count");
  const status = document.getElementById("live");
  const seen = new Set();
  const places = { camera: new Set(), zone: new Set() };
  let since = root.dataset.since || null;
  let cursor = null;
  let selected = null;

  // Page filter names -> API query names.
  const FILTERS = [["status", "status"], ["camera", "camera_id"], ["rule", "rule"], ["zone", "zone"]];

  function apiQuery(extra) {
    const params = new URLSearchParams();
    for (const [name, apiName] of FILTERS) {
      if (root.dataset[name]) params.set(apiName, root.dataset[name]);
    }
    for (const [name, value] of Object.entries(extra)) if (value) params.set(name, value);
    return params.toString();
  }

  // Case links from the queue carry the filters, so the case page can go on to the next case.
  function caseHref(id) {
    const href = `/cases/${encodeURIComponent(id)}`;
    if (!live) return href;
    const params = new URLSearchParams({ queue: "1" });
    for (const name of ["camera", "rule", "zone"]) if (root.dataset[name]) params.set(name, root.dataset[name]);
    return `${href}?${params}`;
  }

  function label(value) {
    const text = String(value).replaceAll("_", " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function duration(ms) {
    const minutes = Math.max(0, Math.floor(ms / 60000));
    if (minutes < 1) return `${Math.max(0, Math.floor(ms / 1000))} s`;
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours} h ${minutes % 60} min`;
    return `${Math.floor(hours / 24)} d`;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "short" }) : "—";
  }

  function deadlineCell(item) {
    if (item.overdue) return el("td", { class: "when" }, el("span", { class: "badge overdue" }, "Overdue"));
    return el("td", { class: "when" }, item.deadline ? when(item.deadline) : "—");
  }

  function row(item) {
    const href = caseHref(item.id);
    const thumb = item.thumbnail_url
      ? el("img", { src: item.thumbnail_url, alt: `Evidence of ${item.event_name}`, loading: "lazy", width: "112", height: "63" })
      : el("span", { class: "no-thumb" }, "no image");
    const cells = [
      el("td", { class: "thumb" }, thumb),
      el("td", { class: "what" },
        el("a", { href }, el("span", { class: "code" }, item.event_code), " ", item.event_name),
        el("div", { class: "sub" }, label(item.rule), item.episode_count > 1 ? ` · ${item.episode_count} episodes` : "")),
    ];
    if (!live) cells.push(el("td", {}, el("span", { class: `status status-${item.status}` }, label(item.status))));
    cells.push(el("td", {}, item.camera_id), el("td", {}, item.zone));
    cells.push(live
      ? el("td", { class: "age", title: when(item.created_at), dataset: { since: item.created_at } }, duration(Date.now() - Date.parse(item.created_at)))
      : el("td", { class: "when" }, when(item.opened_at)));
    cells.push(deadlineCell(item));
    // Ordered by time, then id, as the API orders them; ISO strings alone do not sort (".5Z" < "Z").
    const key = `${String(Date.parse(item.created_at)).padStart(15, "0")}|${item.id}`;
    const tr = el("tr", { dataset: { id: item.id, href, key } }, ...cells);
    tr.addEventListener("click", (event) => {
      if (!event.target.closest("a")) location.assign(href);
    });
    return tr;
  }

  // Rows stay ordered oldest first whichever request brought them (a page or a poll).
  function insert(tr) {
    const key = tr.dataset.key;
    let after = rows.lastElementChild;
    while (after && after.dataset.key > key) after = after.previousElementSibling;
    rows.insertBefore(tr, after ? after.nextSibling : rows.firstChild);
  }

  function add(items, arrived) {
    for (const item of items) {
      if (seen.has(item.id)) continue;
      seen.add(item.id);
      places.camera.add(item.camera_id);
      places.zone.add(item.zone);
      const tr = row(item);
      if (arrived) tr.classList.add("arrived");
      insert(tr);
      // Only polls move the watermark: older pages must not make the poll skip ahead of them.
      if (arrived && Date.parse(item.created_at) > Date.parse(since)) since = item.created_at;
    }
    if (!selected && rows.firstElementChild) select(rows.firstElementChild);
    refresh();
  }

  function refresh() {
    const n = rows.children.length;
    empty.hidden = n > 0;
    count.textContent = n ? `(${n}${cursor ? "+" : ""})` : "";
    if (live) document.title = `${n ? `(${n}) ` : ""}${document.title.replace(/^\(\d+\) /, "")}`;
    for (const [name, values] of Object.entries(places)) {
      const list = document.getElementById(`${name}-options`);
      list.replaceChildren(...[...values].sort().map((value) => el("option", { value })));
    }
  }

  function select(tr) {
    if (selected) selected.classList.remove("selected");
    selected = tr;
    if (!tr) return;
    tr.classList.add("selected");
    tr.scrollIntoView({ block: "nearest" });
  }

  async function loadPage() {
    more.disabled = true;
    try {
      const page = await api("GET", `/api/v1/cases?${apiQuery({ limit: PAGE, cursor })}`);
      cursor = page.next_cursor;
      add(page.items, false);
      more.hidden = !cursor;
      showLive(true);
    } catch (error) {
      showLive(false, error.message);
    } finally {
      more.disabled = false;
    }
  }

  async function poll() {
    try {
      let page;
      do {
        page = await api("GET", `/api/v1/cases?${apiQuery({ created_after: since, limit: PAGE })}`);
        add(page.items, true);
      } while (page.items.length === PAGE);
      showLive(true);
    } catch (error) {
      showLive(false, error.message);
    }
    for (const cell of rows.querySelectorAll("td.age")) cell.textContent = duration(Date.now() - Date.parse(cell.dataset.since));
    setTimeout(poll, POLL_MS);
  }

  function showLive(ok, message) {
    if (!status) return;
    status.classList.toggle("stale", !ok);
    status.textContent = ok
      ? `Live · checked ${new Date().toLocaleTimeString()}`
      : `Not updating (${message}); retrying`;
  }

  function typing(target) {
    return target.closest("input, select, textarea, [contenteditable]") !== null;
  }

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || typing(event.target)) return;
    if (event.key === "j" || event.key === "k") {
      event.preventDefault();
      const next = event.key === "j" ? selected?.nextElementSibling : selected?.previousElementSibling;
      select(next || selected || rows.firstElementChild);
    } else if (event.key === "Enter" && selected && !event.target.closest("a, button")) {
      event.preventDefault();
      location.assign(selected.dataset.href);
    }
  });

  const filters = root.querySelector("form.filters");
  // Empty fields mean "any": leave them out of the address.
  filters.addEventListener("formdata", (event) => {
    for (const [name, value] of [...event.formData]) if (!value) event.formData.delete(name);
  });
  for (const field of root.querySelectorAll("select[data-autosubmit]")) {
    field.addEventListener("change", () => field.form.requestSubmit());
  }
  more.addEventListener("click", loadPage);

  loadPage().then(() => {
    if (live) setTimeout(poll, POLL_MS);
  });
})();
