//! Signed job definitions: write access to the jobs topic is not enough to run code.
//!
//! A writer (kairosctl, the REST API) signs what a job runs with an Ed25519 key; a worker runs a
//! task only if that signature verifies against one of the keys it trusts. The signature covers
//! the job's id, its pool and its task (the program, its arguments and environment, the URL and
//! headers, the names of the secrets it receives), so none of them can be changed, nor the task
//! moved to another job or pool, without the change being refused. It does not cover scheduling
//! (a topic writer can still change when a signed task runs, or replay an older signed version),
//! the timeout (the worker's policy caps it), nor a sharded job's `shard_params`, which reach the
//! task as `KAIROS_SHARD_PARAM`: a signed task must treat that as untrusted input.
//!
//! The signed message is `kairos-task-signature-v1\n` followed by the JSON document
//! `{"job_id": ..., "pool": ..., "task": ...}` with object keys sorted and no whitespace; `task`
//! is the task as a job file writes it (`kairosctl job get -o json` shows it), without empty
//! fields. Any Ed25519 library can produce it.

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::job::TaskSpec;

const CONTEXT: &[u8] = b"kairos-task-signature-v1\n";

/// A signature over a job's task, and the key that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key's id: [`key_id`] of its public half.
    pub key_id: String,
    /// The 64-byte Ed25519 signature, in hex.
    pub value: String,
}

/// A public key's id: the first 16 hex digits of the SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The bytes a job's signature is over.
pub fn signed_message(job_id: &str, pool: &str, task: &TaskSpec) -> Vec<u8> {
    let document = serde_json::json!({ "job_id": job_id, "pool": pool, "task": task });
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(sorted(document).to_string().as_bytes());
    message
}

/// `value` with every object's keys in order, whatever order the map type keeps (serde_json's
/// `preserve_order` feature, which any crate in a build can turn on, keeps insertion order).
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted(value)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Signs a job's task.
pub fn sign(key: &SigningKey, job_id: &str, pool: &str, task: &TaskSpec) -> Signature {
    let signature = key.sign(&signed_message(job_id, pool, task));
    Signature {
        key_id: key_id(&key.verifying_key()),
        value: hex::encode(signature.to_bytes()),
    }
}

/// Why a worker does not run a task on the strength of its signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the definition is not signed, and this worker runs only signed definitions (sign it with `kairosctl --signing-key` or the API's `--signing-key`)")]
    Unsigned,
    #[error("the definition is signed by key {key_id}, which this worker does not trust (it trusts {trusted})")]
    UnknownKey { key_id: String, trusted: String },
    #[error("the signature by key {0} does not verify: the definition was changed after it was signed, or the signature is forged")]
    Invalid(String),
}

/// What a worker runs on the strength of a signature: definitions signed by one of its keys
/// (several at once, so that a key can be rotated), and, where it allows them, unsigned ones.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    keys: Vec<(String, VerifyingKey)>,
    unsigned: bool,
}

