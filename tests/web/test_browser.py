"""The web app in a real browser: Playwright's Python API driving Debian's Chromium (/usr/bin/chromium).

One platform (``medtwin demo``'s code: API + web app, MLLP listener, twin worker, virtual monitors at 720x
simulated time) and one browser serve the whole module. Screenshots of every page go to the run's artifacts
(``<pytest basetemp>/screenshots``). Skipped with a notice when Playwright or Chromium is missing (.ci/run installs
Chromium with apt).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
)
CHROMIUM = os.environ.get("MEDTWIN_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    pytest.skip(f"NOTICE: no Chromium at {CHROMIUM} (apt-get install chromium): browser tests skipped",
                allow_module_level=True)  # fmt: skip

from medtwin.cli.platform_demo import free_port, run_platform_demo  # noqa: E402
from medtwin.security.oidc import ClaimMapping, OidcSettings  # noqa: E402
from medtwin.store import Store  # noqa: E402

from .oidc_issuer import LoopbackIdP  # noqa: E402

PASSWORD = "browser-test-pw"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


class Platform:
    """The demo platform running in a background thread with its own event loop."""

    def __init__(self, folder: Path, oidc: OidcSettings | None = None) -> None:
        self.folder = folder
        self.oidc = oidc
        self.info: dict[str, Any] = {}
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="platform", daemon=True)

    def _run(self) -> None:
        from rich.console import Console

        from medtwin.cli.monitor import run_loop

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()

            def ready(info: dict[str, Any]) -> None:
                self.info.update(info)
                self.ready.set()

            await run_platform_demo(data_dir=self.folder, host="127.0.0.1", port=free_port(), mllp_port=0,
                                    minutes=None, monitors=True, patients=6, time_scale=720.0, interval_s=0.5,
                                    console=Console(file=io.StringIO()), stop=self.stop, on_ready=ready,
                                    password=PASSWORD, oidc=self.oidc)  # fmt: skip

        try:
            run_loop(main())
        except BaseException as exc:  # reported by the fixture
            self.error = exc
            self.ready.set()

    def close(self) -> None:
        if self.loop is not None and self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        if self.thread.is_alive():  # say where it hangs
            import faulthandler
            import sys

            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)

    @property
    def origin(self) -> str:
        return str(self.info["origin"])

    def store(self) -> Store:
        return Store(self.info["url"])


@pytest.fixture(scope="module")
def idp() -> Iterator[LoopbackIdP]:
    """The hospital's identity provider (a loopback OpenID Connect provider with Keycloak-style claims)."""
    made = LoopbackIdP(alg="RS256")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, idp: LoopbackIdP) -> Iterator[Platform]:
    claims = ClaimMapping(role_claim="realm_access.roles", roles=(("medtwin-doctor", "clinician"),
                          ("medtwin-nurse", "nurse")), wards_claim="groups", ward_prefix="/wards/",
                          teams_claim="groups", team_prefix="/teams/", default_scope="user/*.cruds")  # fmt: skip
    oidc = OidcSettings(idp.url, client_id=idp.client_id, name="Test Hospital IdP", claims=claims)
    p = Platform(tmp_path_factory.mktemp("platform"), oidc)
    p.thread.start()
    assert p.ready.wait(240), "the platform did not start within 240 s"
    if p.error is not None:
        raise p.error
    try:
        yield p
    finally:
        p.close()
        assert not p.thread.is_alive(), "the platform did not stop"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pw = playwright_sync.sync_playwright().start()
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    b = pw.chromium.launch(executable_path=exe, args=ARGS, headless=True)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    ctx.set_default_timeout(20_000)
    errors: list[str] = []
    ctx.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    ctx.on("weberror", lambda e: errors.append(str(e.error)))
    try:
        yield ctx
    finally:
        ctx.close()
    csp = [e for e in errors if "Content Security Policy" in e or "Refused to" in e]
    assert not csp, csp  # every page works under its policy (no inline script, nothing from elsewhere)
    print("browser console errors:", errors)


