//! Who may call the REST API, and as whom: bearer tokens, each with a name and a role. The name
//! becomes the author of every change made with the token. Must not know about routes: the router
//! says which role each route needs.
//!
//! Without any token configured the API is open (and binds loopback by default); with one, every
//! endpoint but `/healthz` and the OpenAPI document needs a token whose role covers it.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// What a token may do; each role may also do what the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Every read: jobs, runs, workers, alerts, the status page.
    Read,
    /// Pause, resume and trigger jobs.
    Operate,
    /// Define, replace and delete jobs.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) role: Role,
}

impl Caller {
    /// The author of the changes it makes, as the record header carries it.
    pub(crate) fn author(&self) -> String {
        format!("api:{}", self.name)
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum Denied {
    #[error("this endpoint needs an Authorization: Bearer <token> header")]
    NoToken,
    #[error("the bearer token is wrong")]
    UnknownToken,
    #[error("token {name:?} has the role {}; this needs {}", .role.as_str(), .needs.as_str())]
    Forbidden {
        name: String,
        role: Role,
        needs: Role,
    },
}

/// The tokens file (`--api-tokens`): tokens are stored as SHA-256 digests, so the file itself
/// grants nothing to whoever reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    sha256: String,
}

struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The API's tokens; none means an open API.
#[derive(Default)]
pub(crate) struct Access {
    tokens: Vec<Token>,
}

/// The name `--api-token` is known by: an admin token.
const SINGLE_TOKEN_NAME: &str = "api-token";

impl Access {
    /// The tokens of the `--api-tokens` file and the `--api-token` (an admin token named
    /// `api-token`). A file that does not parse, a bad digest or a name used twice stops the
    /// aggregator at start.
    pub(crate) fn load(file: Option<&Path>, admin_token: Option<&str>) -> anyhow::Result<Self> {
        let mut access = Access::default();
        if let Some(token) = admin_token.filter(|t| !t.is_empty()) {
            access.tokens.push(Token {
                name: SINGLE_TOKEN_NAME.into(),
                role: Role::Admin,
                digest: Sha256::digest(token.as_bytes()).into(),
            });
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading the API tokens {}: {e}", path.display()))?;
            let parsed: TokensFile = serde_yaml_ng::from_str(&text)
                .map_err(|e| anyhow::anyhow!("the API tokens {}: {e}", path.display()))?;
            for entry in parsed.tokens {
                let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                    anyhow::anyhow!(
                        "the API tokens {}: token {:?}: sha256 must be 64 hex digits",
                        path.display(),
                        entry.name
                    )
                })?;
                if access.tokens.iter().any(|t| t.name == entry.name) {
                    anyhow::bail!(
                        "the API tokens {}: the name {:?} is used twice",
                        path.display(),
                        entry.name
                    );
                }
                access.tokens.push(Token {
                    name: entry.name,
                    role: entry.role,
                    digest,
                });
            }
        }
        Ok(access)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Who presents `token`, if its role covers `needs`. An open API lets everyone in as
    /// `anonymous`.
    pub(crate) fn check(&self, token: Option<&str>, needs: Role) -> Result<Caller, Denied> {
        if self.is_open() {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        }
        let digest: [u8; 32] = Sha256::digest(token.ok_or(Denied::NoToken)?.as_bytes()).into();
        // Every token is compared, in time that does not depend on where they differ (so `last`,
        // which walks them all, not `next_back`, which would stop at the match).
        #[allow(clippy::double_ended_iterator_last)]
        let known = self
            .tokens
            .iter()
            .filter(|t| same_secret(&t.digest, &digest))
            .last()
            .ok_or(Denied::UnknownToken)?;
        if known.role < needs {
            return Err(Denied::Forbidden {
                name: known.name.clone(),
                role: known.role,
                needs,
            });
        }
        Ok(Caller {
            name: known.name.clone(),
            role: known.role,
        })
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut digest).ok()?;
    Some(digest)
}

/// Compares in time that does not depend on where the two differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    fn access_with(file: &str, admin: Option<&str>) -> anyhow::Result<Access> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, file)?;
        Access::load(Some(&path), admin)
    }

    fn three_roles() -> Access {
        let file = format!(
            "tokens:\n  - {{name: grafana, role: read, sha256: {}}}\n  - {{name: oncall, role: operate, sha256: {}}}\n  - {{name: deployer, role: admin, sha256: {}}}\n",
            hex("r-token"),
            hex("o-token"),
            hex("a-token")
        );
        access_with(&file, None).expect("a valid tokens file")
    }

    #[test]
    fn given_no_token_configured_then_everyone_is_let_in_as_anonymous() {
        let open = Access::load(None, None).unwrap();
        let caller = open.check(None, Role::Admin).unwrap();
        assert_eq!(caller.author(), "api:anonymous");
    }

    #[test]
    fn given_roles_then_each_token_does_what_its_role_covers_and_no_more() {
        let access = three_roles();
        let allowed = |token: &str, needs| access.check(Some(token), needs).is_ok();
        assert!(allowed("r-token", Role::Read));
        assert!(!allowed("r-token", Role::Operate));
        assert!(allowed("o-token", Role::Operate) && !allowed("o-token", Role::Admin));
        assert!(allowed("a-token", Role::Admin) && allowed("a-token", Role::Read));
        assert_eq!(
            access.check(Some("o-token"), Role::Admin),
            Err(Denied::Forbidden {
                name: "oncall".into(),
                role: Role::Operate,
                needs: Role::Admin
            })
        );
        assert_eq!(access.check(None, Role::Read), Err(Denied::NoToken));
        assert_eq!(
            access.check(Some("r-token "), Role::Read),
            Err(Denied::UnknownToken)
        );
        assert_eq!(
            access.check(Some("a-token"), Role::Read).unwrap().author(),
            "api:deployer"
        );
    }

    #[test]
    fn given_the_single_token_then_it_is_an_admin_named_api_token() {
        let access = Access::load(None, Some("s3cret")).unwrap();
        let caller = access.check(Some("s3cret"), Role::Admin).unwrap();
        assert_eq!(caller.name, "api-token");
        assert!(Access::load(None, Some(""))
            .unwrap()
            .check(None, Role::Read)
            .is_ok());
    }

    #[test]
    fn given_a_bad_tokens_file_then_loading_says_what_is_wrong() {
        let error = |file: &str| {
            access_with(file, None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            error("tokens:\n  - {name: a, role: read, sha256: abc}\n").contains("64 hex digits")
        );
        assert!(
            error("tokens:\n  - {name: a, role: root, sha256: abc}\n").contains("unknown variant")
        );
        assert!(error("tokens:\n  - {name: a, role: read, token: x}\n").contains("unknown field"));
        let twice = format!(
            "tokens:\n  - {{name: a, role: read, sha256: {0}}}\n  - {{name: a, role: admin, sha256: {0}}}\n",
            hex("x")
        );
        assert!(error(&twice).contains("used twice"));
    }
}
