// Dashboard (/dashboard): the city KPIs of a period as tiles, and SVG charts of the daily new cases,
// the AI's precision per rule and per camera, the 721 outcome split and the reject reasons, all from
// GET /api/v1/kpis. Dates are the city's (the API reads offset-less times in city time).
"use strict";

(() => {
  const root = document.getElementById("dashboard");
  if (!root) return;
  const { api, el, svg } = curbwatch;

  const DEFAULT_DAYS = 30;
  const WIDTH = 640;
  const WIDE = 1100; // the daily chart spans both columns
  const ROW = 26;
  const LABEL_W = 170;
  const form = document.getElementById("period");
  const error = document.getElementById("dashboard-error");

  const percent = (value) => (value === null ? "—" : `${(value * 100).toFixed(1)}%`);
  const label = (value) => {
    const text = String(value).replaceAll("_", " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  };

  function isoDate(date) {
    return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
  }

  function addDays(iso, days) {
    const date = new Date(`${iso}T12:00:00`);
    date.setDate(date.getDate() + days);
    return isoDate(date);
  }

  function tile(title, value, detail, tone = "") {
    return el("section", { class: `tile ${tone}` }, el("h2", {}, title), el("p", { class: "value" }, value),
      el("p", { class: "sub" }, detail));
  }

  function showTiles(k) {
    document.getElementById("tiles").replaceChildren(
      tile("Reported cases", k.reported, `${k.verified} verified, ${k.reported - k.verified} not yet`),
      tile("Filing rate", percent(k.filing_rate), `${k.confirmed} filed of ${k.verified} verified`),
      tile("On-time closure", percent(k.on_time_closure_rate), `${k.closed_on_time} of ${k.closed} closed on time`),
      tile("Rework rate", percent(k.rework_rate), `${k.reworked} of ${k.dispatched} dispatched returned`),
      tile("Overdue open", k.overdue_open, "past their deadline now", k.overdue_open ? "bad" : ""));
  }

  function empty(target, text) {
    target.replaceChildren(el("p", { class: "sub" }, text));
  }

  // Horizontal bars: rows of {name, share (0..1), text}.
  function hbars(target, rows, emptyText) {
    if (!rows.length) return empty(target, emptyText);
    const height = rows.length * ROW + 4;
    const barW = WIDTH - LABEL_W - 130;
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, class: "chart-svg", role: "img" });
    rows.forEach((row, index) => {
      const y = index * ROW + 4;
      chart.append(
        svg("text", { x: LABEL_W - 8, y: y + 14, class: "axis-label end" }, row.name),
        svg("rect", { x: LABEL_W, y, width: barW, height: ROW - 8, class: "bar-track" }),
        svg("rect", { x: LABEL_W, y, width: Math.max(0, row.share * barW), height: ROW - 8, class: `bar ${row.tone || ""}` },
          svg("title", {}, `${row.name}: ${row.text}`)),
        svg("text", { x: LABEL_W + barW + 8, y: y + 14, class: "axis-label" }, row.text));
    });
    target.replaceChildren(chart);
  }

  function precisionRows(items, name = (key) => key) {
    return items.map((item) => ({
      name: name(item.key),
      share: item.precision ?? 0,
      text: item.precision === null ? "not verified" : `${percent(item.precision)} (${item.confirmed}/${item.confirmed + item.rejected})`,
      tone: item.precision !== null && item.precision < 0.5 ? "bad" : "",
    }));
  }

  function countRows(counts) {
    const total = Object.values(counts).reduce((sum, n) => sum + n, 0);
    return Object.entries(counts).map(([name, n]) => ({
      name: label(name), share: total ? n / total : 0, text: `${n} (${percent(total ? n / total : null)})`,
    }));
  }

  // Bars of new cases per day, with the day's precision as a line on a 0-100% scale.
  function daily(target, points) {
    const height = 260;
    const top = 28;
    const bottom = 28;
    const left = 40;
    const plotH = height - top - bottom;
    const plotW = WIDE - left - 44;
    const step = plotW / Math.max(1, points.length);
    const max = Math.max(1, ...points.map((point) => point.new_cases));
    const chart = svg("svg", { viewBox: `0 0 ${WIDE} ${height}`, class: "chart-svg", role: "img" });
    chart.append(
      svg("rect", { x: left, y: 4, width: 12, height: 12, class: "key" }),
      svg("text", { x: left + 18, y: 15, class: "axis-label" }, "new cases"),
      svg("line", { x1: left + 110, y1: 10, x2: left + 130, y2: 10, class: "precision-line" }),
      svg("text", { x: left + 136, y: 15, class: "axis-label" }, "precision of the day's verified cases"),
      svg("line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }),
      svg("text", { x: left - 6, y: top + 10, class: "axis-label end" }, max),
      svg("text", { x: left - 6, y: top + plotH, class: "axis-label end" }, 0),
      svg("text", { x: left + plotW + 6, y: top + 10, class: "axis-label precision" }, "100%"),
      svg("text", { x: left + plotW + 6, y: top + plotH, class: "axis-label precision" }, "0%"));
    const labelEvery = Math.ceil(points.length / 10);
    const line = [];
    points.forEach((point, index) => {
      const x = left + index * step;
      const barH = (point.new_cases / max) * plotH;
      chart.append(svg("rect", { x: x + step * 0.15, y: top + plotH - barH, width: step * 0.7, height: barH, class: "bar" },
        svg("title", {}, `${point.day}: ${point.new_cases} new, precision ${percent(point.precision)}`)));
      if (index % labelEvery === 0) {
        chart.append(svg("text", { x: x + step / 2, y: height - 8, class: "axis-label middle" }, point.day.slice(5)));
      }
      if (point.precision !== null) line.push(`${x + step / 2},${top + plotH - point.precision * plotH}`);
    });
    if (line.length) chart.append(svg("polyline", { points: line.join(" "), class: "precision-line" }));
    target.replaceChildren(chart);
  }

  async function load() {
    const since = form.elements.since.value;
    const until = addDays(form.elements.until.value, 1); // the "to" day is included
    try {
      const k = await api("GET", `/api/v1/kpis?${new URLSearchParams({ since, until })}`);
      error.hidden = true;
      showTiles(k);
      daily(document.getElementById("chart-daily"), k.daily);
      hbars(document.getElementById("chart-rule"), precisionRows(k.by_rule, label), "No verified cases in the period.");
      hbars(document.getElementById("chart-camera"), precisionRows(k.by_camera), "No verified cases in the period.");
      hbars(document.getElementById("chart-outcomes"), k.closed ? countRows(k.outcomes) : [], "No case closed in the period.");
      hbars(document.getElementById("chart-reasons"), countRows(k.reject_reasons), "No case rejected in the period.");
    } catch (failure) {
      error.textContent = `Could not load the KPIs: ${failure.message}`;
      error.hidden = false;
    }
  }

  const today = isoDate(new Date());
  form.elements.until.value = today;
  form.elements.since.value = addDays(today, -(DEFAULT_DAYS - 1));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
})();
