/* Sign-in page: explains why the user is here and starts the authorization-code flow with the built-in issuer or
   the configured external OpenID Connect issuer. */
"use strict";
(async () => {
  const params = new URLSearchParams(location.search);
  const reasons = { idle: "You were signed out after a period of inactivity.", expired: "Your session ended; please sign in again.",
    "signed-out": "You are signed out.", denied: "You are signed out (medtwin access was refused)." };
  const stored = MT.takeSignOutReason();   // set before a sign-out through the identity provider's logout
  const why = reasons[params.get("reason") || stored];
  if (why) MT.status("login-reason", why);
  const next = params.get("next");
  const target = next && next.startsWith("/app") ? next : "/app/";
  document.getElementById("signin").addEventListener("click", () => MT.signIn(target, false));
  const c = await MT.getConfig();
  if (!c.builtin) document.getElementById("builtin").hidden = true;   // the provider only (configured)
  if (c.external) {
    document.getElementById("oidc").hidden = false;
    document.getElementById("builtin-or").hidden = false;
    document.getElementById("oidc-name").textContent = c.external.name;
    const button = document.getElementById("signin-external");
    if (c.external.available) {
      button.addEventListener("click", () => MT.signIn(target, true));
    } else {
      button.disabled = true;
      MT.status("oidc-status", c.external.name + " cannot be reached now (" + c.external.error + "); use a medtwin account or try again later.", true);
    }
  }
})();
