//! `[console]`: the officers' console on the local listener (`gateway::console`).

use serde::Deserialize;

/// How long a console session lasts without a request, by default (15 minutes: an officer's
/// unattended screen signs itself out).
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 900;

#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// A session unused this long is signed out (`console.idle_timeout_secs`, 1 s to 12 h).
    pub idle_timeout_secs: u64,
    /// Mark the session cookie `Secure` (`console.secure_cookie`). The local listener speaks
    /// plain HTTP on loopback; set this when officers reach the console through a proxy that
    /// terminates TLS, so the browser never sends the cookie in clear.
    pub secure_cookie: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsole {
    #[serde(default = "default_idle_timeout_secs")]
    idle_timeout_secs: u64,
    #[serde(default)]
    secure_cookie: bool,
}

fn default_idle_timeout_secs() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECS
}

impl Default for RawConsole {
    fn default() -> Self {
        RawConsole {
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            secure_cookie: false,
        }
    }
}

impl RawConsole {
    pub(super) fn parse(&self, problems: &mut Vec<String>) -> ConsoleConfig {
        if !(1..=43_200).contains(&self.idle_timeout_secs) {
            problems.push("console.idle_timeout_secs: must be between 1 and 43200".to_owned());
        }
        ConsoleConfig {
            idle_timeout_secs: self.idle_timeout_secs,
            secure_cookie: self.secure_cookie,
        }
    }
}