impl Trust {
    /// Only definitions signed by one of `keys`.
    pub fn keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        let mut trust = Trust::default();
        for key in keys {
            let id = key_id(&key);
            if !trust.keys.iter().any(|(known, _)| *known == id) {
                trust.keys.push((id, key));
            }
        }
        trust
    }

    /// Unsigned definitions too (development, or while the writers are being given keys); a
    /// signed one must still verify against the keys, if there are any.
    pub fn allowing_unsigned(self) -> Self {
        Trust {
            unsigned: true,
            ..self
        }
    }

    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    pub fn allows_unsigned(&self) -> bool {
        self.unsigned
    }

    /// Whether a task with this signature may run.
    pub fn verify(
        &self,
        signature: Option<&Signature>,
        job_id: &str,
        pool: &str,
        task: &TaskSpec,
    ) -> Result<(), SignatureError> {
        let signature = match signature {
            None if self.unsigned => return Ok(()),
            None => return Err(SignatureError::Unsigned),
            // Nothing to check a signature against.
            Some(_) if self.unsigned && self.keys.is_empty() => return Ok(()),
            Some(signature) => signature,
        };
        let Some((_, key)) = self.keys.iter().find(|(id, _)| *id == signature.key_id) else {
            return Err(SignatureError::UnknownKey {
                key_id: signature.key_id.clone(),
                trusted: match self.ids().join(", ") {
                    ids if ids.is_empty() => "no key".into(),
                    ids => ids,
                },
            });
        };
        let invalid = || SignatureError::Invalid(signature.key_id.clone());
        let bytes: [u8; 64] = hex::decode(&signature.value)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(invalid)?;
        key.verify(
            &signed_message(job_id, pool, task),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn task(command: &str) -> TaskSpec {
        serde_json::from_str(&format!(r#"{{"shell": {{"command": ["{command}"]}}}}"#)).unwrap()
    }

    #[test]
    fn a_task_signed_by_a_trusted_key_verifies_and_nothing_else_does() {
        // Given a worker trusting keys 1 and 2 (a rotation), and a task signed with key 2
        let trusted = Trust::keys([key(1).verifying_key(), key(2).verifying_key()]);
        let signature = sign(&key(2), "backup", "default", &task("/usr/bin/pg_dump"));
        // Then the task verifies as signed
        assert_eq!(
            trusted.verify(
                Some(&signature),
                "backup",
                "default",
                &task("/usr/bin/pg_dump")
            ),
            Ok(())
        );
        // And a changed command, job or pool does not
        for (job, pool, command) in [
            ("backup", "default", "/bin/sh"),
            ("other", "default", "/usr/bin/pg_dump"),
            ("backup", "privileged", "/usr/bin/pg_dump"),
        ] {
            assert_eq!(
                trusted.verify(Some(&signature), job, pool, &task(command)),
                Err(SignatureError::Invalid(signature.key_id.clone())),
                "{job} {pool} {command}"
            );
        }
        // And neither does an unsigned task, a forged signature or an untrusted key's
        assert_eq!(
            trusted.verify(None, "backup", "default", &task("/usr/bin/pg_dump")),
            Err(SignatureError::Unsigned)
        );
        let forged = Signature {
            value: "00".repeat(64),
            ..signature.clone()
        };
        assert!(matches!(
            trusted.verify(
                Some(&forged),
                "backup",
                "default",
                &task("/usr/bin/pg_dump")
            ),
            Err(SignatureError::Invalid(_))
        ));
        let stranger = sign(&key(3), "backup", "default", &task("/usr/bin/pg_dump"));
        assert!(matches!(
            trusted.verify(
                Some(&stranger),
                "backup",
                "default",
                &task("/usr/bin/pg_dump")
            ),
            Err(SignatureError::UnknownKey { .. })
        ));
    }

    #[test]
    fn a_worker_allowing_unsigned_definitions_still_refuses_a_bad_signature() {
        let signed = sign(&key(1), "backup", "default", &task("/usr/bin/pg_dump"));
        let tampered =
            |trust: &Trust| trust.verify(Some(&signed), "backup", "default", &task("/bin/sh"));
        // Given a worker with a key that also allows unsigned definitions (a migration)
        let migrating = Trust::keys([key(1).verifying_key()]).allowing_unsigned();
        // Then an unsigned task runs, and a signed one must verify
        assert_eq!(
            migrating.verify(None, "backup", "default", &task("/bin/sh")),
            Ok(())
        );
        assert!(matches!(
            tampered(&migrating),
            Err(SignatureError::Invalid(_))
        ));
        // Given a worker with no key that allows unsigned definitions (development)
        let development = Trust::default().allowing_unsigned();
        // Then every task runs: there is nothing to check a signature against
        assert_eq!(tampered(&development), Ok(()));
        // And a worker with no key that does not allow them runs nothing
        assert_eq!(
            Trust::default().verify(None, "backup", "default", &task("/bin/sh")),
            Err(SignatureError::Unsigned)
        );
    }

    #[test]
    fn the_signed_message_is_canonical_json_with_sorted_keys() {
        // Given a task whose fields serialise in declaration order
        let http: TaskSpec = serde_json::from_str(
            r#"{"http": {"url": "https://a.example", "method": "POST", "headers": {"b": "2", "a": "1"}}}"#,
        )
        .unwrap();
        // Then the message sorts every object's keys and has no whitespace
        let message = String::from_utf8(signed_message("j", "p", &http)).unwrap();
        assert_eq!(
            message,
            "kairos-task-signature-v1\n{\"job_id\":\"j\",\"pool\":\"p\",\"task\":{\"http\":{\"headers\":{\"a\":\"1\",\"b\":\"2\"},\"method\":\"POST\",\"url\":\"https://a.example\"}}}"
        );
    }
}
