/* Ward board: the user's ward patients with latest vitals, NEWS2 band, sparkline, alerts; live over SSE. */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  const el = MT.el;
  const rows = new Map();          // patient id -> row data
  const pending = new Map();       // patient id -> timer (debounced refresh)
  const tbody = document.querySelector("#board tbody");
  const sortSel = document.getElementById("sort");
  const unitSel = document.getElementById("unit-filter");
  const VITALS = [["rr", 0], ["spo2", 0], ["o2", 0], ["sbp", 0], ["hr", 0], ["temp", 1], ["acvpu"]];
  const SEV = { high: 3, medium: 2, "low-medium": 1, low: 0 };
  window.mtBoard = { updates: 0, lastUpdate: {}, log: null };   // read by the benchmark and the tests

  function band(news2) {
    if (news2.total === null || news2.total === undefined) return "none";
    return news2.level;
  }

  function riskKey(r) {
    const worst = Math.max(-1, ...r.alerts.map((a) => SEV[a.severity] ?? 0));
    return [r.news2.total ?? -1, worst, r.alerts.length];
  }

  function sparkline(points) {
    const w = 90, h = 24;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const values = points.map((p) => p[1]).filter((v) => typeof v === "number");
    svg.setAttribute("aria-label", values.length ? "NEWS2 trend " + values.slice(-8).join(", ") : "no NEWS2 trend yet");
    if (values.length < 2) return svg;
    const max = Math.max(7, ...values);
    const step = w / (values.length - 1);
    const pts = values.map((v, i) => (i * step).toFixed(1) + "," + (h - 2 - (v / max) * (h - 4)).toFixed(1)).join(" ");
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts); line.setAttribute("fill", "none"); line.setAttribute("stroke", "#17324d");
    line.setAttribute("stroke-width", "1.5");
    svg.append(line);
    return svg;
  }

  function vitalCell(v, digits) {
    if (v.value === null || v.value === undefined) return el("td", { class: "num muted", text: "–" });
    const text = typeof v.value === "number" ? MT.fmt(v.value, digits) : String(v.value);
    const td = el("td", { class: "num" + (v.stale ? " stale" : ""), title: v.label + " at " + MT.fmtTime(v.time, true) });
    td.append(text);
    if (v.stale) td.append(el("span", { class: "stale-tag", text: "stale" }));
    return td;
  }

  async function acknowledge(alert, pid, button) {
    button.disabled = true;
    const r = await MT.apiJson("/api/alerts/" + encodeURIComponent(alert.id) + "/acknowledge", { method: "POST" });
    if (!r.ok) { MT.status("action-status", "Could not acknowledge: " + ((r.body && r.body.message) || r.status), true); button.disabled = false; return; }
    MT.status("action-status", "Alert acknowledged.");
    refreshRow(pid, 0);
  }

  function renderRow(r) {
    const tr = el("tr", { id: "row-" + r.patient_id, "data-patient": r.patient_id, "data-news2": r.news2.total ?? "" });
    tr.append(el("td", { text: [r.unit, r.bed].filter(Boolean).join(" · ") || "–" }));
    tr.append(el("td", {}, el("a", { href: "/app/patient/" + encodeURIComponent(r.patient_id), text: r.name || r.patient_id }),
      r.mrn ? el("span", { class: "muted small", text: " " + r.mrn }) : null));
    const total = r.news2.total;
    const stale = r.news2.stale.length ? " (stale: " + r.news2.stale.join(", ") + ")" : "";
    const missing = r.news2.missing.length ? "missing " + r.news2.missing.join(", ") : "complete";
    tr.append(el("td", {}, el("span", { class: "news2 band-" + band(r.news2), title: "NEWS2 " + (total ?? "not scored") + ", " + r.news2.level + "; " + missing + stale,
      text: total === null || total === undefined ? "–" : String(total) })));
    tr.append(el("td", {}, sparkline(r.trend)));
    for (const [k, d] of VITALS) tr.append(vitalCell(r.vitals[k], d));
    tr.append(el("td", { text: r.no_data ? "no data" : MT.fmtTime(r.last_reading) }));
    const alerts = el("td", { class: "alerts" });
    for (const a of r.alerts) {
      const ack = el("button", { type: "button", class: "secondary", "aria-label": "Acknowledge " + a.code + " alert for " + (r.name || r.patient_id), text: "Ack" });
      ack.addEventListener("click", () => acknowledge(a, r.patient_id, ack));
      alerts.append(el("span", { class: "alert", "data-alert": a.id }, el("span", { class: "sev sev-" + a.severity, text: a.severity }), " " + a.message + " ", ack));
    }
    if (!r.alerts.length) alerts.append(el("span", { class: "muted", text: "none" }));
    tr.append(alerts);
    return tr;
  }

  function sorted() {
    const list = [...rows.values()];
    const by = sortSel.value;
    list.sort((a, b) => {
      if (by === "name") return (a.name || "").localeCompare(b.name || "");
      if (by === "bed") {
        if (!a.unit !== !b.unit) return a.unit ? -1 : 1;   // patients not on a ward last
        return ((a.unit || "") + (a.bed || "")).localeCompare((b.unit || "") + (b.bed || ""), undefined, { numeric: true });
      }
      const ka = riskKey(a), kb = riskKey(b);
      for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return kb[i] - ka[i];
      return 0;
    });
    return list;
  }

  function summary(list) {
    MT.status("board-status", list.length + " patients · " + list.filter((r) => r.alerts.length).length + " with active alerts");
  }

  function render() {   // the whole table (load, sort change)
    const list = sorted();
    const focused = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tr") : null;
    const focusId = focused ? focused.dataset.patient : null;
    tbody.replaceChildren(...list.map(renderRow));
    if (focusId) document.querySelector("#row-" + CSS.escape(focusId) + " a")?.focus();
    summary(list);
  }

  // Rows change in place; the order is brought up to date at most every RESORT_MS (a board that reshuffles every
  // second cannot be read), at once when a new patient or an alert appears.
  const RESORT_MS = 5000;
  let lastRender = 0, resortTimer = null;
  function update(changed) {
    const list = sorted();
    const current = [...tbody.children].map((tr) => tr.dataset.patient);
    const newAlert = changed.some((pid) => rows.get(pid).alerts.some((a) => !document.querySelector('[data-alert="' + a.id + '"]')));
    if (current.length !== list.length || newAlert) { render(); lastRender = Date.now(); return; }
    if (list.some((r, i) => r.patient_id !== current[i]) && !resortTimer) {
      resortTimer = setTimeout(() => { resortTimer = null; render(); lastRender = Date.now(); }, Math.max(0, lastRender + RESORT_MS - Date.now()));
    }
    for (const pid of changed) {
      const old = document.getElementById("row-" + pid);
      if (!old) continue;
      const hadFocus = old.contains(document.activeElement);
      const fresh = renderRow(rows.get(pid));
      old.replaceWith(fresh);
      if (hadFocus) fresh.querySelector("a")?.focus();
    }
    summary(list);
  }

  async function loadBoard() {
    const unit = unitSel.value;
    const r = await MT.apiJson("/app/api/ward" + (unit ? "?unit=" + encodeURIComponent(unit) : ""));
    if (!r.ok) { MT.status("board-status", (r.body && r.body.message) || "Cannot load the ward board.", true); return false; }
    document.getElementById("ward-names").textContent = r.body.wards ? r.body.wards.join(", ") : "all units";
    if (r.body.all_units && unitSel.options.length === 1) {
      for (const u of r.body.all_units) unitSel.append(el("option", { value: u, text: u }));
      unitSel.hidden = false; document.getElementById("unit-label").hidden = false;
    }
    rows.clear();
    for (const row of r.body.rows) rows.set(row.patient_id, row);
    render();
    return true;
  }

  let reloadTimer = null;
  let flushTimer = null;
  const due = new Set();
  function refreshRow(pid, delay) {
    if (!rows.has(pid)) {
      // the stream only carries patients this user may see: an unknown one was just admitted to the ward
      if (!reloadTimer) reloadTimer = setTimeout(async () => { reloadTimer = null; await loadBoard(); markUpdate(pid); }, delay);
      return;
    }
    due.add(pid);
    if (!flushTimer) flushTimer = setTimeout(flush, delay);
  }

  async function flush() {   // every row that changed in the last moment, in one request
    const ids = [...due];
    due.clear();
    let r = null;
    try {
      r = await MT.apiJson("/app/api/ward/rows?ids=" + ids.map(encodeURIComponent).join(","));
    } catch (e) {
      r = null;   // a network hiccup: the next event or the 30 s reload brings the rows
    } finally {
      flushTimer = null;
      if (due.size) flushTimer = setTimeout(flush, 250);
    }
    if (!r || !r.ok) return;
    for (const row of r.body.rows) {   // the live rows carry no trend: extend the one the board has
      const old = rows.get(row.patient_id);
      const trend = old && old.trend ? old.trend.slice(-39) : [];
      const last = trend.length ? trend[trend.length - 1][1] : null;
      if (row.news2.total !== null && row.news2.total !== last) trend.push([row.last_reading, row.news2.total]);
      row.trend = trend;
      rows.set(row.patient_id, row);
    }
    update(r.body.rows.map((row) => row.patient_id));
    for (const row of r.body.rows) markUpdate(row.patient_id, row.last_reading);
  }

  function markUpdate(pid, reading) {
    const now = performance.timeOrigin + performance.now();
    window.mtBoard.updates += 1;
    window.mtBoard.lastUpdate[pid] = now;
    if (window.mtBoard.log && reading) {   // kept only when a benchmark asks for it (window.mtBoard.log = [])
      window.mtBoard.log.push([pid, reading, now]);
    }
  }

  // live events: SSE with the access token in the URL (EventSource cannot send headers)
  let source = null;
  async function connect() {
    const token = await MT.accessToken();
    if (!token) return;
    if (source) source.close();
    source = new EventSource("/api/stream?access_token=" + encodeURIComponent(token));
    const live = document.getElementById("live");
    source.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
    source.onerror = () => { live.textContent = "reconnecting…"; live.classList.remove("on"); };
    const onEvent = (ev) => {
      const e = JSON.parse(ev.data);
      if (e.patient_id) refreshRow(e.patient_id, 250);
    };
    source.addEventListener("alert", onEvent);
    source.addEventListener("derived", onEvent);
  }

  sortSel.addEventListener("change", render);
  unitSel.addEventListener("change", loadBoard);
  if (await loadBoard()) {
    await connect();
    setInterval(connect, 10 * 60 * 1000);     // a fresh token in the stream URL before the old one expires
    setInterval(loadBoard, 30 * 1000);        // freshness (stale marks) and admissions
  }
})();
