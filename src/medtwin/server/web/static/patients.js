/* Patient list: patients the user may see, searchable by name or MRN. */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  async function load(q) {
    const r = await MT.apiJson("/app/api/patients" + (q ? "?q=" + encodeURIComponent(q) : ""));
    const tbody = document.querySelector("#patients tbody");
    tbody.replaceChildren();
    if (!r.ok) { MT.status("list-status", (r.body && r.body.message) || "Cannot list patients.", true); return; }
    for (const p of r.body.patients) {
      tbody.append(MT.el("tr", {}, MT.el("td", {}, MT.el("a", { href: "/app/patient/" + encodeURIComponent(p.id), text: p.name || p.id })),
        MT.el("td", { text: p.mrn || "–" }), MT.el("td", { text: p.birth_date || "–" }), MT.el("td", { text: p.gender || "–" }),
        MT.el("td", { text: p.unit || "–" })));
    }
    MT.status("list-status", r.body.patients.length + " patients");
  }
  document.getElementById("search").addEventListener("submit", (ev) => { ev.preventDefault(); load(document.getElementById("q").value); });
  load("");
})();
