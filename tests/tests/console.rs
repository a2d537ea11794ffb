//! The officers' console in a real browser: Debian's chromium, headless, driven over WebDriver
//! (chromedriver, on loopback) against two real nodes, with JavaScript switched off in the
//! browser (the console must work without it). An officer signs in, searches the audit log by
//! patient, opens a transfer, reviews a break-glass entry and prints a patient's accounting of
//! disclosures; a wrong token and an EMR token cannot sign in; a session expires after its
//! idle timeout. The response headers (CSP, cookie flags) and the CSRF checks are read from
//! raw HTTP exchanges. The node's own log never shows the patient while the console is used.
//! Screenshots of each page are written to target/console-screenshots/, and to docs/console/
//! (the README's "Security officers") when `HEALTHFED_UPDATE_SCREENSHOTS=1`, so an ordinary
//! test run leaves the checkout unchanged.
//!
//! chromium and chromium-driver are installed with apt-get when missing (`.ci/run` installs
//! them too); the test fails, never skips, when they cannot be had.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use pki_tools::FacilityKind;
use serde_json::{json, Value};

use tests::{bundle_by_prefix, gateway_cli, patient_id, patient_names, Fed, FAST_RETRIES};

/// The sessions of this test's node idle out after this long (the default is 15 min): short,
/// so that the test sees one expire within its run, yet long enough that no gap between two
/// steps of the walk-through reaches it on a loaded machine (they follow each other within a
/// second or two here; a screenshot of a slow browser is the longest).
const IDLE_SECS: u64 = 12;
const WHY: &str = "unconscious patient in the emergency department";
const DELIVERY: Duration = Duration::from_secs(90);
/// Held while apt-get runs (the packaging tests take the same lock).
const DPKG_LOCK: &str = "/tmp/healthfed-tests-dpkg.lock";

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// chromium and chromedriver, installed from Debian when missing.
fn ensure_browser() {
    if on_path("chromium") && on_path("chromedriver") {
        return;
    }
    let out = Command::new("timeout")
        .args(["900", "flock", "-w", "900", DPKG_LOCK, "sh", "-c"])
        .arg(
            "apt-get -o DPkg::Lock::Timeout=600 update -qq && \
             apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium chromium-driver",
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    assert!(
        on_path("chromium") && on_path("chromedriver"),
        "chromium and chromedriver are needed and apt-get did not provide them:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// chromedriver in its own process group; the group (driver and browsers) is killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    /// The browsers chromedriver started, then chromedriver: each by its pid (a test that
    /// failed before `Client::close` leaves them running otherwise).
    fn drop(&mut self) {
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while let Some(pid) = pids.get(i).copied() {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten();
            for task in tasks.flatten() {
                let children = std::fs::read_to_string(task.path().join("children"));
                pids.extend(
                    children
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
            i += 1;
        }
        for pid in pids.iter().skip(1).rev() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clicks and waits (bounded) until the page it was on is gone: a form's answer may be the
/// same URL, so the old page's root going stale is what says the next page is there.
async fn click_through(c: &Client, what: Locator<'_>) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(what).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "the page did not change");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "args": args,
            // Scripts off: every page and form must work without them.
            "prefs": { "profile.managed_default_content_settings.javascript": 2 },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap()
}

/// One HTTP/1.1 exchange on a fresh connection: (status, headers, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

fn screenshot_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = if std::env::var_os("HEALTHFED_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        root.join("docs/console")
    } else {
        root.join("target/console-screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(screenshot_dir().join(name), png).unwrap();
}

async fn text(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn sign_in(c: &Client, base: &str, token: &str) -> String {
    c.goto(&format!("{base}/console/sign-in")).await.unwrap();
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    click_through(c, Locator::Id("sign-in")).await;
    text(c).await
}

fn token(fed: &Fed, id: &str, name: &str, role: &str) -> (String, String) {
    let file = fed.nodes[id].dir.join(format!("{name}.token"));
    let (code, line, err) = gateway_cli(&[
        "token",
        "create",
        "--name",
        name,
        "--role",
        role,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    (
        std::fs::read_to_string(file).unwrap(),
        line.trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_uses_the_console_in_a_real_browser() {
    ensure_browser();
    let fed = Fed::with_extra(
        &[
            ("hosp-a", FacilityKind::Hospital),
            ("clinic-b", FacilityKind::Clinic),
        ],
        &format!("{FAST_RETRIES}\n[console]\nidle_timeout_secs = {IDLE_SECS}\n"),
    );
    // An officer token and an EMR token next to the harness's own (no roles: all of them).
    let (officer, officer_line) = token(&fed, "hosp-a", "officer-kim", "officer");
    let (emr, emr_line) = token(&fed, "hosp-a", "emr-ward", "emr");
    let nd = fed.nodes["hosp-a"].clone();
    let text0 = std::fs::read_to_string(&nd.config_path).unwrap();
    let start = text0.find("tokens = [").unwrap() + "tokens = [".len();
    let end = start + text0[start..].find('\n').unwrap() - 1;
    std::fs::write(
        &nd.config_path,
        format!(
            "{}{}, {officer_line}, {emr_line}{}",
            &text0[..start],
            &text0[start..end],
            &text0[end..]
        ),
    )
    .unwrap();
    let a = fed.start("hosp-a");
    let b = fed.start("clinic-b");
    let base = format!("http://{}", nd.local);

    // A patient with mental-health and substance-use codes: one break-glass transfer, then
    // one with consent recorded.
    let bundle = bundle_by_prefix("Eliseo_Cummings");
    let patient = patient_id(&bundle).unwrap();
    let names = patient_names(&bundle);
    let bg = a
        .send(
            "clinic-b",
            &patient,
            "treatment",
            "fhir",
            bundle.clone(),
            &[
                ("clinician", "dr-er"),
                ("clinician_role", "emergency-physician"),
                ("break_glass_reason", WHY),
            ],
        )
        .await
        .transfer_id();
    a.consent_for_treatment(&patient, "clinic-b").await;
    let plain = a.send_bundle("clinic-b", &bundle).await.transfer_id();
    a.wait_state(&bg, "delivered", DELIVERY).await;
    a.wait_state(&plain, "delivered", DELIVERY).await;

    // ---- headers and CSRF, from raw exchanges ---------------------------------------------
    let (status, headers, page) = http(nd.local, "GET", "/console/sign-in", &[], "");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-security-policy"),
        vec![gateway::console::CSP]
    );
    assert!(gateway::console::CSP.contains("default-src 'none'"));
    assert_eq!(header(&headers, "x-frame-options"), vec!["DENY"]);
    let signin_cookie = header(&headers, "set-cookie")[0].to_owned();
    assert!(
        signin_cookie.contains("; HttpOnly") && signin_cookie.contains("; SameSite=Strict"),
        "{signin_cookie}"
    );
    let form_csrf = csrf_of(&page);
    assert_eq!(cookie_value(&signin_cookie), form_csrf);
    let form =
        serde_urlencoded::to_string([("token", officer.as_str()), ("csrf", &form_csrf)]).unwrap();
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    // Without the sign-in form's cookie the same post is refused (login CSRF).
    let (status, _, _) = http(nd.local, "POST", "/console/sign-in", &[form_type], &form);
    assert_eq!(status, 403);
    let cookie = format!("hf_signin={form_csrf}");
    let (status, headers, _) = http(
        nd.local,
        "POST",
        "/console/sign-in",
        &[form_type, ("Cookie", &cookie)],
        &form,
    );
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), vec!["/console/"]);
    let session = header(&headers, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("hf_console="))
        .unwrap()
        .to_owned();
    // Plain HTTP on loopback: HttpOnly and SameSite=Strict, not Secure (that is
    // console.secure_cookie, for a TLS-terminating proxy).
    assert_eq!(
        session.split_once(';').unwrap().1,
        " Path=/console; HttpOnly; SameSite=Strict"
    );
    let session_cookie = format!("hf_console={}", cookie_value(&session));
    let (status, headers, overview) = http(
        nd.local,
        "GET",
        "/console/",
        &[("Cookie", &session_cookie)],
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "cache-control"), vec!["no-store"]);
    let csrf = csrf_of(&overview);
    // A POST with the session but another CSRF token is refused; with the right one it runs.
    let search = |csrf: &str| {
        serde_urlencoded::to_string([("csrf", csrf), ("patient", patient.as_str())]).unwrap()
    };
    let (status, _, _) = http(
        nd.local,
        "POST",
        "/console/audit",
        &[form_type, ("Cookie", &session_cookie)],
        &search(&"0".repeat(64)),
    );
    assert_eq!(status, 403);
    let (status, _, found) = http(
        nd.local,
        "POST",
        "/console/audit",
        &[form_type, ("Cookie", &session_cookie)],
        &search(&csrf),
    );
    assert_eq!(status, 200);
    assert!(found.contains(&bg), "search by patient lists the transfer");
    // A time range before the node existed finds nothing; one from then on finds the transfer.
    for (from, to, found) in [
        ("1999-01-01T00:00", "2000-01-01T00:00", false),
        ("2000-01-01T00:00", "", true),
    ] {
        let body = serde_urlencoded::to_string([
            ("csrf", csrf.as_str()),
            ("patient", patient.as_str()),
            ("from", from),
            ("to", to),
        ])
        .unwrap();
        let (status, _, page) = http(
            nd.local,
            "POST",
            "/console/audit",
            &[form_type, ("Cookie", &session_cookie)],
            &body,
        );
        assert_eq!(status, 200);
        assert_eq!(page.contains(&bg), found, "{from}..{to}");
        assert_eq!(page.contains("No entries match."), !found, "{from}..{to}");
    }
    // The whole log, 4 rows a page on the seq cursor: every entry up to the first page's
    // snapshot exactly once, in order, although each page adds an audit-read entry.
    let mut seqs: Vec<u64> = Vec::new();
    let mut cursor: Option<(String, String)> = None;
    let mut pages = 0;
    loop {
        let mut fields = vec![("csrf", csrf.clone()), ("limit", "4".to_owned())];
        if let Some((after, until)) = &cursor {
            fields.push(("after", after.clone()));
            fields.push(("until", until.clone()));
        }
        let (status, _, page) = http(
            nd.local,
            "POST",
            "/console/audit",
            &[form_type, ("Cookie", &session_cookie)],
            &serde_urlencoded::to_string(&fields).unwrap(),
        );
        assert_eq!(status, 200);
        pages += 1;
        let rows: Vec<u64> = page
            .split("<tr><td>")
            .skip(1)
            .filter_map(|r| r.split('<').next()?.parse().ok())
            .collect();
        assert!(rows.len() <= 4, "{rows:?}");
        seqs.extend(rows);
        let Some(form) = page.split("id=\"next-page\"").nth(1) else {
            break;
        };
        let value = |name: &str| {
            let key = format!("name=\"{name}\" value=\"");
            let at = form.find(&key).unwrap() + key.len();
            form[at..].split('"').next().unwrap().to_owned()
        };
        cursor = Some((value("after"), value("until")));
        assert!(pages < 100, "paging did not end");
    }
    let until: u64 = cursor.unwrap().1.parse().unwrap();
    assert_eq!(seqs, (1..=until).collect::<Vec<_>>());
    assert!(pages > 2);

    // `/console` without its slash is the console too.
    let (status, headers, _) = http(nd.local, "GET", "/console", &[], "");
    assert_eq!(
        (status, header(&headers, "location")),
        (303, vec!["/console/sign-in"])
    );
    // No session, no page.
    let (status, headers, _) = http(nd.local, "GET", "/console/break-glass", &[], "");
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), vec!["/console/sign-in"]);

    // ---- the browser ----------------------------------------------------------------------
    let scratch = tempfile::tempdir().unwrap();
    let driver = Driver::start(&scratch.path().join("chromedriver.log"));
    let c = browser(&driver, &scratch.path().join("profile")).await;

    c.goto(&format!("{base}/console/")).await.unwrap();
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/sign-in"));
    screenshot(&c, "sign-in.png").await;

    // A token that is no token, and an EMR token, do not sign in.
    for wrong in ["not-a-token", emr.as_str()] {
        let page = sign_in(&c, &base, wrong).await;
        assert!(
            page.contains("That token is not an officer token of this node."),
            "{page}"
        );
        assert!(c.find(Locator::Id("token")).await.is_ok());
    }

    let page = sign_in(&c, &base, &officer).await;
    assert!(page.contains("Signed in as officer-kim"), "{page}");
    assert!(page.contains("Events by outcome") && page.contains("Refusals by reason"));
    assert!(page.contains("hash chain intact"), "{page}");
    let pending = c
        .find(Locator::Id("pending-reviews"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pending.contains("1 pending"), "{pending}");
    screenshot(&c, "overview.png").await;
    let cookies = c.get_all_cookies().await.unwrap();
    let session = cookies.iter().find(|k| k.name() == "hf_console").unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    assert_ne!(session.secure(), Some(true));

    // Audit search by patient: a POST, so the patient is in no URL.
    c.goto(&format!("{base}/console/audit")).await.unwrap();
    c.find(Locator::Id("patient"))
        .await
        .unwrap()
        .send_keys(&patient)
        .await
        .unwrap();
    click_through(&c, Locator::Id("search-button")).await;
    let results = c
        .find(Locator::Id("results"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        results.contains("submitted") && results.contains("delivered"),
        "{results}"
    );
    assert!(!c.current_url().await.unwrap().as_str().contains(&patient));
    screenshot(&c, "audit-search.png").await;

    // Open the break-glass transfer from its row.
    click_through(
        &c,
        Locator::Css(&format!("a[href='/console/transfers/{bg}']")),
    )
    .await;
    let detail = text(&c).await;
    assert!(detail.contains(&bg), "{detail}");
    for want in [
        "Policy decision",
        "Timeline",
        "receipt-verified",
        "signed receipt verified and kept",
        "mental-health",
        "application/fhir+json",
        WHY,
    ] {
        assert!(
            detail.contains(want),
            "transfer page lacks {want:?}:\n{detail}"
        );
    }
    for name in &names {
        assert!(
            !detail.contains(name.as_str()),
            "the payload leaked into the page"
        );
    }
    screenshot(&c, "transfer.png").await;

    // Review the break-glass entry: the note and the reviewer appear, the queue is empty.
    c.goto(&format!("{base}/console/break-glass"))
        .await
        .unwrap();
    let queue = text(&c).await;
    assert!(
        queue.contains("Pending (1)") && queue.contains(WHY),
        "{queue}"
    );
    c.find(Locator::Css("#pending textarea[name=note]"))
        .await
        .unwrap()
        .send_keys("Checked with the ED: patient unconscious on arrival, access justified.")
        .await
        .unwrap();
    click_through(&c, Locator::Css("#pending button")).await;
    let reviewed = text(&c).await;
    assert!(
        reviewed.contains("Pending (0)") && reviewed.contains("Reviewed (1)"),
        "{reviewed}"
    );
    assert!(reviewed.contains("officer-kim") && reviewed.contains("access justified"));
    screenshot(&c, "break-glass.png").await;

    // The accounting of disclosures, printed.
    c.goto(&format!("{base}/console/disclosures"))
        .await
        .unwrap();
    c.find(Locator::Id("patient"))
        .await
        .unwrap()
        .send_keys(&patient)
        .await
        .unwrap();
    click_through(&c, Locator::Id("report-button")).await;
    let report = c
        .find(Locator::Id("disclosures"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(report.contains("Facility clinic-b") && report.contains("Your care (treatment)"));
    assert!(
        report.contains("mental health") && report.contains("Allowed"),
        "{report}"
    );
    assert_eq!(report.matches("Delivered").count(), 2, "{report}");
    assert_eq!(
        report.matches("Yes").count(),
        1,
        "one break-glass: {report}"
    );
    assert!(!c.current_url().await.unwrap().as_str().contains(&patient));
    screenshot(&c, "disclosures.png").await;
    let pdf = c
        .print(fantoccini::wd::PrintConfiguration::default())
        .await
        .unwrap();
    assert!(
        pdf.starts_with(b"%PDF") && pdf.len() > 2000,
        "print gave no PDF"
    );

    // Idle past the timeout: the next page asks to sign in again.
    tokio::time::sleep(Duration::from_secs(IDLE_SECS + 1)).await;
    c.goto(&format!("{base}/console/")).await.unwrap();
    let expired = text(&c).await;
    assert!(c
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/console/sign-in"));
    assert!(expired.contains("Your session expired"), "{expired}");
    c.close().await.unwrap();
    drop(driver);

    // The review is an audit entry naming the officer; the refused sign-ins are audited.
    let reviews = a.audit_events("break-glass-reviewed").await;
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0]["clinician"], "officer-kim");
    assert_eq!(reviews[0]["transfer_id"], bg.as_str());
    let sign_ins = a.audit_events("console-sign-in").await;
    assert_eq!(
        sign_ins
            .iter()
            .filter(|e| e["outcome"] == "refused")
            .count(),
        2,
        "{sign_ins:?}"
    );

    // The same accounting from the command line.
    let (code, out, err) = a.cli(&["disclosures", "--patient", &patient, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["transfer_id"], bg.as_str());
    assert_eq!(rows[0]["break_glass"], true);
    assert_eq!(rows[1]["break_glass"], false);
    assert!(rows
        .iter()
        .all(|r| r["recipient"] == "clinic-b" && r["decision"] == "permit"));
    let (code, out, err) = a.cli(&["disclosures", "--patient", &patient, "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.starts_with("time,delivered,recipient,"));
    let (code, out, _) = a.cli(&[
        "disclosures",
        "--patient",
        &patient,
        "--from",
        "2000-01-01",
        "--to",
        "2000-01-02",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("No disclosures in this period.") && out.contains(&patient));

    // The receiving side's console: clinic-b's own token holds every role, officer among
    // them, so it signs in; the transfer shows as received,
    // with the receipt it returned and without the payload.
    let b_addr = fed.nodes["clinic-b"].local;
    let (_, headers, page) = http(b_addr, "GET", "/console/sign-in", &[], "");
    let b_csrf = csrf_of(&page);
    assert_eq!(cookie_value(header(&headers, "set-cookie")[0]), b_csrf);
    let b_token = std::fs::read_to_string(fed.nodes["clinic-b"].dir.join("api.token")).unwrap();
    let (status, headers, _) = http(
        b_addr,
        "POST",
        "/console/sign-in",
        &[form_type, ("Cookie", &format!("hf_signin={b_csrf}"))],
        &serde_urlencoded::to_string([("token", b_token.as_str()), ("csrf", &b_csrf)]).unwrap(),
    );
    assert_eq!(status, 303);
    let b_session = header(&headers, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with("hf_console="))
        .map(|c| format!("hf_console={}", cookie_value(c)))
        .unwrap();
    let (status, _, received) = http(
        b_addr,
        "GET",
        &format!("/console/transfers/{bg}"),
        &[("Cookie", &b_session)],
        "",
    );
    assert_eq!(status, 200);
    assert!(
        received.contains("Received by this node")
            && received.contains("signed receipt returned to the sender")
            && received.contains("hosp-a"),
        "{received}"
    );
    assert!(!received.contains("Sent by this node"));
    for name in &names {
        assert!(
            !received.contains(name.as_str()),
            "the payload leaked into the page"
        );
    }
    for name in &names {
        assert!(
            !b.log_text().contains(name.as_str()),
            "patient name in clinic-b's log"
        );
    }
    assert!(
        !b.log_text().contains(&patient),
        "patient id in clinic-b's log"
    );

    // Nothing of the patient in the node's own log, with the console used throughout.
    let log = a.log_text();
    assert!(log.contains("console sign-in"), "the console was used");
    assert!(!log.contains(&patient), "patient id in the node's log");
    for name in &names {
        assert!(
            !log.contains(name.as_str()),
            "patient name in the node's log"
        );
    }
}
