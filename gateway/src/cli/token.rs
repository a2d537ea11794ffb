//! `gateway token create --name N --role R`: a new local API token. The token is written to a
//! file readable by its owner only (0600); only its SHA-256 goes into node.toml, as the config
//! line this prints. Runs without a node: it reads and writes no node state.

use std::path::PathBuf;

use super::args::TokenAction;
use super::{outln, Failure, EXIT_FAILURE, EXIT_USAGE};
use crate::config::{Role, Roles};

/// A name that is safe in a TOML string, a file name and an audit entry.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

pub fn token(action: TokenAction) -> Result<(), Failure> {
    match action {
        TokenAction::Create { name, role, out } => create(&name, &role, out),
    }
}

fn create(name: &str, roles: &[String], out: Option<PathBuf>) -> Result<(), Failure> {
    if !valid_name(name) {
        return Err(Failure::new(
            EXIT_USAGE,
            "--name: 1 to 64 letters, digits, '-', '_' or '.' (not starting with '.')",
        ));
    }
    let mut parsed = Vec::new();
    for r in roles {
        parsed.push(
            r.parse::<Role>()
                .map_err(|e| Failure::new(EXIT_USAGE, format!("--role: {e}")))?,
        );
    }
    let roles = Roles::of(&parsed);
    if roles.is_empty() {
        return Err(Failure::new(EXIT_USAGE, "--role: name at least one role"));
    }
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{name}.token")));
    if path.exists() {
        return Err(Failure::new(
            EXIT_FAILURE,
            format!("{}: already exists; not overwritten", path.display()),
        ));
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| Failure::new(EXIT_FAILURE, "the system's random source failed"))?;
    let token = hex::encode(secret);
    pki_tools::files::write_atomic(&path, token.as_bytes(), true)
        .map_err(|e| Failure::new(EXIT_FAILURE, e.to_string()))?;
    let sha256 = hex::encode(gateway_envelope::sha256(token.as_bytes()));
    let role_list: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
    eprintln!(
        "wrote the token to {} (mode 0600); add this line to local_api.tokens in node.toml:",
        path.display()
    );
    outln!(
        "{{ name = \"{name}\", sha256 = \"{sha256}\", roles = [{}] }}",
        role_list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_in_toml_files_and_logs() {
        assert!(valid_name("officer-1"));
        assert!(valid_name("emr.ward_3"));
        for bad in ["", ".hidden", "a b", "x\"y", "../up", &"n".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
