//! Roles on the local API, against a real node: tokens made by `gateway token create` (file
//! 0600, the printed config line), then every route of `api::auth::ROUTES` called with a token
//! of every role: the route's own role gets past the check, every other role gets 403 naming
//! the role needed, and each refusal is one `access-refused` audit entry. A token without
//! roles keeps working with the legacy default and a deprecation warning at start; a config
//! naming an unknown role is refused.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gateway::api::auth::ROUTES;
use gateway::config::Role;
use pki_tools::FacilityKind;
use serde_json::Value;

use tests::{gateway_cli, Fed};

/// One HTTP/1.1 request on a fresh connection; (status, body). Bounded in time.
fn http(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A concrete path for a routed template: a transfer id that does not exist, a patient.
fn concrete(path: &str) -> String {
    path.replace("{id}", &"0".repeat(32))
        .replace("{patient}", "roles-test-patient")
}

fn body_for(method: &str) -> &'static str {
    if method == "GET" {
        ""
    } else {
        "{}"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_its_role_only_and_audits_each_refusal() {
    let fed = Fed::new(&[("hosp-a", FacilityKind::Hospital)]);
    let nd = fed.nodes["hosp-a"].clone();

    // One token per role, made as an operator would.
    let mut lines = Vec::new();
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let name = format!("t-{role}");
        let file = nd.dir.join(format!("{name}.token"));
        let (code, out, err) = gateway_cli(&[
            "token",
            "create",
            "--name",
            &name,
            "--role",
            role.name(),
            "--out",
            file.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "token file mode");
        let secret = std::fs::read_to_string(&file).unwrap();
        let line = out.trim().to_owned();
        // The printed line is TOML for local_api.tokens, with the file's token's hash.
        let parsed: toml::Value = toml::from_str(&format!("t = {line}")).unwrap();
        assert_eq!(parsed["t"]["name"].as_str(), Some(name.as_str()));
        assert_eq!(
            parsed["t"]["sha256"].as_str().unwrap(),
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                secret.as_bytes()
            ))
        );
        assert_eq!(parsed["t"]["roles"][0].as_str(), Some(role.name()));
        // An existing token file is never overwritten.
        let (again, _, err) = gateway_cli(&[
            "token",
            "create",
            "--name",
            &name,
            "--role",
            "emr",
            "--out",
            file.to_str().unwrap(),
        ]);
        assert_ne!(again, 0);
        assert!(err.contains("already exists"), "{err}");
        lines.push(line);
        tokens.push((role, name, secret));
    }
    let (bad, _, err) = gateway_cli(&["token", "create", "--name", "x", "--role", "admin"]);
    assert_eq!(bad, 64, "{err}");
    assert!(err.contains("unknown role"), "{err}");

    // The harness's own token ("cli") names all four roles. A token without roles, as configs
    // written before roles have them, keeps working: the legacy default, with a warning.
    let legacy_secret = "legacy-token-without-roles";
    let legacy = format!(
        "{{ name = \"legacy\", sha256 = \"{}\" }}",
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            legacy_secret.as_bytes()
        ))
    );
    let text = std::fs::read_to_string(&nd.config_path).unwrap();
    let start = text.find("tokens = [").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    let harness = text[start + "tokens = [".len()..end - 1].to_owned();
    assert!(harness.contains("roles = ["), "{harness}");
    let new_text = format!(
        "{}tokens = [{harness}, {legacy}, {}]{}",
        &text[..start],
        lines.join(", "),
        &text[end..]
    );

    // A role the gateway does not know is a config error naming the token.
    std::fs::write(
        &nd.config_path,
        new_text.replace("roles = [\"operator\"]", "roles = [\"root\"]"),
    )
    .unwrap();
    let (code, _, err) = gateway_cli(&["check", "--config", nd.config_path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("local_api.tokens[5].roles: unknown role"),
        "{err}"
    );
    std::fs::write(&nd.config_path, &new_text).unwrap();
    // `check` warns about the token without roles, and only about it.
    let (code, _, err) = gateway_cli(&["check", "--config", nd.config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("names no roles").count(), 1, "{err}");
    assert!(err.contains("token \"legacy\" names no roles"), "{err}");

    let node = fed.start("hosp-a");
    let addr = nd.local;
    let log = node.log_text();
    assert!(
        log.contains("names no roles and gets the deprecated default")
            && log.contains("\"emr\", \"officer\", \"consent-admin\", \"operator\""),
        "no deprecation warning naming the default:\n{log}"
    );

    let mut refusals = Vec::new();
    for (method, path, needed) in ROUTES {
        let target = concrete(path);
        for (role, name, secret) in &tokens {
            let (status, body) = http(addr, method, &target, secret, body_for(method));
            assert_ne!(status, 401, "{method} {path} as {role}: {body}");
            let refused_for_role = status == 403 && body.contains("needs role");
            if role == needed {
                assert!(
                    !refused_for_role,
                    "{method} {path} refused its own role {role}: {body}"
                );
                // The route is served by this build (not axum's bare 404/405 for no route).
                assert!(
                    !((status == 404 || status == 405) && body.is_empty()),
                    "{method} {path} is in ROUTES but not routed ({status})"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {role}: {body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                let why = v["error"].as_str().unwrap();
                assert_eq!(
                    why,
                    format!("{method} {path} needs role {needed}; token {name} has {role}")
                );
                refusals.push(why.to_owned());
            }
        }
    }
    assert_eq!(refusals.len(), ROUTES.len() * 3);

    // Each refusal is in the audit log exactly once, with the routed path only.
    let officer = &tokens.iter().find(|t| t.0 == Role::Officer).unwrap().2;
    let mut audited = Vec::new();
    let mut since = 0u64;
    loop {
        let (status, body) = http(
            addr,
            "GET",
            &format!("/v1/audit?since={since}&limit=1000"),
            officer,
            "",
        );
        assert_eq!(status, 200, "{body}");
        let page: Vec<Value> = serde_json::from_str(&body).unwrap();
        let Some(last) = page.last() else { break };
        since = last["seq"].as_u64().unwrap();
        for e in &page {
            if e["event"] == "access-refused" {
                assert_eq!(e["outcome"], "refused");
                assert!(e["patient"].is_null(), "{e}");
                audited.push(e["reason"].as_str().unwrap().to_owned());
            }
        }
        if page.len() < 1000 {
            break;
        }
    }
    refusals.sort();
    audited.sort();
    assert_eq!(audited, refusals);
    // The patient in /v1/records/{patient} never reached the log or the node's own log.
    assert!(!node.log_text().contains("roles-test-patient"));

    // The legacy token still reaches every role's routes.
    for (method, path) in [
        ("GET", "/v1/transfers"),
        ("GET", "/v1/audit/verify"),
        ("GET", "/v1/inbox"),
    ] {
        let (status, body) = http(addr, method, path, legacy_secret, "");
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let (status, _) = http(addr, "GET", "/v1/transfers", "not-a-token", "");
    assert_eq!(status, 401);
}
