//! Secrets by reference: a job names a secret, the worker that runs it looks the value up.
//!
//! A job definition lives on a compacted topic for as long as the job exists and is served by the
//! API, so a credential written into it is a credential handed to everyone who can read either.
//! A job therefore names its secrets (`env_from`, `headers_from`) and never holds their values;
//! writers refuse a literal value that looks like a credential, and every read path masks one
//! that a producer wrote anyway.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{HttpTask, ShellTask, TaskSpec};

/// What a masked value reads as.
pub const MASK: &str = "***";

/// The shortest secret value that is masked in output: shorter ones would mask ordinary words.
pub const MIN_MASKED_LEN: usize = 4;

/// A secret a task receives when it runs, by name; `prefix` goes before its value (`Bearer `).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SecretRefForm")]
pub struct SecretRef {
    pub secret: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// A secret reference as a job file may write it: its name alone, or with a prefix.
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretRefForm {
    Name(String),
    Full(FullSecretRef),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullSecretRef {
    secret: String,
    #[serde(default)]
    prefix: String,
}

impl From<SecretRefForm> for SecretRef {
    fn from(form: SecretRefForm) -> Self {
        match form {
            SecretRefForm::Name(secret) => SecretRef {
                secret,
                prefix: String::new(),
            },
            SecretRefForm::Full(FullSecretRef { secret, prefix }) => SecretRef { secret, prefix },
        }
    }
}

impl SecretRef {
    pub fn named(secret: &str) -> Self {
        SecretRef {
            secret: secret.into(),
            prefix: String::new(),
        }
    }
}

/// Whether `name` can name a secret: 1-100 of A-Z a-z 0-9 . _ - (a file name in a secrets
/// directory, as Kubernetes mounts them).
pub fn valid_secret_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.')
}

/// The environment variable a worker reads secret `name` from when its secrets directory does
/// not hold it: `KAIROS_SECRET_` and the name in upper case, `.` and `-` as `_`.
pub fn secret_variable(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("KAIROS_SECRET_{tail}")
}

/// Every secret the task names, in order and once each.
pub fn referenced(task: &TaskSpec) -> Vec<&str> {
    let refs: Vec<&SecretRef> = match task {
        TaskSpec::Shell(shell) => shell.env_from.values().collect(),
        TaskSpec::Http(http) => http.headers_from.values().collect(),
        TaskSpec::Handler(_) => vec![],
    };
    let mut names: Vec<&str> = refs.iter().map(|r| r.secret.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// Header names that carry credentials, lower case.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];
/// Words of a name that say its value is a credential (or end it: `PGPASSWORD`)…
const CREDENTIAL_WORDS: [&str; 7] = [
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "credential",
    "pat",
];
/// …and pairs of words that do.
const CREDENTIAL_PAIRS: [(&str, &str); 3] = [("api", "key"), ("private", "key"), ("access", "key")];
/// A last word that says the value is about a credential, not one: `PASSWORD_FILE`,
/// `TOKEN_URL`, `X-Request-Token-Id`, `PASSWORD_MIN_LENGTH`.
const NOT_THE_CREDENTIAL: [&str; 12] = [
    "file", "path", "dir", "url", "uri", "id", "name", "length", "len", "type", "ttl", "expiry",
];

/// Whether a variable or header named `name` holds a credential, by the words of its name
/// (split at `_`, `-` and `.`), so that `TOKENIZERS_PARALLELISM` or `SECRETARY` do not.
fn names_a_credential(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if CREDENTIAL_HEADERS.contains(&lower.as_str()) {
        return true;
    }
    let words: Vec<&str> = lower
        .split(['_', '-', '.'])
        .filter(|w| !w.is_empty())
        .collect();
    if words
        .last()
        .is_some_and(|last| NOT_THE_CREDENTIAL.contains(last))
    {
        return false;
    }
    // `PGPASSWORD`, `MYTOKEN`: a word that ends in one counts (not `pat`, too short for that).
    let credential = |word: &&str| {
        CREDENTIAL_WORDS
            .iter()
            .any(|c| word == c || (c.len() > 3 && word.ends_with(c)))
    };
    words.iter().any(credential)
        || words
            .windows(2)
            .any(|pair| CREDENTIAL_PAIRS.contains(&(pair[0], pair[1])))
}

/// The fields of `task` that hold a literal credential: a header or environment variable whose
/// name says it is one, or a password in a URL. Writers refuse such a task with a hint to name
/// a secret instead.
pub fn credentials_in_clear(task: &TaskSpec) -> Vec<String> {
    match task {
        TaskSpec::Shell(shell) => shell
            .env
            .iter()
            .filter(|(name, value)| names_a_credential(name) && !value.is_empty())
            .map(|(name, _)| format!("task.shell.env.{name}"))
            .collect(),
        TaskSpec::Http(http) => {
            let mut found: Vec<String> = http
                .headers
                .iter()
                .filter(|(name, value)| names_a_credential(name) && !value.is_empty())
                .map(|(name, _)| format!("task.http.headers.{name}"))
                .collect();
            if url_password(&http.url).is_some() {
                found.push("task.http.url (a password in the URL)".into());
            }
            found
        }
        TaskSpec::Handler(_) => vec![],
    }
}

fn url_password(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .password()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// `task` as read paths show it: every value [`credentials_in_clear`] finds is masked.
pub fn masked(task: &TaskSpec) -> TaskSpec {
    let mask_named = |values: &BTreeMap<String, String>| {
        values
            .iter()
            .map(|(name, value)| {
                let shown = if names_a_credential(name) && !value.is_empty() {
                    MASK.to_string()
                } else {
                    value.clone()
                };
                (name.clone(), shown)
            })
            .collect()
    };
    match task {
        TaskSpec::Shell(shell) => TaskSpec::Shell(ShellTask {
            env: mask_named(&shell.env),
            ..shell.clone()
        }),
        TaskSpec::Http(http) => {
            let url = match url::Url::parse(&http.url) {
                Ok(mut url) if url_password(&http.url).is_some() => {
                    let _ = url.set_password(Some(MASK));
                    url.to_string()
                }
                _ => http.url.clone(),
            };
            TaskSpec::Http(HttpTask {
                url,
                headers: mask_named(&http.headers),
                ..http.clone()
            })
        }
        TaskSpec::Handler(handler) => TaskSpec::Handler(handler.clone()),
    }
}

/// `text` with every occurrence of each of `values` replaced by [`MASK`]; values shorter than
/// [`MIN_MASKED_LEN`] are left, longest first so that one containing another is masked whole.
pub fn mask_values(text: &str, values: &[String]) -> String {
    let mut values: Vec<&String> = values
        .iter()
        .filter(|v| v.len() >= MIN_MASKED_LEN)
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.into_iter().fold(text.to_string(), |text, value| {
        text.replace(value.as_str(), MASK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: &str) -> TaskSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_secret_reference_is_a_name_or_a_name_with_a_prefix() {
        // Given a task naming one secret alone and one with a prefix
        let http = task(
            r#"{"http": {"url": "https://api.example.com", "headers_from": {
                "Authorization": {"secret": "api-token", "prefix": "Bearer "},
                "X-Tenant": "tenant-id"}}}"#,
        );
        // Then both read as references, and the task names each secret once
        let TaskSpec::Http(ref request) = http else {
            panic!("an http task")
        };
        assert_eq!(
            request.headers_from["X-Tenant"],
            SecretRef::named("tenant-id")
        );
        assert_eq!(request.headers_from["Authorization"].prefix, "Bearer ");
        assert_eq!(referenced(&http), ["api-token", "tenant-id"]);
        // And an unknown field in the long form is refused
        assert!(serde_json::from_str::<TaskSpec>(
            r#"{"http": {"url": "https://a", "headers_from": {"A": {"secret": "x", "value": "y"}}}}"#
        )
        .is_err());
    }

    #[test]
    fn a_credential_written_in_clear_is_found_and_masked() {
        // Given tasks with credentials in headers, the environment and a URL
        let http = task(
            r#"{"http": {"url": "https://user:hunter22@api.example.com/x", "headers": {
                "Authorization": "Bearer abc.def", "X-Auth-Token": "t0k3n", "Accept": "text/plain"}}}"#,
        );
        let shell = task(
            r#"{"shell": {"command": ["pg_dump"], "env": {"PGPASSWORD": "s3cret", "AWS_SECRET_ACCESS_KEY": "k", "PGHOST": "db"}}}"#,
        );
        // Then each is named with its field
        assert_eq!(
            credentials_in_clear(&http),
            [
                "task.http.headers.Authorization",
                "task.http.headers.X-Auth-Token",
                "task.http.url (a password in the URL)"
            ]
        );
        assert_eq!(
            credentials_in_clear(&shell),
            [
                "task.shell.env.AWS_SECRET_ACCESS_KEY",
                "task.shell.env.PGPASSWORD"
            ]
        );
        // And masking hides exactly those values
        let TaskSpec::Http(shown) = masked(&http) else {
            panic!("an http task")
        };
        assert_eq!(shown.headers["Authorization"], MASK);
        assert_eq!(shown.headers["Accept"], "text/plain");
        assert!(!shown.url.contains("hunter22"), "{}", shown.url);
        let TaskSpec::Shell(shown) = masked(&shell) else {
            panic!("a shell task")
        };
        assert_eq!(shown.env["PGPASSWORD"], MASK);
        assert_eq!(shown.env["PGHOST"], "db");
        // And a task with none is left as it is
        let plain = task(r#"{"shell": {"command": ["true"], "env": {"MODE": "full"}}}"#);
        assert!(credentials_in_clear(&plain).is_empty());
        assert_eq!(masked(&plain), plain);
    }

    #[test]
    fn a_name_is_a_credential_by_its_words_not_by_what_it_contains() {
        for name in [
            "GITHUB_TOKEN",
            "PGPASSWORD",
            "DB_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "STRIPE_API_KEY",
            "X-Auth-Token",
            "Cookie",
            "gitlab-pat",
        ] {
            assert!(names_a_credential(name), "{name}");
        }
        for name in [
            "TOKENIZERS_PARALLELISM",
            "MAX_TOKENS",
            "SECRETARY_NAME",
            "POSTGRES_PASSWORD_FILE",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "PASSWORD_MIN_LENGTH",
            "X-Request-Token-Id",
            "VAULT_SECRET_PATH",
            "Accept",
        ] {
            assert!(!names_a_credential(name), "{name}");
        }
    }

    #[test]
    fn output_masks_every_secret_value_but_not_short_ones() {
        // Given two secret values, one inside the other, and a value too short to mask
        let values = ["abcd".to_string(), "xxabcdxx".to_string(), "ab".to_string()];
        // When output containing them is masked
        let shown = mask_values("token=xxabcdxx key=abcd ab", &values);
        // Then each long enough value is gone, the longer one masked whole
        assert_eq!(shown, "token=*** key=*** ab");
    }

    #[test]
    fn a_secret_name_is_a_file_name_and_maps_to_one_variable() {
        assert!(valid_secret_name("db-password.v2"));
        assert!(!valid_secret_name("../etc/passwd"));
        assert!(!valid_secret_name(".hidden"));
        assert!(!valid_secret_name(""));
        assert_eq!(
            secret_variable("db-password.v2"),
            "KAIROS_SECRET_DB_PASSWORD_V2"
        );
    }
}
