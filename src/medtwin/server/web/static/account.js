/* Account page: who is signed in, and the change of one's own password (POST /app/api/me/password). */
"use strict";
(async () => {
  const me = await MT.ready;
  if (!me) return;
  const wards = me.wards.length ? me.wards.join(", ") : "none";
  const teams = me.teams.length ? me.teams.join(", ") : "none";
  MT.status("account-who", "Signed in as " + (me.username || me.subject) + " (" + me.role + "); wards: " + wards + "; care teams: " + teams + ".");
  if (!me.local_account) {
    const elsewhere = document.getElementById("password-elsewhere");
    elsewhere.textContent = "You signed in with the hospital's identity provider; change your password there.";
    elsewhere.hidden = false;
    return;
  }
  document.getElementById("password-section").hidden = false;
  const form = document.getElementById("password-form");
  const current = document.getElementById("pw-current");
  const fresh = document.getElementById("pw-new");
  const again = document.getElementById("pw-again");
  const button = document.getElementById("pw-submit");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (fresh.value !== again.value) {
      MT.status("password-status", "The two new passwords differ.", true);
      again.focus();
      return;
    }
    button.disabled = true;
    try {
      const r = await MT.apiJson("/app/api/me/password", { method: "POST",
        json: { current_password: current.value, new_password: fresh.value } });
      if (r.ok) {
        form.reset();
        MT.status("password-status", "Your password is changed; " + r.body.other_sessions_ended + " other session(s) ended.");
        return;
      }
      const message = (r.body && r.body.message) || "The password could not be changed.";
      if (r.body && r.body.error === "wrong-password") {
        MT.status("password-status", "Your current password is not right; nothing was changed.", true);
        current.focus();
      } else if (r.body && r.body.error === "password-policy") {
        MT.status("password-status", "The new password was refused: " + message.replace(/^new_password: password: /, ""), true);
        fresh.focus();
      } else {
        MT.status("password-status", message, true);
      }
    } finally {
      button.disabled = false;
    }
  });
})();
