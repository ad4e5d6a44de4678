/* Research page: the API's de-identified patient list (no identity leaves the server for this role). */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  const r = await MT.apiJson("/api/patients?limit=1000");
  if (!r.ok) { MT.status("research-status", (r.body && r.body.message) || "Cannot list patients.", true); return; }
  const tbody = document.querySelector("#research tbody");
  for (const p of r.body.patients) {
    tbody.append(MT.el("tr", {}, MT.el("td", { text: p.id }), MT.el("td", { text: p.gender || "–" }),
      MT.el("td", { text: p.birth_year || "–" })));
  }
  MT.status("research-status", r.body.patients.length + " patients (de-identified view: " + (me.role === "researcher" ? "yes" : "identity hidden here") + ")");
})();
