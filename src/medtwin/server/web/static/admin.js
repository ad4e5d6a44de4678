/* Administration: users and roles, care teams, consents, audit log with chain verification, break-glass review. */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  const el = MT.el;
  const td = (text, cls) => el("td", { text: text === null || text === undefined || text === "" ? "–" : String(text), class: cls });

  async function users() {
    const r = await MT.apiJson("/app/api/admin/users");
    if (!r.ok) { MT.status("admin-status", (r.body && r.body.message) || "Not available.", true); return false; }
    document.querySelector("#users-table tbody").replaceChildren(...r.body.users.map((u) => {
      const b = el("button", { type: "button", class: "secondary", text: u.disabled ? "Enable" : "Disable", "aria-label": (u.disabled ? "Enable " : "Disable ") + u.username });
      b.addEventListener("click", async () => { await MT.apiJson("/app/api/admin/users/" + encodeURIComponent(u.username) + "/disabled", { method: "POST", json: { disabled: !u.disabled } }); users(); });
      return el("tr", {}, td(u.username), td(u.role), td(u.wards.join(", ")), td(u.teams.join(", ")), td(u.disabled ? "disabled" : "active"), el("td", {}, u.username === me.username ? null : b));
    }));
    return true;
  }

  async function teams() {
    const r = await MT.apiJson("/app/api/admin/careteams");
    if (!r.ok) return;
    document.querySelector("#ct-table tbody").replaceChildren(...r.body.assignments.map((a) => {
      const b = el("button", { type: "button", class: "secondary", text: "Remove", "aria-label": "Remove " + (a.name || a.patient_id) + " from " + a.team });
      b.addEventListener("click", async () => { await MT.apiJson("/app/api/admin/careteams", { method: "POST", json: { team: a.team, patient_id: a.patient_id, remove: true } }); teams(); });
      return el("tr", {}, td(a.team), td(a.name), td(a.patient_id), el("td", {}, b));
    }));
  }

  async function consents() {
    const r = await MT.apiJson("/app/api/admin/consents");
    if (!r.ok) return;
    const rows = r.body.consents.map((c) => el("tr", {}, td(c.patient_id), td(c.id), td(c.status), td(c.scope), td(c.provision), td(c.date)));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "No consent records." })));
    document.querySelector("#consent-table tbody").replaceChildren(...rows);
  }

  async function audit() {
    const r = await MT.apiJson("/app/api/admin/audit?limit=200");
    if (!r.ok) return;
    const a = r.body;
    const chain = document.getElementById("chain");
    if (!a.enabled) { chain.textContent = "Audit is off (server started without security)."; return; }
    chain.textContent = a.verify.ok ? "Chain verified: " + a.verify.records + " records, " + a.verify.checkpoints + " signed checkpoints, intact."
      : "Chain verification FAILED at record " + a.verify.first_bad_seq + ": " + a.verify.reason;
    chain.className = a.verify.ok ? "" : "error";
    document.querySelector("#audit-table tbody").replaceChildren(...a.records.map((x) => el("tr", {}, td(x.seq, "num"), td(MT.fmtTime(x.time, true)),
      td(x.actor), td(x.role), td(x.action), td(x.resource), td(x.outcome), td([x.purpose, x.detail].filter(Boolean).join(" · ")))));
    const bg = a.break_glass.map((x) => el("tr", {}, td(x.seq, "num"), td(MT.fmtTime(x.time, true)), td(x.actor), td(x.resource), td(x.purpose)));
    if (!bg.length) bg.push(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "No break-glass access." })));
    document.querySelector("#bg-table tbody").replaceChildren(...bg);
  }

  document.getElementById("assign").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await MT.apiJson("/app/api/admin/careteams", { method: "POST", json: { team: document.getElementById("ct-team").value, patient_id: document.getElementById("ct-patient").value } });
    MT.status("admin-status", r.ok ? "Assigned." : (r.body && r.body.message) || "Could not assign.", !r.ok);
    teams();
  });
  if (await users()) { await Promise.all([teams(), consents(), audit()]); }
})();