def sign_in(page: Any, platform: Platform, username: str, *, path: str = "/app/") -> None:
    page.goto(platform.origin + "/app/login")
    page.click("#signin")
    page.wait_for_url("**/oauth/authorize**")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/app/**")
    page.wait_for_function("() => document.body.dataset.page !== 'callback' && document.body.dataset.page !== 'home'")
    if path != "/app/":
        page.goto(platform.origin + path)


def patient_ids(platform: Platform) -> dict[str, str]:
    """MRN or name -> patient id."""
    store = platform.store()
    try:
        out = {}
        for p in store.patients():
            ident = p.identity
            if ident is None:
                continue
            out[ident.display_name] = p.patient_id
            for i in ident.identifiers:
                out[i.value] = p.patient_id
        return out
    finally:
        store.close()


def wait_for_monitor_patients(platform: Platform, n: int = 6, timeout: float = 60.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = patient_ids(platform)
        if sum(1 for k in ids if k.startswith("VM-")) >= n:
            return ids
        time.sleep(0.5)
    raise AssertionError("the virtual monitored patients were not admitted")


# -- sign in and the ward board -----------------------------------------------------------------------------------
def test_sign_in_and_the_ward_shows_its_patients(platform: Platform, context: Any, shots: Path) -> None:
    wait_for_monitor_patients(platform)
    page = context.new_page()
    sign_in(page, platform, "nurse.kim")
    assert page.url.endswith("/app/ward")
    page.wait_for_selector("#board tbody tr")
    page.wait_for_function("() => document.querySelectorAll('#board tbody tr').length >= 5")
    text = page.inner_text("#board tbody")
    assert "Alberto Atencio" in text  # a sample patient admitted to WARD-A
    assert "VM-0001" in text  # a monitored patient of WARD-A
    assert "VM-0006" not in text  # on WARD-B: not this nurse's ward
    assert page.is_visible("text=nurse.kim · nurse")
    assert page.locator("#nav li:not([hidden])").all_inner_texts() == ["Ward board", "Patients", "Hospital"]
    stale = page.locator("#row-" + patient_ids(platform)["Alberto Atencio"] + " .stale-tag")
    assert stale.count() >= 1  # his vitals are three hours old
    page.screenshot(path=str(shots / "ward.png"), full_page=True)


# -- sign in with the hospital's identity provider ------------------------------------------------------------------
def _external_sign_in(page: Any, platform: Platform, idp: LoopbackIdP, username: str) -> None:
    page.goto(platform.origin + "/app/login")
    page.click("#signin-external")
    page.wait_for_url(idp.url + "/authorize?**")
    page.fill("input[name=username]", username)
    page.click("button[type=submit]")
    page.wait_for_url(platform.origin + "/app/**")


def test_sign_in_with_the_hospital_identity_provider_then_sign_out(platform: Platform, idp: LoopbackIdP,
                                                                   context: Any, shots: Path) -> None:  # fmt: skip
    import httpx

    wait_for_monitor_patients(platform)
    page = context.new_page()
    page.goto(platform.origin + "/app/login")
    page.wait_for_selector("#signin-external:visible")  # shown once the page has read the config
    assert page.inner_text("#signin-external") == "Sign in with Test Hospital IdP"
    assert page.is_visible("#signin")  # the built-in sign-in stays beside it
    page.screenshot(path=str(shots / "login-external.png"))
    _external_sign_in(page, platform, idp, "kim.ext")
    page.wait_for_url("**/app/ward")
    page.wait_for_function("() => document.querySelectorAll('#board tbody tr').length >= 5")
    text = page.inner_text("#board tbody")
    assert "VM-0001" in text
    assert "VM-0006" not in text
    assert page.is_visible("text=kim.ext · nurse")
    exchange = idp.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code"
    assert len(exchange["code_verifier"]) >= 43
    stored = page.evaluate("() => [Object.keys(localStorage).length, JSON.parse(sessionStorage.getItem('mt.token'))]")
    assert stored[0] == 0
    assert stored[1]["kind"] == "external"
    access = stored[1]["access"]
    page.click("#signout")
    page.wait_for_url("**/app/login")
    page.wait_for_selector("#login-reason:has-text('signed out')")
    assert idp.logouts[-1]["id_token_hint"] == stored[1]["id_token"]  # the provider's session ended too
    assert stored[1]["refresh"] in idp.revoked
    me = httpx.get(platform.origin + "/app/api/me", headers={"Authorization": "Bearer " + access})
    assert me.status_code == 401  # the API refuses the signed-out token


