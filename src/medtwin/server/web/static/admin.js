/* Administration: users and roles, care teams, consents, audit log with chain verification, break-glass review. */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  const el = MT.el;
  const td = (text, cls) => el("td", { text: text === null || text === undefined || text === "" ? "–" : String(text), class: cls });

  const names = (text) => text.split(",").map((x) => x.trim()).filter(Boolean);

  async function users() {
    const r = await MT.apiJson("/app/api/admin/users");
    if (!r.ok) { MT.status("admin-status", (r.body && r.body.message) || "Not available.", true); return false; }
    const roleSelect = document.getElementById("nu-role");
    if (!roleSelect.options.length) roleSelect.replaceChildren(...r.body.roles.map((x) => el("option", { value: x, text: x, selected: x === "clinician" })));
    document.querySelector("#users-table tbody").replaceChildren(...r.body.users.map((u) => {
      const b = el("button", { type: "button", class: "secondary", text: u.disabled ? "Enable" : "Disable", "aria-label": (u.disabled ? "Enable " : "Disable ") + u.username });
      b.addEventListener("click", async () => { await MT.apiJson("/app/api/admin/users/" + encodeURIComponent(u.username) + "/disabled", { method: "POST", json: { disabled: !u.disabled } }); users(); });
      const self = u.username === me.username;
      const role = el("select", { "aria-label": "Role of " + u.username, disabled: self, title: self ? "You cannot change your own role" : null },
        ...r.body.roles.map((x) => el("option", { value: x, text: x, selected: x === u.role })));
      const wards = el("input", { value: u.wards.join(", "), "aria-label": "Wards of " + u.username, size: "14" });
      const teams = el("input", { value: u.teams.join(", "), "aria-label": "Care teams of " + u.username, size: "12" });
      const save = el("button", { type: "button", class: "secondary", text: "Save", "aria-label": "Save the access of " + u.username });
      save.addEventListener("click", async () => {
        const json = { wards: names(wards.value), teams: names(teams.value) };
        if (!self) json.role = role.value;
        const res = await MT.apiJson("/app/api/admin/users/" + encodeURIComponent(u.username) + "/access", { method: "POST", json });
        MT.status("admin-status", res.ok ? "Saved " + u.username + ": " + res.body.role + "." : (res.body && res.body.message) || "Could not save.", !res.ok);
        if (res.ok) users();
      });
      const reset = el("button", { type: "button", class: "secondary", text: "Reset password", "aria-label": "Reset the password of " + u.username });
      reset.addEventListener("click", async () => {
        if (!window.confirm("Reset the password of " + u.username + "? Their sessions end and a new random password is shown once.")) return;
        const res = await MT.apiJson("/app/api/admin/users/" + encodeURIComponent(u.username) + "/password", { method: "POST", json: {} });
        const secret = document.getElementById("nu-secret");
        secret.textContent = res.ok ? "New password of " + res.body.username + ": " + res.body.new_password + " (shown once; give it to the user in person; " + res.body.sessions_ended + " session(s) ended)." : "";
        MT.status("admin-status", res.ok ? "Password of " + u.username + " reset." : (res.body && res.body.message) || "Could not reset the password.", !res.ok);
      });
      return el("tr", {}, td(u.username), el("td", {}, role), el("td", {}, wards), el("td", {}, teams), el("td", {}, save),
        td((u.disabled ? "disabled" : "active") + (u.password_change_required ? ", must change password" : "")), el("td", {}, self ? null : b, self ? null : reset));
    }));
    return true;
  }

  document.getElementById("new-user").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = (id) => document.getElementById(id).value;
    const json = { username: v("nu-name").trim(), role: v("nu-role"), wards: names(v("nu-wards")), teams: names(v("nu-teams")) };
    if (v("nu-password")) json.password = v("nu-password");
    const r = await MT.apiJson("/app/api/admin/users", { method: "POST", json });
    const secret = document.getElementById("nu-secret");
    secret.textContent = "";
    if (!r.ok) { MT.status("admin-status", (r.body && r.body.message) || "Could not create the user.", true); return; }
    MT.status("admin-status", "Created " + r.body.username + " (" + r.body.role + ").");
    if (r.body.initial_password) secret.textContent = "Initial password of " + r.body.username + ": " + r.body.initial_password + " (shown once; give it to the user in person).";
    document.getElementById("new-user").reset();
    users();
  });

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
