//! Where access keys come from. The server reads a credentials file that maps access key ids
//! to local principals; the remote key provider reads the usual AWS environment variables or
//! shared credentials file.

use crate::aws::sigv4::Credentials;
use crate::error::{KmsError, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    credential: Vec<EntryDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    access_key_id: String,
    secret_access_key: String,
    /// `uid:N` or `user:NAME`, as key policies name principals.
    principal: String,
}

/// One access key the server accepts.
pub struct ApiCredential {
    pub secret_access_key: Zeroizing<String>,
    pub principal: String,
}

/// The server's access keys, by id.
#[derive(Default)]
pub struct CredentialMap {
    by_id: HashMap<String, ApiCredential>,
}

impl CredentialMap {
    /// Reads a credentials file; it holds secrets, so group or world access is refused.
    pub fn load(path: &Path) -> Result<CredentialMap> {
        use std::os::unix::fs::PermissionsExt;
        let what = path.display();
        let meta =
            std::fs::metadata(path).map_err(|e| KmsError::validation(format!("{what}: {e}")))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KmsError::validation(format!(
                "{what} holds secret keys but others may read it: chmod 600 {what}"
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| KmsError::validation(format!("{what}: {e}")))?,
        );
        Self::parse(&text).map_err(|e| KmsError::validation(format!("{what}: {}", e.message)))
    }

    pub fn parse(text: &str) -> Result<CredentialMap> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| KmsError::validation(e.to_string()))?;
        let mut by_id = HashMap::new();
        for e in doc.credential {
            // Checks the principal's form now rather than at the first request.
            if !(e.principal.starts_with("uid:") || e.principal.starts_with("user:")) {
                return Err(KmsError::validation(format!(
                    "access key {}: principal {:?} must be uid:N or user:NAME",
                    e.access_key_id, e.principal
                )));
            }
            if e.access_key_id.is_empty() || e.secret_access_key.is_empty() {
                return Err(KmsError::validation("empty access key id or secret"));
            }
            let id = e.access_key_id.clone();
            let entry = ApiCredential {
                secret_access_key: Zeroizing::new(e.secret_access_key),
                principal: e.principal,
            };
            if by_id.insert(id.clone(), entry).is_some() {
                return Err(KmsError::validation(format!(
                    "access key {id} is listed twice"
                )));
            }
        }
        Ok(CredentialMap { by_id })
    }

    pub fn get(&self, access_key_id: &str) -> Option<&ApiCredential> {
        self.by_id.get(access_key_id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The AWS SDKs' order: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN), then the
/// profile AWS_PROFILE (or "default") of AWS_SHARED_CREDENTIALS_FILE (or ~/.aws/credentials).
pub fn from_environment() -> Result<Credentials> {
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
        });
    }
    let file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let Some(file) = file else {
        return Err(no_credentials(&profile));
    };
    let ini = ini::Ini::load_from_file(&file).map_err(|_| no_credentials(&profile))?;
    let section = ini
        .section(Some(profile.as_str()))
        .ok_or_else(|| no_credentials(&profile))?;
    match (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => Ok(Credentials {
            access_key_id: id.to_string(),
            secret_access_key: secret.to_string(),
            session_token: section.get("aws_session_token").map(str::to_string),
        }),
        _ => Err(no_credentials(&profile)),
    }
}

fn no_credentials(profile: &str) -> KmsError {
    KmsError::validation(format!(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put profile \
         [{profile}] in ~/.aws/credentials (or AWS_SHARED_CREDENTIALS_FILE)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_parse_and_bad_ones_are_refused() {
        let m = CredentialMap::parse(
            "[[credential]]\naccess_key_id = \"AK1\"\nsecret_access_key = \"s1\"\nprincipal = \"uid:1000\"\n\
             [[credential]]\naccess_key_id = \"AK2\"\nsecret_access_key = \"s2\"\nprincipal = \"user:alice\"\n",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("AK2").unwrap().principal, "user:alice");
        assert_eq!(&*m.get("AK1").unwrap().secret_access_key, "s1");
        assert!(m.get("AK3").is_none());
        let dup = "[[credential]]\naccess_key_id = \"A\"\nsecret_access_key = \"s\"\nprincipal = \"uid:1\"\n";
        assert!(CredentialMap::parse(&format!("{dup}{dup}")).is_err());
        assert!(CredentialMap::parse(&dup.replace("uid:1", "root")).is_err());
        assert!(CredentialMap::parse("[[credential]]\naccess_key_id = \"A\"\n").is_err());
    }
}
