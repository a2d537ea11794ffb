//! The roles a local API token holds (`local_api.tokens[].roles`): what each kind of caller
//! may do. The route table in `api::auth` names one role per route.

use std::fmt;
use std::str::FromStr;

/// One role of a local API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The facility's EMR and doctors' tools: submit, transfers, inbox, pull requests, records.
    Emr,
    /// A security officer: audit read, break-glass review, exports, disclosures, consent read.
    Officer,
    /// Whoever records patients' consent directives: consent write.
    ConsentAdmin,
    /// The node's operator: policy reload and check, status, backup.
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Emr, Role::Officer, Role::ConsentAdmin, Role::Operator];

    pub fn name(self) -> &'static str {
        match self {
            Role::Emr => "emr",
            Role::Officer => "officer",
            Role::ConsentAdmin => "consent-admin",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; use emr, officer, consent-admin or operator")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The roles of one token (a small set; never empty once parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    /// What a token written before roles existed gets: everything it could do then.
    pub const LEGACY_DEFAULT: Roles = Roles(0b1111);

    fn bit(role: Role) -> u8 {
        1 << (role as u8)
    }

    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |acc, r| acc | Roles::bit(*r)))
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & Roles::bit(role) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Display for Roles {
    /// `emr, officer`: the form a config line and a refusal name them in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::name).collect();
        f.write_str(&names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_hold_what_they_were_given() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
        }
        assert!("admin".parse::<Role>().is_err());
        let set = Roles::of(&[Role::Officer, Role::Operator]);
        assert!(set.contains(Role::Officer) && set.contains(Role::Operator));
        assert!(!set.contains(Role::Emr) && !set.contains(Role::ConsentAdmin));
        assert_eq!(set.to_string(), "officer, operator");
        assert!(Role::ALL
            .into_iter()
            .all(|r| Roles::LEGACY_DEFAULT.contains(r)));
        assert!(Roles::of(&[]).is_empty());
    }
}