def test_a_provider_user_without_a_medtwin_role_is_denied(platform: Platform, idp: LoopbackIdP, context: Any,
                                                          shots: Path) -> None:  # fmt: skip
    from axe_playwright_python.sync_playwright import Axe

    page = context.new_page()
    _external_sign_in(page, platform, idp, "visitor")
    page.wait_for_selector("#callback-title:has-text('Access denied')")
    assert "no medtwin role" in page.inner_text("#status")
    assert page.evaluate("() => sessionStorage.getItem('mt.token')") is None
    bad = [v["id"] for v in Axe().run(page).response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, bad
    page.screenshot(path=str(shots / "access-denied.png"))
    page.click("#denied-signout")
    page.wait_for_url("**/app/login")
    page.wait_for_selector("#login-reason:has-text('refused')")


def test_automatic_logoff_also_ends_the_providers_session(platform: Platform, idp: LoopbackIdP, context: Any) -> None:
    page = context.new_page()
    page.clock.install()
    _external_sign_in(page, platform, idp, "kim.ext")
    page.wait_for_selector("#board tbody tr")
    before = len(idp.logouts)
    page.clock.fast_forward("14:30")
    page.wait_for_selector("#idle-dialog[open]")
    page.clock.fast_forward("01:00")
    page.wait_for_url("**/app/login")
    page.wait_for_selector("#login-reason:has-text('inactivity')")
    assert len(idp.logouts) == before + 1
    assert page.evaluate("() => sessionStorage.getItem('mt.token')") is None


@pytest.mark.parametrize("tamper", ["state", "nonce"])
def test_a_tampered_state_or_nonce_is_refused(platform: Platform, idp: LoopbackIdP, context: Any,
                                              tamper: str) -> None:  # fmt: skip
    page = context.new_page()
    idp.tamper[tamper] = "not-the-one-the-browser-sent"
    try:
        _external_sign_in(page, platform, idp, "kim.ext")
        page.wait_for_selector("#status.error")
    finally:
        idp.tamper.clear()
    text = page.inner_text("#status")
    assert ("does not match this browser's request" if tamper == "state" else "nonce") in text, text
    assert page.evaluate("() => sessionStorage.getItem('mt.token')") is None


def _send_deteriorating_patient(platform: Platform, mrn: str) -> None:
    """Admit a new patient to WARD-A over ADT and send one ORU^R01 with NEWS2 >= 7 (RCP 2017 high)."""
    from medtwin import codes
    from medtwin.interop.hl7v2 import OruResult, build_oru_r01
    from medtwin.interop.mllp import MllpClient
    from medtwin.monitoring.virtual import VirtualPatient
    from medtwin.server.web.seed import adt_a01

    now = datetime.now(UTC)
    patient = VirtualPatient(mrn, "sepsis", start=now)
    oru = build_oru_r01(control_id=f"T{mrn}", mrn=mrn, observed=now, family="Virtual", given="Sepsis",
                        results=[OruResult(codes.RESPIRATORY_RATE, 30.0, "/min"),
                                 OruResult(codes.HEART_RATE, 135.0, "/min"),
                                 OruResult(codes.OXYGEN_SATURATION_PULSE_OX, 89.0, "%"),
                                 OruResult(codes.SYSTOLIC_BP, 88.0, "mm[Hg]"),
                                 OruResult(codes.BODY_TEMPERATURE, 39.4, "Cel"),
                                 OruResult(codes.INHALED_OXYGEN_FLOW, 0.0, "L/min"),
                                 OruResult(codes.LEVEL_OF_CONSCIOUSNESS, codes.ACVPU["A"])])  # fmt: skip

    async def send() -> None:
        async with await MllpClient.connect("127.0.0.1", int(platform.info["mllp_port"])) as client:
            assert "AA" in await client.send(adt_a01(patient, "WARD-A", "A-30", at=now, control_id=f"A{mrn}"))
            assert "AA" in await client.send(oru)

    worker = threading.Thread(target=asyncio.run, args=(send(),))  # the sync Playwright API owns this thread's loop
    worker.start()
    worker.join(30)


def test_a_deteriorating_patients_alert_appears_live_and_is_acknowledged(platform: Platform, context: Any,
                                                                          shots: Path) -> None:  # fmt: skip
    page = context.new_page()
    sign_in(page, platform, "nurse.kim")
    page.wait_for_selector("#board tbody tr")
    page.wait_for_selector("#live.on")
    page.evaluate("window.__sameDocument = true")
    started = time.monotonic()
    _send_deteriorating_patient(platform, "VM-7001")
    row = page.locator("tr:has-text('VM-7001')")
    row.locator(".alert").first.wait_for(timeout=30_000)
    elapsed = time.monotonic() - started
    assert elapsed < 30.0
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert row.locator(".news2.band-high").count() == 1
    page.screenshot(path=str(shots / "ward-alert.png"), full_page=True)
    alert_id = row.locator(".alert").first.get_attribute("data-alert")
    row.locator("button:has-text('Ack')").first.click()
    page.wait_for_selector("#action-status:has-text('acknowledged')")
    page.wait_for_function(f"() => !document.querySelector('[data-alert=\"{alert_id}\"]')")
    store = platform.store()
    try:
        event = next(e for e in store.events(kind="alert") if e.event_id == alert_id)
        assert event.status == "acknowledged"
    finally:
        store.close()


def test_the_board_sorts_by_risk(platform: Platform, context: Any) -> None:
    page = context.new_page()
    sign_in(page, platform, "dr.lee")
    page.wait_for_function("() => document.querySelectorAll('#board tbody tr').length >= 5")
    scores = [
        int(s) if s else -1 for s in page.eval_on_selector_all("#board tbody tr", "rs => rs.map(r => r.dataset.news2)")
    ]
    assert scores == sorted(scores, reverse=True)
    page.select_option("#sort", "bed")
    first = page.inner_text("#board tbody tr:first-child td:first-child")
    assert first.startswith("WARD-A · A-01")


# -- patient page, glucose, dosing --------------------------------------------------------------------------------
def test_patient_page_charts(platform: Platform, context: Any, shots: Path) -> None:
    ids = wait_for_monitor_patients(platform)
    page = context.new_page()
    sign_in(page, platform, "dr.lee", path=f"/app/patient/{ids['VM-0002']}")
    page.wait_for_selector("#vitals-chart .main-svg")
    names = page.evaluate("document.getElementById('vitals-chart').data.map(t => t.name)")
    assert "NEWS2" in names
    assert "Alerts" in names
    assert any(n.startswith("Heart rate") for n in names)
    assert page.inner_text("#patient-name") == "Sepsis Virtual"
    page.screenshot(path=str(shots / "patient.png"), full_page=True)


def test_glucose_what_if_shows_two_curves(platform: Platform, context: Any, shots: Path) -> None:
    ids = patient_ids(platform)
    page = context.new_page()
    sign_in(page, platform, "dr.lee", path=f"/app/patient/{ids['Liz Conn']}")
    page.wait_for_selector("#agp-chart .main-svg")
    assert "Time in range 70-180" in page.inner_text("#cgm-metrics")
    page.fill("#bolus-scale", "1.3")
    page.fill("#meal-scale", "1.2")
    with page.expect_response("**/glucose/whatif", timeout=60_000) as answer:
        page.click("#whatif-run")
    changed = answer.value.json()["curves"][1]["therapy"]
    assert (changed["bolus_scale"], changed["meal_scale"]) == (1.3, 1.2)  # the form's insulin and meal changes
    page.wait_for_selector("#whatif-table:not([hidden])", timeout=60_000)
    curves = page.evaluate(
        "document.getElementById('whatif-chart').data.filter(t => t.mode === 'lines' && t.fill === undefined"
        " && t.showlegend !== false).map(t => [t.name, t.y.length])"
    )
    assert [c[0] for c in curves] == ["recorded therapy", "what-if"]
    assert all(n > 100 for _, n in curves)
    page.locator("#glucose").screenshot(path=str(shots / "glucose.png"))


def test_dosing_recommendation_shows_the_regimen_table_and_proposes(platform: Platform, context: Any,
                                                                    shots: Path) -> None:  # fmt: skip
    ids = patient_ids(platform)
    pid = ids["Alberto Atencio"]
    page = context.new_page()
    sign_in(page, platform, "dr.lee", path=f"/app/patient/{pid}")
    page.click("#dosing-run")
    page.wait_for_selector("#regimens:not([hidden])", timeout=60_000)
    rows = page.locator("#regimens tbody tr")
    assert rows.count() == 3  # every 8, 12 and 24 h
    table = page.inner_text("#regimens")
    assert "AUC24" in table
    assert " h" in table
    assert "%" in table  # probability of target attainment
    page.locator("#dosing").screenshot(path=str(shots / "dosing.png"))
    rows.nth(1).locator("button:has-text('Propose')").click()
    page.wait_for_selector("#dosing-status:has-text('Proposal stored')")
    store = platform.store()
    try:
        proposals = [m for m in store.medication_requests(pid) if m.intent == "proposal"]
        assert len(proposals) == 1
        assert proposals[0].interval_h == 12
    finally:
        store.close()


def test_dosing_from_entered_doses_and_levels_for_a_patient_without_a_course(platform: Platform, context: Any,
                                                                             shots: Path) -> None:  # fmt: skip
    ids = patient_ids(platform)
    pid = ids["Chet Thompson"]  # no vancomycin course in the record; pharmacists reach every patient
    page = context.new_page()
    sign_in(page, platform, "pharm.diaz", path=f"/app/patient/{pid}")
    page.wait_for_selector("#dosing-entry-box[open]")  # no course: the entry form is open, the record's run hidden
    assert page.is_hidden("#dosing-run")
    local = datetime.now().replace(second=0, microsecond=0)
    page.click("#entry-add-dose")
    page.fill("#entry-doses tbody tr:nth-child(1) .e-time", (local - timedelta(hours=13)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#entry-doses tbody tr:nth-child(1) .e-amount", "1500")
    page.click("#entry-add-level")
    page.fill("#entry-levels tbody tr:nth-child(1) .e-time", (local - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#entry-levels tbody tr:nth-child(1) .e-value", "980")  # a unit slip: refused, the row is named
    page.fill("#entry-weight", "78")
    page.fill("#entry-scr", "1.0")
    page.click("#entry-run")
    page.wait_for_selector("#entry-errors li")
    assert "levels[0].value_mg_l" in page.inner_text("#entry-errors")
    page.fill("#entry-levels tbody tr:nth-child(1) .e-value", "9.8")
    page.click("#entry-run")
    page.wait_for_selector("#regimens:not([hidden])", timeout=60_000)
    assert page.locator("#regimens tbody tr").count() == 3  # every 8, 12 and 24 h
    assert "entered data" in page.inner_text("#regimens caption")
    used = page.inner_text("#dosing-data")
    assert "1500 mg" in used
    assert "9.8 mg/L" in used
    assert "entered (not in the record)" in used
    page.locator("#dosing").screenshot(path=str(shots / "dosing-entered.png"))
    page.locator("#regimens tbody tr").nth(2).locator("button:has-text('Propose')").click()
    page.wait_for_selector("#dosing-status:has-text('from entered data')")
    store = platform.store()
    try:
        proposals = [m for m in store.medication_requests(pid) if m.intent == "proposal"]
        assert [m.interval_h for m in proposals] == [24]
        assert "from entered data: 1 dose(s), 1 level(s), weight, creatinine" in (proposals[0].note or "")
        vanco = [a for a in store.medication_administrations(pid) if "vanco" in (a.medication.display or "").lower()]
        assert vanco == []  # the entered dose is not written into the record
    finally:
        store.close()


# -- hospital -------------------------------------------------------------------------------------------------------
def test_hospital_forecast_and_what_if(platform: Platform, context: Any, shots: Path) -> None:
    page = context.new_page()
    sign_in(page, platform, "dr.lee", path="/app/hospital")
    page.wait_for_selector("#forecast-charts .main-svg", timeout=90_000)
    assert page.locator("#forecast-charts .js-plotly-plot").count() >= 3
    assert "P(full)" in page.inner_text("#census")
    page.screenshot(path=str(shots / "hospital.png"), full_page=True)
    page.click("#hwhatif-run")
    page.wait_for_selector("#kpis:not([hidden])", timeout=90_000)
    assert page.locator("#kpis tbody tr").count() >= 3


# -- access control ---------------------------------------------------------------------------------------------------
def test_a_nurse_cannot_open_a_patient_outside_their_ward(platform: Platform, context: Any, shots: Path) -> None:
    ids = wait_for_monitor_patients(platform)
    page = context.new_page()
    sign_in(page, platform, "nurse.ali", path=f"/app/patient/{ids['VM-0001']}")  # VM-0001 is on WARD-A
    page.wait_for_selector("#patient-status.error")
    assert page.is_hidden("#patient-body")
    assert "Virtual" not in page.inner_text("main")
    page.click("#break-glass")
    page.fill("#glass-reason", "cardiac arrest call on the next ward")
    page.click("#glass-open")
    page.wait_for_selector("#patient-status:has-text('could not be opened')")
    assert page.is_hidden("#patient-body")  # break-glass is for clinicians: still refused
    page.screenshot(path=str(shots / "nurse-refused.png"))


def test_a_clinician_breaks_the_glass_and_it_is_reviewed(platform: Platform, context: Any, shots: Path) -> None:
    ids = wait_for_monitor_patients(platform)
    page = context.new_page()
    sign_in(page, platform, "dr.lee", path=f"/app/patient/{ids['VM-0006']}")  # VM-0006 is on WARD-B
    page.wait_for_selector("#break-glass")
    page.click("#break-glass")
    page.locator("#glass-dialog").screenshot(path=str(shots / "break-glass.png"))
    page.fill("#glass-reason", "covering WARD-B overnight, deteriorating patient")
    page.click("#glass-open")
    page.wait_for_selector("#patient-body:not([hidden])")
    assert "Break-glass access" in page.inner_text("#patient-status")
    admin = context.new_page()
    sign_in(admin, platform, "admin", path="/app/admin")
    admin.wait_for_selector("#audit-table tbody tr", timeout=60_000)
    assert "Chain verified" in admin.inner_text("#chain"), admin.inner_text("#chain")
    assert "covering WARD-B overnight" in admin.inner_text("#bg-table")
    admin.screenshot(path=str(shots / "admin.png"), full_page=True)
    admin.fill("#nu-name", "nurse.new")  # create a user from the page: a random initial password, shown once
    admin.select_option("#nu-role", "nurse")
    admin.fill("#nu-wards", "WARD-B")
    admin.click("#new-user button[type=submit]")
    admin.wait_for_selector("#nu-secret:has-text('Initial password of nurse.new')")
    admin.wait_for_selector("#users-table tbody tr:has-text('nurse.new')")
    admin.select_option("select[aria-label='Role of nurse.new']", "clinician")
    admin.click("button[aria-label='Save the access of nurse.new']")
    admin.wait_for_selector("#admin-status:has-text('Saved nurse.new: clinician')")
    admin.once("dialog", lambda dialog: dialog.accept())  # "Reset the password of nurse.new?"
    admin.click("button[aria-label='Reset the password of nurse.new']")
    admin.wait_for_selector("#nu-secret:has-text('New password of nurse.new')")
    shown = admin.inner_text("#nu-secret").split(": ", 1)[1].split(" ", 1)[0]
    form = {"grant_type": "password", "username": "nurse.new", "password": shown}
    signed = admin.request.post(platform.origin + "/oauth/token", form=form)
    assert signed.status == 400, signed.text()  # the reset password is right, but must be changed first
    assert "must be changed" in signed.json()["error_description"]
    admin.wait_for_selector("#users-table tbody tr:has-text('nurse.new'):has-text('must change password')")


def test_a_first_sign_in_asks_for_a_new_password_and_the_account_page_changes_it(platform: Platform, context: Any,
                                                                                 shots: Path) -> None:  # fmt: skip
    from argon2 import PasswordHasher
    from axe_playwright_python.sync_playwright import Axe

    from medtwin.security.accounts import Accounts

    store = platform.store()
    try:  # as `medtwin users add` makes a user: the administrator's password must be changed at the first sign-in
        Accounts(store.engine, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)).add_user(
            "nurse.first", "set-by-the-admin", "nurse", wards=["WARD-A"], password_change_required=True
        )
    finally:
        store.close()
    page = context.new_page()
    page.goto(platform.origin + "/app/login")
    page.click("#signin")
    page.wait_for_url("**/oauth/authorize**")
    page.fill("input[name=username]", "nurse.first")
    page.fill("input[name=password]", "set-by-the-admin")
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Choose a new password')")
    page.fill("input[name=current_password]", "set-by-the-admin")
    page.fill("input[name=new_password]", "a ward nurse's own words")
    page.fill("input[name=new_password_again]", "a ward nurse's own wordz")
    page.click("button[type=submit]")
    page.wait_for_selector("[role=alert]:has-text('The two new passwords differ')")
    bad = [v["id"] for v in Axe().run(page).response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, bad
    page.screenshot(path=str(shots / "password-required.png"))
    page.fill("input[name=current_password]", "set-by-the-admin")
    page.fill("input[name=new_password]", "a ward nurse's own words")
    page.fill("input[name=new_password_again]", "a ward nurse's own words")
    page.click("button[type=submit]")
    page.wait_for_url("**/app/ward")  # the sign-in went on to the nurse's board
    page.wait_for_selector("#who:has-text('nurse.first')")
    page.click("#account-link")  # self-service: the account page, from the header
    page.wait_for_url("**/app/account")
    page.wait_for_selector("#password-section:not([hidden])")
    for current, new, shown in [
        ("not my password", "my second own words", "Your current password is not right"),
        ("a ward nurse's own words", "Nurse.First", "this is the user name"),
        ("a ward nurse's own words", "my second own words", "Your password is changed"),
    ]:
        page.fill("#pw-current", current)
        page.fill("#pw-new", new)
        page.fill("#pw-again", new)
        page.click("#pw-submit")
        page.wait_for_selector(f"#password-status:has-text('{shown}')")
    assert "error" not in (page.get_attribute("#password-status", "class") or "")
    page.screenshot(path=str(shots / "account.png"))
    token = platform.origin + "/oauth/token"
    for password, status in [("a ward nurse's own words", 400), ("my second own words", 200)]:
        r = page.request.post(token, form={"grant_type": "password", "username": "nurse.first", "password": password})
        assert r.status == status, (password, r.text())
    page.goto(platform.origin + "/app/ward")  # the session that made the change goes on
    page.wait_for_selector("#board tbody tr")


def test_a_researcher_sees_no_identified_page(platform: Platform, context: Any, shots: Path) -> None:
    ids = wait_for_monitor_patients(platform)
    page = context.new_page()
    sign_in(page, platform, "res.olsen")
    assert page.url.endswith("/app/research")
    page.wait_for_selector("#research tbody tr")
    names = [k for k in ids if " " in k]  # display names
    body = page.inner_text("body")
    assert not any(n in body for n in names)
    assert page.locator("#nav li:not([hidden])").all_inner_texts() == ["Hospital", "Research"]
    page.screenshot(path=str(shots / "research.png"), full_page=True)
    for path in (f"/app/patient/{ids['Liz Conn']}", "/app/ward", "/app/patients"):
        page.goto(platform.origin + path)
        page.wait_for_selector(".error")
        text = page.inner_text("body")
        assert not any(n in text for n in names), path
        assert "Liz" not in text


def test_automatic_logoff_after_inactivity(platform: Platform, context: Any) -> None:
    page = context.new_page()
    page.clock.install()
    sign_in(page, platform, "nurse.kim")
    page.wait_for_selector("#board tbody tr")
    page.clock.fast_forward("14:30")  # the warning shows in the last minute
    page.wait_for_selector("#idle-dialog[open]")
    page.clock.fast_forward("01:00")
    page.wait_for_url("**/app/login?reason=idle")
    assert "inactivity" in page.inner_text("#login-reason")
    page.goto(platform.origin + "/app/ward")  # the token is gone: back to sign-in
    page.wait_for_url("**/app/login**")


# -- accessibility ----------------------------------------------------------------------------------------------------
def test_every_page_has_no_serious_or_critical_accessibility_violation(platform: Platform, context: Any,
                                                                        shots: Path) -> None:  # fmt: skip
    from axe_playwright_python.sync_playwright import Axe

    ids = wait_for_monitor_patients(platform)
    axe = Axe()
    found: dict[str, list[str]] = {}

    def scan(page: Any, name: str) -> None:
        results = axe.run(page)
        bad = [f"{v['id']} ({v['impact']}): {v['help']} x{len(v['nodes'])}" for v in results.response["violations"]
               if v["impact"] in ("serious", "critical")]  # fmt: skip
        if bad:
            found[name] = bad

    page = context.new_page()
    page.goto(platform.origin + "/app/login")
    page.wait_for_selector("#signin")
    scan(page, "login")
    page.screenshot(path=str(shots / "login.png"))
    page.click("#signin")
    page.wait_for_url("**/oauth/authorize**")
    scan(page, "issuer sign-in form")
    sign_in(page, platform, "admin")
    pages = {"ward": ("/app/ward", "#board tbody tr"), "patients": ("/app/patients", "#patients tbody tr"),
             "patient": (f"/app/patient/{ids['Liz Conn']}", "#agp-chart .main-svg"),
             "dosing-patient": (f"/app/patient/{ids['Alberto Atencio']}", "#vitals-chart .main-svg"),
             "hospital": ("/app/hospital", "#forecast-charts .main-svg"),
             "admin": ("/app/admin", "#audit-table tbody tr"),
             "research": ("/app/research", "#research tbody tr"),
             "account": ("/app/account", "#password-section:not([hidden])")}  # fmt: skip
    for name, (path, ready) in pages.items():
        page.goto(platform.origin + path)
        page.wait_for_selector(ready, timeout=90_000)
        scan(page, name)
    page.set_viewport_size({"width": 820, "height": 1180})  # a tablet
    page.goto(platform.origin + "/app/ward")
    page.wait_for_selector("#board tbody tr")
    scan(page, "ward (tablet)")
    page.screenshot(path=str(shots / "ward-tablet.png"), full_page=True)
    assert not found, found


def test_keyboard_reaches_the_board(platform: Platform, context: Any) -> None:
    page = context.new_page()
    sign_in(page, platform, "nurse.kim")
    page.wait_for_selector("#board tbody tr a")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("!!document.activeElement.closest('#board tbody')"):
            break
    else:
        raise AssertionError("no board link reached with the keyboard")
    with contextlib.suppress(Exception):
        page.keyboard.press("Enter")
        page.wait_for_url("**/app/patient/**", timeout=5_000)
    assert "/app/patient/" in page.url
