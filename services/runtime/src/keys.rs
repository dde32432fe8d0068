//! Signing keys as files: the PKCS#8 PEM files `openssl genpkey -algorithm ed25519` writes, and
//! their public halves (`openssl pkey -pubout`). `kairosctl keys generate` writes the same.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
pub use ed25519_dalek::SigningKey;
use ed25519_dalek::VerifyingKey;
use kairos_core::signing::{key_id, Trust};

/// Reads a private key (PKCS#8 PEM).
pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an Ed25519 private key in PKCS#8 PEM ({e}); make one with `kairosctl keys generate`",
            path.display()
        )
    })
}

/// Reads public keys (SPKI PEM): each path a key file, or a directory whose `*.pem` and `*.pub`
/// files are keys.
pub fn load_trusted_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<VerifyingKey>> {
    let mut files = vec![];
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading the key directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pem" || e == "pub"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files
        .iter()
        .map(|file| {
            let pem = std::fs::read_to_string(file)
                .with_context(|| format!("reading the trusted key {}", file.display()))?;
            VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not an Ed25519 public key in PEM ({e})",
                    file.display()
                )
            })
        })
        .collect()
}

/// What a worker runs on the strength of signatures, from its flags; says loudly when that is
/// anything unsigned.
pub fn trust(trusted_keys: &[PathBuf], allow_unsigned: bool) -> anyhow::Result<Trust> {
    let keys = load_trusted_keys(trusted_keys)?;
    if keys.is_empty() && !allow_unsigned {
        anyhow::bail!(
            "no trusted keys: give --trusted-keys (the public keys whose signed job definitions this worker runs), or --allow-unsigned for development"
        );
    }
    let trust = Trust::keys(keys);
    if !allow_unsigned {
        tracing::info!(keys = ?trust.ids(), "Running only job definitions signed by these keys.");
        return Ok(trust);
    }
    if trust.ids().is_empty() {
        tracing::warn!("--allow-unsigned and no trusted keys: this worker runs UNSIGNED job definitions; anyone who can write to the jobs topic runs code here. For development only.");
    } else {
        tracing::warn!(keys = ?trust.ids(), "--allow-unsigned: this worker also runs UNSIGNED job definitions (signed ones must still verify). Remove the flag once every writer signs.");
    }
    Ok(trust.allowing_unsigned())
}

/// A new key pair: the private key and the public key, each as PEM, and the key's id.
pub fn generate() -> anyhow::Result<(String, String, String)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a new key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    // PKCS#8 v1, without the public key: the form OpenSSL reads and writes.
    let private = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    Ok((private.to_string(), public, key_id(&key.verifying_key())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_pair_reads_back_and_a_directory_holds_several_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, id) = generate().unwrap();
        std::fs::write(dir.path().join("a.key"), &private).unwrap();
        std::fs::write(dir.path().join("a.pub"), &public).unwrap();
        let (_, other, other_id) = generate().unwrap();
        std::fs::write(dir.path().join("b.pem"), &other).unwrap();
        let key = load_signing_key(&dir.path().join("a.key")).unwrap();
        assert_eq!(key_id(&key.verifying_key()), id);
        // The directory's .pub and .pem files are keys; the private key file is not read.
        let trusted = load_trusted_keys(&[dir.path().to_path_buf()]).unwrap();
        let ids: Vec<String> = trusted.iter().map(key_id).collect();
        assert_eq!(ids, [id, other_id]);
        // A private key given as a public one is a clear error.
        let error = load_trusted_keys(&[dir.path().join("a.key")]).unwrap_err();
        assert!(
            error.to_string().contains("not an Ed25519 public key"),
            "{error}"
        );
        // Neither keys nor --allow-unsigned: the worker does not start.
        assert!(trust(&[], false).is_err());
    }
}
