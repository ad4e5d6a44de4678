/* Sign-in page: explains why the user is here and starts the authorization-code flow. */
"use strict";
(async () => {
  const params = new URLSearchParams(location.search);
  const reasons = { idle: "You were signed out after a period of inactivity.", expired: "Your session ended; please sign in again.",
    "signed-out": "You are signed out." };
  const why = reasons[params.get("reason")];
  if (why) MT.status("login-reason", why);
  const c = await MT.getConfig();
  if (c.external_oidc) { document.getElementById("oidc").hidden = false; document.getElementById("oidc-name").textContent = c.external_oidc; }
  const next = params.get("next");
  document.getElementById("signin").addEventListener("click", () => MT.signIn(next && next.startsWith("/app") ? next : "/app/"));
})();
