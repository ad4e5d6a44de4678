/* Hospital command centre: census tiles, 72-h occupancy fan charts with P(unit full), what-if KPIs side by side. */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  const el = MT.el;
  const r = await MT.apiJson("/app/api/hospital");
  if (!r.ok) { MT.status("hospital-status", (r.body && r.body.message) || "Cannot compute the forecast.", true); return; }
  const h = r.body;
  MT.status("hospital-status", h.hospital + " · forecast from " + MT.fmtTime(h.start, true) + " · " + h.n_reps + " replications");
  const tiles = document.getElementById("census");
  const charts = document.getElementById("forecast-charts");
  const bedInputs = document.getElementById("bed-inputs");
  h.units.forEach((u, i) => {
    tiles.append(el("div", { class: "tile" }, el("div", { class: "muted", text: u.name }),
      el("div", { class: "big", text: u.census + " / " + u.beds }),
      el("div", { class: "small", text: "P(full) next 24 h: " + Math.round(100 * u.p_full_24h) + " % · 72 h: " + Math.round(100 * u.p_full_max) + " %" })));
    charts.append(el("div", { id: "fc-" + i, class: "chart", role: "figure", "aria-label": "Occupancy forecast fan chart for " + u.name }));
    if (i > 0) {
      const inputId = "beds-" + i;
      bedInputs.append(el("label", { for: inputId, text: u.name + " beds +" }),
        el("input", { id: inputId, type: "number", step: "1", min: "-20", max: "50", value: "0", "data-unit": u.name }));
    }
  });
  h.units.forEach((u, i) => {   // drawn once every container is in the grid (Plotly sizes a chart to its container)
    const id = "fc-" + i;
    Charts.draw(id, [
      ...Charts.band(h.times, u.p10, u.p90, "P10-P90", "rgba(11,92,173,0.25)"),
      { x: h.times, y: u.p50, type: "scatter", mode: "lines", name: "median", line: { color: "#17324d", width: 2 } },
      { x: h.times, y: h.times.map(() => u.beds), type: "scatter", mode: "lines", name: "beds", line: { color: "#b3141b", dash: "dash", width: 1.5 } },
      { x: h.times, y: u.p_full.map((p) => 100 * p), type: "scatter", mode: "lines", name: "P(full) %", yaxis: "y2", line: { color: "#8a5300", width: 1 } },
    ], { title: { text: u.name }, height: 300, yaxis: { title: { text: "occupied" }, rangemode: "tozero" },
      yaxis2: { title: { text: "P(full) %" }, overlaying: "y", side: "right", range: [0, 100] }, margin: { l: 50, r: 50, t: 30, b: 40 } });
  });
  document.getElementById("hwhatif").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const btn = document.getElementById("hwhatif-run");
    btn.disabled = true;
    MT.status("hwhatif-status", "Simulating baseline and what-if on common random numbers…");
    const beds = {};
    for (const input of bedInputs.querySelectorAll("input")) if (+input.value) beds[input.dataset.unit] = +input.value;
    const w = await MT.apiJson("/app/api/hospital/whatif", { method: "POST", json: { beds,
      nurse_scale: +document.getElementById("nurse-scale").value, arrival_scale: +document.getElementById("arrival-scale").value } });
    btn.disabled = false;
    if (!w.ok) { MT.status("hwhatif-status", (w.body && w.body.message) || "The what-if failed.", true); return; }
    const f = (m, hw) => MT.fmt(m, 2) + " ± " + MT.fmt(hw, 2);
    document.querySelector("#kpis tbody").replaceChildren(...w.body.kpis.map((k) => el("tr", {},
      el("th", { scope: "row", text: k.label }), el("td", { class: "num", text: f(k.baseline, k.baseline_hw) }),
      el("td", { class: "num", text: f(k.whatif, k.whatif_hw) }), el("td", { class: "num", text: (k.diff >= 0 ? "+" : "") + f(k.diff, k.diff_hw) }))));
    document.getElementById("kpis").hidden = false;
    MT.status("hwhatif-status", w.body.replications + " replications of " + Math.round(w.body.horizon_h / 24) + " days after a " + Math.round(w.body.warmup_h / 24) + "-day warm-up.");
  });
})();
