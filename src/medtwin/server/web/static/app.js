/* medtwin web app: sign-in (authorization code + PKCE, with the built-in issuer or the configured external OpenID
   Connect issuer), the signed-in user's tokens (in this tab's sessionStorage), API calls, role-aware navigation,
   automatic logoff after inactivity, the break-glass dialog. No third-party code. */
"use strict";

const MT = (() => {
  const S = window.sessionStorage;
  const TOKEN = "mt.token", PKCE = "mt.pkce", ME = "mt.me", BYE = "mt.signout-reason";
  let config = null;
  let me = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  const timeFmt = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dateFmt = new Intl.DateTimeFormat([], { year: "numeric", month: "2-digit", day: "2-digit" });
  function fmtTime(iso, withDate) {   // formatters made once: toLocaleTimeString builds one per call
    if (!iso) return "–";
    const d = new Date(iso);
    return withDate ? dateFmt.format(d) + " " + timeFmt.format(d) : timeFmt.format(d);
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return typeof v === "number" ? v.toFixed(digits === undefined ? 0 : digits) : String(v);
  }

  function status(id, text, isError) {
    const node = document.getElementById(id);
    if (!node) return;
    node.textContent = text;
    node.classList.toggle("error", !!isError);
  }

  async function getConfig() {
    if (!config) config = await (await fetch("/app/api/config")).json();
    return config;
  }

  function b64url(bytes) {
    let s = "";
    for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function randomString(n) {
    const a = new Uint8Array(n);
    crypto.getRandomValues(a);
    return b64url(a);
  }

  // The issuer a sign-in uses: the built-in one, or (external) the OpenID Connect issuer of the config.
  function issuerOf(c, external) {
    if (!external) return { authorize: c.authorize, token: c.token, client_id: c.client_id, scope: c.scope };
    return c.external && c.external.available ? c.external : null;
  }

  function redirectUri(iss) { return (iss && iss.redirect_uri) || location.origin + "/app/callback"; }

  const FORM = { "Content-Type": "application/x-www-form-urlencoded" };

  async function signIn(next, external) {
    const c = await getConfig();
    const iss = issuerOf(c, external);
    if (!iss) throw new Error("the external sign-in is not available");
    const verifier = randomString(48);
    const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = randomString(16);
    const nonce = external ? randomString(16) : null;   // bound into the ID token: checked by the API at sign-in
    S.setItem(PKCE, JSON.stringify({ verifier, state, nonce, external: !!external, next: next || "/app/" }));
    const q = new URLSearchParams({ response_type: "code", client_id: iss.client_id, redirect_uri: redirectUri(iss),
      scope: iss.scope, state, code_challenge: challenge, code_challenge_method: "S256" });
    if (nonce) q.set("nonce", nonce);
    location.assign(iss.authorize + (iss.authorize.includes("?") ? "&" : "?") + q.toString());
  }

  function saveTokens(body, kind, idToken) {
    S.setItem(TOKEN, JSON.stringify({ access: body.access_token, refresh: body.refresh_token || null,
      expires: Date.now() + 1000 * (body.expires_in || 900), kind, id_token: body.id_token || idToken || null }));
  }

  function failSignIn(text) { status("status", "Sign-in failed: " + text, true); }

  function deny(message, c, idToken) {   // a user the identity provider knows but medtwin does not
    document.getElementById("callback-title").textContent = "Access denied";
    status("status", message || "Your account has no role in medtwin.", true);
    const actions = document.getElementById("denied-actions");
    actions.hidden = false;
    document.getElementById("denied-signout").addEventListener("click", () => endSession(c.external, idToken, "denied"));
  }

  async function finishSignIn() {
    const params = new URLSearchParams(location.search);
    const saved = JSON.parse(S.getItem(PKCE) || "null");
    S.removeItem(PKCE);   // single use: a second answer (a replayed URL) finds nothing to match
    if (!saved || params.get("state") !== saved.state) {
      failSignIn("the answer does not match this browser's request. Please sign in again.");
      return;
    }
    if (params.get("error")) { failSignIn(params.get("error_description") || params.get("error")); return; }
    const c = await getConfig();
    const iss = issuerOf(c, saved.external);
    if (!params.get("code") || !iss) { failSignIn("no authorization code, or the issuer is not available."); return; }
    let r, body;
    try {
      r = await fetch(iss.token, { method: "POST", headers: FORM, body: new URLSearchParams({
        grant_type: "authorization_code", code: params.get("code"), redirect_uri: redirectUri(iss),
        client_id: iss.client_id, code_verifier: saved.verifier }) });
      body = await r.json();
    } catch (e) { failSignIn("the issuer's token endpoint did not answer (" + e.message + ")."); return; }
    if (!r.ok) { failSignIn(body.error_description || body.error); return; }
    if (!saved.external) {
      saveTokens(body, "builtin");
      S.removeItem(ME);
    } else {
      if (!body.id_token || !body.access_token) { failSignIn("the identity provider returned no ID token."); return; }
      const check = await fetch("/app/api/signin/external", { method: "POST",
        headers: { Authorization: "Bearer " + body.access_token, "Content-Type": "application/json" },
        body: JSON.stringify({ id_token: body.id_token, nonce: saved.nonce }) });
      const answer = await check.json().catch(() => ({}));
      if (check.status === 403) { deny(answer.message, c, body.id_token); return; }
      if (!check.ok) { failSignIn(answer.message || "the API refused the tokens (" + check.status + ")."); return; }
      saveTokens(body, "external");
      S.setItem(ME, JSON.stringify(answer));
    }
    location.replace(saved.next && saved.next.startsWith("/app") ? saved.next : "/app/");
  }

  // Ends the session at the external issuer too (RP-initiated logout): on a shared ward computer the next user
  // must not be signed in as the previous one by the identity provider's own session.
  function endSession(ext, idToken, reason) {
    S.setItem(BYE, reason || "");
    if (!ext || !ext.end_session) { location.assign("/app/login"); return; }
    const q = new URLSearchParams({ client_id: ext.client_id,
      post_logout_redirect_uri: ext.post_logout_redirect_uri || location.origin + "/app/login" });
    if (idToken) q.set("id_token_hint", idToken);
    location.assign(ext.end_session + (ext.end_session.includes("?") ? "&" : "?") + q.toString());
  }

  function tokens() { return JSON.parse(S.getItem(TOKEN) || "null"); }

  let refreshing = null;   // one refresh at a time: a refresh token is single use (reuse revokes the session)
  function refresh() {
    if (!refreshing) refreshing = doRefresh().finally(() => { refreshing = null; });
    return refreshing;
  }

  async function doRefresh() {
    const t = tokens();
    if (!t || !t.refresh) return false;
    const iss = issuerOf(await getConfig(), t.kind === "external");
    if (!iss) return false;
    let r;
    try {
      r = await fetch(iss.token, { method: "POST", headers: FORM,
        body: new URLSearchParams({ grant_type: "refresh_token", refresh_token: t.refresh, client_id: iss.client_id }) });
    } catch (e) { return false; }
    if (!r.ok) return false;
    const body = await r.json();
    if (signingOut) return false;   // a sign-out began meanwhile: do not bring the tokens back
    saveTokens(body, t.kind, t.id_token);
    return true;
  }

  async function accessToken() {
    const t = tokens();
    if (!t) return null;
    if (t.expires - Date.now() < 30000 && !(await refresh())) return null;
    return tokens().access;
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({}, opts.headers || {});
    if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
    if (opts.breakGlass) headers["X-Break-Glass-Reason"] = opts.breakGlass;
    for (let attempt = 0; attempt < 2; attempt++) {
      const token = await accessToken();
      if (!token) { await signOut("expired"); throw new Error("signed out"); }
      headers.Authorization = "Bearer " + token;
      const r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body });
      if (r.status === 401 && attempt === 0 && (await refresh())) continue;
      if (r.status === 401) { await signOut("expired"); throw new Error("signed out"); }
      return r;
    }
    throw new Error("unreachable");
  }

  async function apiJson(path, opts) {
    const r = await api(path, opts);
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    return { ok: r.ok, status: r.status, body };
  }

  let signingOut = false;
  async function signOut(reason) {
    if (signingOut) return;   // the first reason wins (a request failing because of this sign-out says nothing new)
    signingOut = true;
    const t = tokens();
    S.removeItem(TOKEN); S.removeItem(ME);
    if (t && t.kind === "external") {
      const ext = (await getConfig()).external;
      try {   // this API refuses the access token from now on
        await fetch("/app/api/signout/external", { method: "POST", headers: { Authorization: "Bearer " + t.access } });
      } catch (e) { /* signed out locally all the same */ }
      if (t.refresh && ext && ext.revoke) {
        try {
          await fetch(ext.revoke, { method: "POST", headers: FORM,
            body: new URLSearchParams({ token: t.refresh, token_type_hint: "refresh_token", client_id: ext.client_id }) });
        } catch (e) { /* the provider's session is ended below all the same */ }
      }
      endSession(ext, t.id_token, reason);
      return;
    }
    if (t) {
      try {
        await fetch("/oauth/revoke", { method: "POST", headers: FORM,
          body: new URLSearchParams({ token: t.refresh || t.access }) });
      } catch (e) { /* signed out locally all the same */ }
    }
    location.assign("/app/login" + (reason ? "?reason=" + encodeURIComponent(reason) : ""));
  }

  async function whoami() {
    const cached = S.getItem(ME);
    if (cached) return JSON.parse(cached);
    const r = await apiJson("/app/api/me");
    if (!r.ok) throw new Error("cannot read who is signed in");
    S.setItem(ME, JSON.stringify(r.body));
    return r.body;
  }

  function homeFor(role) {
    return { researcher: "/app/research", admin: "/app/ward", clinician: "/app/ward", nurse: "/app/ward",
      pharmacist: "/app/patients" }[role] || "/app/hospital";
  }

  // -- automatic logoff --------------------------------------------------------------------------------------
  function startIdleTimer(idleS) {
    let last = Date.now();
    const warnAt = Math.max(idleS * 0.5, idleS - 60);
    const dialog = document.getElementById("idle-dialog");
    const left = document.getElementById("idle-left");
    const bump = () => { last = Date.now(); if (dialog && dialog.open) dialog.close(); };
    for (const ev of ["mousedown", "keydown", "touchstart", "wheel", "scroll"]) {
      window.addEventListener(ev, bump, { passive: true, capture: true });
    }
    document.getElementById("idle-stay")?.addEventListener("click", bump);
    setInterval(() => {
      const idle = (Date.now() - last) / 1000;
      if (idle >= idleS) { signOut("idle"); return; }
      if (idle >= warnAt && dialog && !dialog.open) dialog.showModal();
      if (dialog && dialog.open && left) left.textContent = String(Math.ceil(idleS - idle));
    }, 500);
  }

  // -- break-glass ---------------------------------------------------------------------------------------------
  function askBreakGlass() {
    return new Promise((resolve) => {
      const dialog = document.getElementById("glass-dialog");
      const reason = document.getElementById("glass-reason");
      const error = document.getElementById("glass-error");
      error.textContent = "";
      reason.value = "";
      const done = () => {
        dialog.removeEventListener("close", done);
        resolve(dialog.returnValue === "open" && reason.value.trim().length >= 5 ? reason.value.trim() : null);
      };
      dialog.addEventListener("close", done);
      dialog.showModal();
      reason.focus();
    });
  }

  async function boot() {
    const page = document.body.dataset.page;
    if (page === "callback") { await finishSignIn(); return null; }
    if (page === "login") return null;
    if (!tokens()) { location.assign("/app/login?next=" + encodeURIComponent(location.pathname + location.hash)); return null; }
    try { me = await whoami(); } catch (e) { await signOut("expired"); return null; }
    for (const li of document.querySelectorAll("#nav li")) {
      li.hidden = !li.dataset.roles.split(" ").includes(me.role);
    }
    const who = document.getElementById("who");
    if (who) who.textContent = (me.username || me.subject) + " · " + me.role;
    const account = document.getElementById("account-link");
    if (account) account.hidden = false;
    const so = document.getElementById("signout");
    if (so) { so.hidden = false; so.addEventListener("click", () => signOut("signed-out")); }
    const c = await getConfig();
    startIdleTimer(c.idle_s);
    if (page === "home") location.replace(homeFor(me.role));
    return me;
  }

  const ready = boot();
  function takeSignOutReason() {   // why the last sign-out happened, when it went through the issuer's logout
    const reason = S.getItem(BYE);
    S.removeItem(BYE);
    return reason;
  }

  return { el, fmt, fmtTime, status, api, apiJson, signIn, signOut, accessToken, askBreakGlass, ready, getConfig,
    homeFor, takeSignOutReason, get me() { return me; } };
})();
