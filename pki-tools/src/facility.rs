//! Parsed facility identity types: only the parsers here can construct them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::PkiError;

/// Prefix of the URI SAN that carries a facility id in every facility certificate.
pub const FACILITY_URI_PREFIX: &str = "urn:healthfed:facility:";

/// A facility identifier: `^[a-z0-9][a-z0-9-]{1,62}$`.
///
/// Lower-case only so that ids compare byte-for-byte, and short enough to fit a DNS label and a
/// certificate common name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FacilityId(String);

impl FacilityId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI SAN that names this facility in its certificates.
    pub fn uri(&self) -> String {
        format!("{FACILITY_URI_PREFIX}{}", self.0)
    }
}

impl FromStr for FacilityId {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if !(2..=63).contains(&bytes.len()) {
            return Err(PkiError::InvalidFacilityId(
                "must be 2 to 63 characters of a-z, 0-9 and '-'",
            ));
        }
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !first_ok {
            return Err(PkiError::InvalidFacilityId(
                "must start with a lower-case letter or a digit",
            ));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        {
            return Err(PkiError::InvalidFacilityId(
                "may only contain lower-case letters a-z, digits and '-'",
            ));
        }
        Ok(FacilityId(s.to_owned()))
    }
}

impl fmt::Display for FacilityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for FacilityId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FacilityId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Deserialising goes through the parser so a file can never smuggle in an invalid id.
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of organisation a facility is; policies key on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FacilityKind {
    Hospital,
    Clinic,
    Lab,
    Payer,
}

impl FacilityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FacilityKind::Hospital => "hospital",
            FacilityKind::Clinic => "clinic",
            FacilityKind::Lab => "lab",
            FacilityKind::Payer => "payer",
        }
    }
}

impl FromStr for FacilityKind {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hospital" => Ok(FacilityKind::Hospital),
            "clinic" => Ok(FacilityKind::Clinic),
            "lab" => Ok(FacilityKind::Lab),
            "payer" => Ok(FacilityKind::Payer),
            _ => Err(PkiError::InvalidKind),
        }
    }
}

impl fmt::Display for FacilityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a facility may take part in the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FacilityStatus {
    Active,
    Revoked,
}

impl fmt::Display for FacilityStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FacilityStatus::Active => "active",
            FacilityStatus::Revoked => "revoked",
        })
    }
}

/// A facility's gateway endpoint, parsed from exactly `https://HOST:PORT` (an optional trailing
/// `/` is accepted). HOST is a DNS name, an IPv4 address or a bracketed IPv6 address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Lower-cased DNS name or textual IP address (without brackets).
    host: String,
    ip: Option<IpAddr>,
    port: u16,
}

