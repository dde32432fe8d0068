//! Where a worker finds the secrets its tasks name: a file of that name in its secrets directory
//! (as Kubernetes mounts a Secret), or else its own `KAIROS_SECRET_<NAME>` environment variable.
//! The values stay on this machine: they reach the task, and every trace of them in what the
//! task printed or answered is masked before the outcome goes on the ledger.

use std::path::PathBuf;

use kairos_core::job::TaskSpec;
use kairos_core::secrets::{secret_variable, valid_secret_name, SecretRef};

use crate::policy::Refusal;

/// Where secrets are looked up.
#[derive(Clone, Debug, Default)]
pub struct SecretSource {
    pub dir: Option<PathBuf>,
}

/// The secrets of one task, looked up: the variables or headers they fill, and the values to
/// mask in its output.
#[derive(Default)]
pub struct Resolved {
    pub fields: Vec<(String, String)>,
    pub values: Vec<String>,
}

/// Names only: a value printed by mistake would be a value leaked.
impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.fields.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Resolved").field("fields", &names).finish()
    }
}

impl SecretSource {
    /// The value of secret `name`; a missing one refuses the task, naming both places looked.
    pub fn value(&self, name: &str) -> Result<String, Refusal> {
        // Checked again here: a task written to its topic by hand was never validated, and a
        // name with a `/` would read any file the worker can.
        if !valid_secret_name(name) {
            return Err(missing(name, "that is not a secret name".into()));
        }
        if let Some(dir) = &self.dir {
            match std::fs::read_to_string(dir.join(name)) {
                // A mounted file often ends with a newline that is not part of the secret.
                Ok(text) => return Ok(text.trim_end_matches(['\n', '\r']).to_string()),
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(missing(
                        name,
                        format!("reading {} failed: {error}", dir.join(name).display()),
                    ))
                }
                Err(_) => {}
            }
        }
        let variable = secret_variable(name);
        std::env::var(&variable).map_err(|_| {
            let places = match &self.dir {
                Some(dir) => format!("{} nor in ${variable}", dir.join(name).display()),
                None => format!("${variable} (and no --secrets-dir)"),
            };
            missing(name, format!("this worker has it neither in {places}"))
        })
    }

    /// Looks up every secret `task` names.
    pub fn resolve(&self, task: &TaskSpec) -> Result<Resolved, Refusal> {
        let references: Vec<(&String, &SecretRef)> = match task {
            TaskSpec::Shell(shell) => shell.env_from.iter().collect(),
            TaskSpec::Http(http) => http.headers_from.iter().collect(),
            TaskSpec::Handler(_) => vec![],
        };
        let mut resolved = Resolved::default();
        for (field, reference) in references {
            let value = self.value(&reference.secret)?;
            resolved
                .fields
                .push((field.clone(), format!("{}{value}", reference.prefix)));
            resolved.values.push(value);
        }
        Ok(resolved)
    }
}

fn missing(name: &str, detail: String) -> Refusal {
    Refusal {
        rule: "secret",
        reason: format!("secret {name:?} not found: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_the_directory_first_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db-password"), "from-file\n").unwrap();
        let source = SecretSource {
            dir: Some(dir.path().to_path_buf()),
        };
        let task: TaskSpec = serde_json::from_str(
            r#"{"shell": {"command": ["psql"], "env_from": {"PGPASSWORD": "db-password", "TOKEN": {"secret": "kairos-test-only-token", "prefix": "t:"}}}}"#,
        )
        .unwrap();
        // A secret in neither place refuses the task, naming both.
        let refusal = source.resolve(&task).unwrap_err();
        assert_eq!(refusal.rule, "secret");
        assert!(
            refusal
                .reason
                .contains("KAIROS_SECRET_KAIROS_TEST_ONLY_TOKEN"),
            "{}",
            refusal.reason
        );
        // No other test reads this variable.
        std::env::set_var("KAIROS_SECRET_KAIROS_TEST_ONLY_TOKEN", "from-env");
        let resolved = source.resolve(&task).unwrap();
        assert_eq!(
            resolved.fields,
            [
                ("PGPASSWORD".to_string(), "from-file".to_string()),
                ("TOKEN".to_string(), "t:from-env".to_string())
            ]
        );
        assert_eq!(resolved.values, ["from-file", "from-env"]);
    }
}
