/* Patient twin page: vitals + NEWS2 charts with alert markers, alert timeline, record summary, glucose and dosing
   panels. A patient outside the user's care can be opened only by breaking the glass (reason required). */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  const el = MT.el;
  const pid = document.getElementById("patient").dataset.patientId;
  const enc = encodeURIComponent(pid);
  let glass = null;   // the break-glass reason, sent with every request of this page once given

  const call = (path, opts) => MT.apiJson(path, Object.assign({ breakGlass: glass }, opts || {}));

  async function load() {
    const hours = document.getElementById("window").value;
    return call("/app/api/patient/" + enc + "?hours=" + hours);
  }

  let r = await load();
  if (r.status === 404 || r.status === 403) {
    MT.status("patient-status", r.status === 403 ? r.body.message
      : "This patient is not in your care (or does not exist).", true);
    if (r.status === 404 && ["clinician", "nurse", "admin", "pharmacist"].includes(me.role)) {
      const btn = el("button", { type: "button", id: "break-glass", text: "Break the glass…" });
      document.getElementById("patient-status").after(btn);
      btn.addEventListener("click", async () => {
        const reason = await MT.askBreakGlass();
        if (!reason) return;
        glass = reason;
        r = await load();
        if (r.ok) { btn.remove(); MT.status("patient-status", "Break-glass access: recorded for review."); show(r.body); }
        else { glass = null; MT.status("patient-status", "The record could not be opened (break-glass is for clinicians; the attempt is recorded).", true); }
      });
    }
    return;
  }
  if (!r.ok) { MT.status("patient-status", (r.body && r.body.message) || "Cannot load the patient.", true); return; }
  show(r.body);
  document.getElementById("window").addEventListener("change", async () => { const again = await load(); if (again.ok) vitals(again.body); });

  function show(p) {
    document.getElementById("patient-body").hidden = false;
    document.getElementById("patient-name").textContent = p.name || p.patient_id;
    document.title = (p.name || "Patient") + " · medtwin";
    document.getElementById("patient-meta").textContent = [p.mrn && "MRN " + p.mrn, p.birth_date && "born " + p.birth_date,
      p.gender, p.unit && (p.unit + (p.bed ? " · bed " + p.bed : ""))].filter(Boolean).join(" · ");
    vitals(p);
    timeline(p.alerts);
    record(p);
    if (p.has_glucose) glucose();
    dosingPanel(p.has_dosing);
  }

  function vitals(p) {
    const s = p.series;
    const traces = [];
    const colors = { hr: "#b3141b", rr: "#0b5cad", sbp: "#5a2d82", spo2: "#0a7f5a", temp: "#8a5300", o2: "#555" };
    for (const k of ["hr", "rr", "sbp"]) traces.push({ x: s[k].t, y: s[k].v, name: s[k].label + " (" + s[k].unit + ")", type: "scatter", mode: "lines", line: { color: colors[k], width: 1.5 }, yaxis: "y" });
    for (const k of ["spo2", "temp"]) traces.push({ x: s[k].t, y: s[k].v, name: s[k].label + " (" + s[k].unit + ")", type: "scatter", mode: "lines", line: { color: colors[k], width: 1.5 }, xaxis: "x", yaxis: "y2" });
    traces.push({ x: s.news2.t, y: s.news2.v, name: "NEWS2", type: "scatter", mode: "lines", line: { shape: "hv", color: "#17324d", width: 2 }, yaxis: "y3" });
    const alerts = p.alerts.filter((a) => a.time);
    traces.push({ x: alerts.map((a) => a.time), y: alerts.map(() => 0.5), text: alerts.map((a) => a.severity + ": " + a.message),
      name: "Alerts", type: "scatter", mode: "markers", marker: { symbol: "triangle-up", size: 11, color: "#b3141b" }, yaxis: "y3", hoverinfo: "text+x" });
    Charts.draw("vitals-chart", traces, {
      grid: { rows: 3, columns: 1, pattern: "coupled", roworder: "top to bottom" },
      yaxis: { title: { text: "HR, RR, SBP" } }, yaxis2: { title: { text: "SpO2 %, °C" } },
      yaxis3: { title: { text: "NEWS2" }, range: [0, 20] }, height: 520 });
  }

  function timeline(alerts) {
    const ol = document.getElementById("alert-timeline");
    ol.replaceChildren();
    for (const a of [...alerts].reverse()) {
      ol.append(el("li", {}, el("span", { class: "sev sev-" + a.severity, text: a.severity }), " ", MT.fmtTime(a.time, true), " · ",
        a.message, el("span", { class: "muted", text: " (" + a.status + ")" })));
    }
    if (!alerts.length) ol.append(el("li", { class: "muted", text: "No alerts." }));
  }

  function list(id, items, fn) {
    const ul = document.getElementById(id);
    ul.replaceChildren(...items.map((x) => el("li", { text: fn(x) })));
    if (!items.length) ul.append(el("li", { class: "muted", text: "none recorded" }));
  }

  function record(p) {
    list("conditions", p.conditions, (c) => c.display + " (" + c.status + (c.onset ? ", since " + c.onset.slice(0, 10) : "") + ")");
    list("medications", p.medications, (m) => m.display + (m.dose ? " " + m.dose : "") + (m.interval_h ? " every " + m.interval_h + " h" : "") + " · " + m.intent + " · " + m.status);
    list("encounters", p.encounters, (e) => (e.start || "").slice(0, 10) + " " + (e.type || e.class) + (e.unit ? " · " + e.unit : "") + " · " + e.status);
  }

  // -- glucose -----------------------------------------------------------------------------------------------
  async function glucose() {
    const section = document.getElementById("glucose");
    section.hidden = false;
    const g = await call("/app/api/patient/" + enc + "/glucose");
    if (!g.ok || !g.body.trace) return;
    const d = g.body;
    Charts.draw("cgm-chart", [{ x: d.trace.t, y: d.trace.v, type: "scatter", mode: "lines", name: "CGM (mg/dL)", line: { color: "#0b5cad", width: 1.2 } }],
      { title: { text: "CGM trace" }, yaxis: { title: { text: "mg/dL" } },
        shapes: [{ type: "rect", xref: "paper", x0: 0, x1: 1, y0: 70, y1: 180, fillcolor: "rgba(20,82,28,0.08)", line: { width: 0 } }] });
    const a = d.agp;
    Charts.draw("agp-chart", [
      ...Charts.band(a.hour, a.p5, a.p95, "5-95 %", "rgba(11,92,173,0.15)"),
      ...Charts.band(a.hour, a.p25, a.p75, "25-75 %", "rgba(11,92,173,0.35)"),
      { x: a.hour, y: a.p50, type: "scatter", mode: "lines", name: "median", line: { color: "#17324d", width: 2 } },
    ], { title: { text: "AGP (" + d.days + " days)" }, xaxis: { title: { text: "hour of day (UTC)" }, range: [0, 24] }, yaxis: { title: { text: "mg/dL" } } });
    const m = d.metrics;
    const rows = [["Readings", m.n_readings], ["Days covered", (m.duration_h / 24).toFixed(1)], ["Sensor coverage", m.coverage_pct + " %"],
      ["Mean glucose", m.mean_mg_dl + " mg/dL"], ["GMI", m.gmi_pct + " %"], ["CV", m.cv_pct + " % (goal ≤ 36 %)"],
      ["Time in range 70-180", m.tir_pct + " % (goal > 70 %)"], ["Time below 70", m.tbr_level1_pct + " % (goal < 4 %)"],
      ["Time below 54", m.tbr_level2_pct + " % (goal < 1 %)"], ["Time above 180", m.tar_level1_pct + " % (goal < 25 %)"],
      ["Time above 250", m.tar_level2_pct + " % (goal < 5 %)"]];
    document.querySelector("#cgm-metrics tbody").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", { class: "num", text: String(v) }))));
    if (d.has_twin) {
      const form = document.getElementById("whatif");
      form.hidden = false;
      form.addEventListener("submit", whatif);
    } else {
      MT.status("whatif-status", "No personal glucose twin for this patient yet (the what-if needs one).");
    }
  }

  async function whatif(ev) {
    ev.preventDefault();
    const btn = document.getElementById("whatif-run");
    btn.disabled = true;
    MT.status("whatif-status", "Replaying the recorded days on the twin…");
    const body = { bolus_scale: +document.getElementById("bolus-scale").value, basal_scale: +document.getElementById("basal-scale").value,
      bolus_shift_min: +document.getElementById("bolus-shift").value, meal_scale: +document.getElementById("meal-scale").value };
    const w = await call("/app/api/patient/" + enc + "/glucose/whatif", { method: "POST", json: body });
    btn.disabled = false;
    if (!w.ok) { MT.status("whatif-status", (w.body && w.body.message) || "The what-if failed.", true); return; }
    const colors = ["rgba(23,50,77,", "rgba(179,20,27,"];
    const traces = [];
    w.body.curves.forEach((c, i) => {
      traces.push(...Charts.band(c.t, c.lo95, c.hi95, c.label + " 95 % band", colors[i] + "0.15)"));
      traces.push({ x: c.t, y: c.median, type: "scatter", mode: "lines", name: c.label, line: { color: colors[i] + "1)", width: 2 } });
    });
    Charts.draw("whatif-chart", traces, { title: { text: "Twin replay: recorded therapy vs what-if" }, yaxis: { title: { text: "mg/dL" } },
      shapes: [{ type: "rect", xref: "paper", x0: 0, x1: 1, y0: 70, y1: 180, fillcolor: "rgba(20,82,28,0.08)", line: { width: 0 } }] });
    const keys = Object.keys(w.body.curves[0].metrics);
    const table = document.getElementById("whatif-table");
    table.querySelector("thead").replaceChildren(el("tr", {}, el("th", { scope: "col", text: "Metric" }), ...w.body.curves.map((c) => el("th", { scope: "col", class: "num", text: c.label }))));
    table.querySelector("tbody").replaceChildren(...keys.map((k) => el("tr", {}, el("th", { scope: "row", text: k }), ...w.body.curves.map((c) => el("td", { class: "num", text: String(c.metrics[k]) })))));
    table.hidden = false;
    MT.status("whatif-status", "Two curves: the recorded therapy and the what-if, each with the twin's 95 % band.");
  }

  // -- dosing ------------------------------------------------------------------------------------------------
  // The record's course (when there is one) or an entered case: the entered rows are sent with every run and with
  // "propose", and are never written into the record (docs/web.md, "Dosing panel").
  let entered = null;   // the entered case of the regimen table shown, or null when it came from the record alone

  function dosingPanel(hasCourse) {
    document.getElementById("dosing").hidden = false;
    document.getElementById("dosing-run").hidden = !hasCourse;
    if (!hasCourse) {
      MT.status("dosing-status", "No vancomycin course in the record: enter the doses and levels to fit the model.");
      document.getElementById("dosing-entry-box").open = true;
    }
  }

  function entryRow(kind) {
    const n = document.querySelectorAll("#entry-" + kind + "s tbody tr").length + 1;
    const name = (kind === "dose" ? "Dose " : "Level ") + n;
    const cells = [el("td", {}, el("input", { type: "datetime-local", class: "e-time", "aria-label": name + " time", required: "" }))];
    if (kind === "dose") {
      cells.push(el("td", {}, el("input", { type: "number", class: "e-amount", min: "1", max: "6000", step: "any", "aria-label": name + " amount (mg)", required: "" })));
      cells.push(el("td", {}, el("input", { type: "number", class: "e-duration", min: "0", max: "48", step: "any", value: "1", "aria-label": name + " infusion (h)" })));
    } else {
      cells.push(el("td", {}, el("input", { type: "number", class: "e-value", min: "0", max: "200", step: "any", "aria-label": name + " concentration (mg/L)", required: "" })));
    }
    const rm = el("button", { type: "button", class: "secondary", text: "Remove", "aria-label": "Remove " + name.toLowerCase() });
    const tr = el("tr", {}, ...cells, el("td", {}, rm));
    rm.addEventListener("click", () => tr.remove());
    document.querySelector("#entry-" + kind + "s tbody").append(tr);
  }
  document.getElementById("entry-add-dose").addEventListener("click", () => entryRow("dose"));
  document.getElementById("entry-add-level").addEventListener("click", () => entryRow("level"));

  function when(input) {   // datetime-local is the browser's local time: sent as UTC with its zone
    if (!input.value) return "";
    const t = new Date(input.value);
    return isNaN(t.getTime()) ? input.value : t.toISOString();
  }

  function entryBody() {
    const num = (input) => input.value === "" ? null : Number(input.value);
    const body = { drug: document.getElementById("entry-drug").value, include_record: document.getElementById("entry-include").checked,
      doses: [...document.querySelectorAll("#entry-doses tbody tr")].map((tr) => ({ time: when(tr.querySelector(".e-time")),
        amount_mg: num(tr.querySelector(".e-amount")), duration_h: num(tr.querySelector(".e-duration")) })),
      levels: [...document.querySelectorAll("#entry-levels tbody tr")].map((tr) => ({ time: when(tr.querySelector(".e-time")), value_mg_l: num(tr.querySelector(".e-value")) })) };
    for (const [key, id] of [["weight_kg", "entry-weight"], ["scr_mg_dl", "entry-scr"]]) {
      const v = num(document.getElementById(id));
      if (v !== null) body[key] = v;
    }
    return body;
  }

  function showErrors(res) {
    const list = document.getElementById("entry-errors");
    list.replaceChildren(...((res.body && res.body.issues) || []).map((i) => el("li", { text: i.path + ": " + i.problem })));
    MT.status("dosing-status", (res.body && res.body.message) || "The dosing analysis failed.", true);
  }

  document.getElementById("dosing-run").addEventListener("click", async () => {
    const btn = document.getElementById("dosing-run");
    btn.disabled = true;
    MT.status("dosing-status", "Fitting the model to the levels (MAP) and simulating the options…");
    const d = await call("/app/api/patient/" + enc + "/dosing");
    btn.disabled = false;
    if (!d.ok) { MT.status("dosing-status", (d.body && d.body.message) || "The dosing analysis failed.", true); return; }
    entered = null;
    showDosing(d.body);
  });

  document.getElementById("dosing-entry").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const btn = document.getElementById("entry-run");
    const body = entryBody();
    btn.disabled = true;
    document.getElementById("entry-errors").replaceChildren();
    MT.status("dosing-status", "Fitting the model to the record's and the entered data (MAP) and simulating the options…");
    const d = await call("/app/api/patient/" + enc + "/dosing/entered", { method: "POST", json: body });
    btn.disabled = false;
    if (!d.ok) { showErrors(d); return; }
    entered = body;
    showDosing(d.body);
  });

  function showDosing(x) {
    const drug = x.drug || "vancomycin";
    const src = (rows, which) => rows.filter((r) => (r.source || "record") === which);
    const traces = [
      ...Charts.band(x.band.t, x.band.p05, x.band.p95, "90 % prediction band", "rgba(11,92,173,0.2)"),
      { x: x.band.t, y: x.band.map, type: "scatter", mode: "lines", name: "MAP fit", line: { color: "#17324d", width: 2 } },
    ];
    for (const [which, name, marker] of [["record", "measured levels, record (mg/L)", { size: 10, color: "#b3141b" }],
      ["entered", "entered levels (mg/L)", { size: 11, color: "#b3141b", symbol: "diamond-open", line: { width: 2 } }]]) {
      const ls = src(x.levels, which);
      if (ls.length) traces.push({ x: ls.map((l) => l.time), y: ls.map((l) => l.value), type: "scatter", mode: "markers", name, marker });
    }
    traces.push({ x: x.doses.map((dd) => dd.time), y: x.doses.map(() => 0), type: "scatter", mode: "markers", name: "doses", marker: { symbol: "triangle-up", size: 10, color: "#5a2d82" },
      text: x.doses.map((dd) => dd.amount.value + " " + dd.amount.unit + ((dd.source === "entered") ? " (entered)" : "")), hoverinfo: "text+x" });
    Charts.draw("dosing-chart", traces, { title: { text: drug[0].toUpperCase() + drug.slice(1) + " concentration" }, yaxis: { title: { text: "mg/L" } } });
    const used = document.getElementById("dosing-data");
    used.querySelector("tbody").replaceChildren(
      ...x.doses.map((dd) => el("tr", { class: dd.source === "entered" ? "entered" : "" }, el("td", { text: "dose" }), el("td", { text: MT.fmtTime(dd.time, true) }),
        el("td", { class: "num", text: dd.amount.value + " " + dd.amount.unit + " over " + dd.duration_h + " h" }), el("td", { text: dd.source === "entered" ? "entered (not in the record)" : "record" }))),
      ...x.levels.map((l) => el("tr", { class: l.source === "entered" ? "entered" : "" }, el("td", { text: "level" }), el("td", { text: MT.fmtTime(l.time, true) }),
        el("td", { class: "num", text: l.value + " " + l.unit }), el("td", { text: l.source === "entered" ? "entered (not in the record)" : "record" }))));
    used.hidden = false;
    const tbody = document.querySelector("#regimens tbody");
    tbody.replaceChildren();
    for (const p of x.proposals) {
      const m = p.metrics || {};
      const auc = m.auc24_ss || m.auc24 || {};
      const trough = m.trough_ss || m.trough || {};
      const btnP = el("button", { type: "button", class: "secondary", text: "Propose", "aria-label": "Propose " + p.amount_mg + " mg every " + p.interval_h + " h" });
      btnP.addEventListener("click", () => propose(p, btnP));
      const rec = x.recommended && x.recommended.interval_h === p.interval_h && x.recommended.amount_mg === p.amount_mg;
      tbody.append(el("tr", {}, el("td", { class: "num", text: p.amount_mg + " mg" + (rec ? " (recommended)" : "") }), el("td", { class: "num", text: p.interval_h + " h" }),
        el("td", { class: "num", text: p.duration_h + " h" }),
        el("td", { class: "num", text: MT.fmt(auc.value) + (auc.p05 !== undefined && auc.p05 !== null ? " (" + MT.fmt(auc.p05) + "-" + MT.fmt(auc.p95) + ")" : "") }),
        el("td", { class: "num", text: MT.fmt(trough.value, 1) }),
        el("td", { class: "num", text: p.pta === null || p.pta === undefined ? "–" : Math.round(100 * p.pta) + " %" }),
        el("td", { text: p.in_target ? "yes" : "no" }), el("td", {}, btnP)));
    }
    const regimens = document.getElementById("regimens");
    regimens.querySelector("caption").textContent = "Regimen options (target " + x.target.metric + " " + x.target.low + "-" + x.target.high + ")" + (entered ? " from the record and entered data" : "");
    regimens.hidden = false;
    document.getElementById("dosing-model").textContent = "Model: " + x.model.title + " (" + x.model.citation + ", doi:" + x.model.doi + "). Target " +
      x.target.metric + " " + x.target.low + "-" + x.target.high + ". " + (x.warnings.length ? "Warnings: " + x.warnings.join("; ") : "");
    MT.status("dosing-status", x.proposals.length + " regimen options" + (entered ? " (with entered data, not written into the record)." : "."));
  }

  async function propose(p, btn) {
    btn.disabled = true;
    const json = entered ? { interval_h: p.interval_h, entered } : { interval_h: p.interval_h };
    const res = await call("/app/api/patient/" + enc + "/dosing/propose", { method: "POST", json });
    if (!res.ok) { btn.disabled = false; MT.status("dosing-status", (res.body && res.body.message) || "Could not store the proposal.", true); return; }
    MT.status("dosing-status", "Proposal stored: MedicationRequest " + res.body.request_id + " (" + res.body.dose_mg + " mg every " + res.body.interval_h + " h, draft" +
      (res.body.from_entered ? ", from entered data" : "") + "), audited.");
  }
})();