impl Endpoint {
    /// The host: a lower-case DNS name, or an IP address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The canonical URL, `https://host:port`.
    pub fn url(&self) -> String {
        match self.ip {
            Some(IpAddr::V6(_)) => format!("https://[{}]:{}", self.host, self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }
}

impl FromStr for Endpoint {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("https://")
            .ok_or(PkiError::InvalidEndpoint("must start with https://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || b.is_ascii_whitespace())
        {
            return Err(PkiError::InvalidEndpoint(
                "must be exactly https://HOST:PORT (no user, path, query or fragment)",
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (v6, after) = bracketed
                .split_once(']')
                .ok_or(PkiError::InvalidEndpoint("unterminated [IPv6] host"))?;
            let port = after
                .strip_prefix(':')
                .ok_or(PkiError::InvalidEndpoint("missing :PORT"))?;
            let ip: Ipv6Addr = v6
                .parse()
                .map_err(|_| PkiError::InvalidEndpoint("invalid IPv6 address"))?;
            (HostKind::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or(PkiError::InvalidEndpoint("missing :PORT"))?;
            (parse_host(host)?, port)
        };
        let port = parse_port(port)?;
        Ok(match host {
            HostKind::Ip(ip) => Endpoint {
                host: ip.to_string(),
                ip: Some(ip),
                port,
            },
            HostKind::Dns(name) => Endpoint {
                host: name,
                ip: None,
                port,
            },
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

enum HostKind {
    Ip(IpAddr),
    Dns(String),
}

fn parse_port(port: &str) -> Result<u16, PkiError> {
    // `u16::from_str` accepts a leading '+', which is not a valid URL port.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PkiError::InvalidEndpoint("PORT must be a number"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(PkiError::InvalidEndpoint("PORT must be 1 to 65535")),
        Ok(p) => Ok(p),
    }
}

fn parse_host(host: &str) -> Result<HostKind, PkiError> {
    if host.is_empty() {
        return Err(PkiError::InvalidEndpoint("missing HOST"));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(HostKind::Ip(IpAddr::V4(ip)));
    }
    let name = host.to_ascii_lowercase();
    if name.len() > 253 {
        return Err(PkiError::InvalidEndpoint(
            "HOST is longer than 253 characters",
        ));
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(PkiError::InvalidEndpoint(
                "HOST must be a DNS name (labels of a-z, 0-9, '-'), an IPv4 address or [IPv6]",
            ));
        }
    }
    // A name whose last label is all digits would be a malformed IPv4 address, not a DNS name.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(PkiError::InvalidEndpoint(
            "HOST is neither a DNS name nor a valid IPv4 address",
        ));
    }
    Ok(HostKind::Dns(name))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in tests a panic on an unexpected error is the failure report"
)]
mod tests {
    use super::*;

    #[test]
    fn facility_id_accepts_valid_ids() {
        for ok in ["ab", "hosp-a", "0clinic", "a-", &"a".repeat(63)] {
            let id: FacilityId = ok.parse().unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
        }
        let id: FacilityId = "hosp-a".parse().unwrap();
        assert_eq!(id.uri(), "urn:healthfed:facility:hosp-a");
    }

    #[test]
    fn facility_id_rejects_invalid_ids() {
        for bad in [
            "",
            "a",
            "-abc",
            "Hosp",
            "hosp_a",
            "hosp a",
            "hosp.a",
            "hôp",
            &"a".repeat(64),
            "hosp/../x",
        ] {
            assert!(
                matches!(
                    bad.parse::<FacilityId>(),
                    Err(PkiError::InvalidFacilityId(_))
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn facility_id_deserialisation_goes_through_the_parser() {
        let ok: FacilityId = serde_json::from_str("\"lab-1\"").unwrap();
        assert_eq!(ok.as_str(), "lab-1");
        assert!(serde_json::from_str::<FacilityId>("\"LAB\"").is_err());
    }

    #[test]
    fn kind_round_trips() {
        for kind in [
            FacilityKind::Hospital,
            FacilityKind::Clinic,
            FacilityKind::Lab,
            FacilityKind::Payer,
        ] {
            assert_eq!(kind.to_string().parse::<FacilityKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert!(matches!(
            "pharmacy".parse::<FacilityKind>(),
            Err(PkiError::InvalidKind)
        ));
        assert_eq!(
            serde_json::to_string(&FacilityStatus::Revoked).unwrap(),
            "\"revoked\""
        );
    }

    #[test]
    fn endpoint_parses_dns_ipv4_ipv6() {
        let e: Endpoint = "https://Hosp-A.example.org:8443".parse().unwrap();
        assert_eq!(e.host(), "hosp-a.example.org");
        assert_eq!(e.port(), 8443);
        assert_eq!(e.ip(), None);
        assert_eq!(e.url(), "https://hosp-a.example.org:8443");

        let e: Endpoint = "https://127.0.0.1:9000/".parse().unwrap();
        assert_eq!(e.host(), "127.0.0.1");
        assert_eq!(e.ip(), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(e.url(), "https://127.0.0.1:9000");

        let e: Endpoint = "https://[::1]:443".parse().unwrap();
        assert_eq!(e.host(), "::1");
        assert_eq!(e.ip(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(e.url(), "https://[::1]:443");
        assert_eq!(e.to_string(), e.url());
    }

    #[test]
    fn endpoint_rejects_malformed_input() {
        for bad in [
            "http://a.example:443",
            "a.example:443",
            "https://a.example",
            "https://a.example:",
            "https://a.example:0",
            "https://a.example:65536",
            "https://a.example:+443",
            "https://a.example:443/path",
            "https://user@a.example:443",
            "https://a.example:443?x=1",
            "https://:443",
            "https://a_b.example:443",
            "https://-a.example:443",
            "https://a..example:443",
            "https://999.1.1.1:443",
            "https://[::1:443",
            "https://[zz]:443",
            "https://a example:443",
        ] {
            assert!(
                matches!(bad.parse::<Endpoint>(), Err(PkiError::InvalidEndpoint(_))),
                "{bad:?} accepted"
            );
        }
    }
}
