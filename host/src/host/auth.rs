//! Who may call the API: bearer tokens from the host file's token (an
//! admin) and from a tokens file — admin tokens, and tenant tokens that act
//! only on their own tenant's pipelines.
//!
//! ```toml
//! # tokens.toml (keep it readable by the host user only)
//! [[token]]
//! name = "ops"                 # who, in the audit log
//! token = "…at least 16 characters…"
//! admin = true
//! [[token]]
//! name = "team-a-ci"
//! token = "…"
//! tenant = "team-a"
//! ```
//!
//! A presented token is compared with every configured one in constant
//! time, over SHA-256 digests (so not even its length leaks), and all are
//! compared whatever matches first.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything, on every pipeline.
    Admin,
    /// Read, deploy, pause and read the dead letters of this tenant's
    /// pipelines only.
    Tenant(String),
}

/// A configured token.
#[derive(Clone)]
pub struct ApiToken {
    /// Who holds it (the audit log's "who"; never the token).
    pub name: String,
    digest: [u8; 32],
    /// What it may do.
    pub role: Role,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    /// A token; `secret` must be at least 16 characters.
    pub fn new(name: &str, secret: &str, role: Role) -> Result<Self, String> {
        if secret.len() < 16 {
            return Err(format!(
                "token `{name}` is {} characters; use at least 16",
                secret.len()
            ));
        }
        Ok(ApiToken {
            name: name.to_string(),
            digest: Sha256::digest(secret.as_bytes()).into(),
            role,
        })
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Principal {
    /// Whether it may act on a pipeline of `tenant`.
    pub fn may_act_on(&self, tenant: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Tenant(t) => t == tenant,
        }
    }

    /// Whether it is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The holder of `given`, if it is a configured token.
pub fn identify(tokens: &[ApiToken], given: &str) -> Option<Principal> {
    let digest = Sha256::digest(given.trim().as_bytes());
    let mut found = None;
    for t in tokens {
        let eq: bool = t.digest.as_slice().ct_eq(digest.as_slice()).into();
        if eq && found.is_none() {
            found = Some(Principal {
                name: t.name.clone(),
                role: t.role.clone(),
            });
        }
    }
    found
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    token: String,
    #[serde(default)]
    admin: bool,
    tenant: Option<String>,
}

/// Reads a tokens file. Errors name the file and the entry, never a token.
pub fn load_tokens(path: &Path) -> Result<Vec<ApiToken>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("tokens file `{}`: {e}", path.display()))?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or(&text).matches('\n').count() + 1);
        format!(
            "tokens file `{}`{}: {}",
            path.display(),
            line.map(|l| format!(", line {l}")).unwrap_or_default(),
            e.message()
        )
    })?;
    let mut out = Vec::with_capacity(raw.token.len());
    for t in raw.token {
        let role = match (t.admin, t.tenant) {
            (true, None) => Role::Admin,
            (false, Some(tenant)) if !tenant.is_empty() => Role::Tenant(tenant),
            _ => {
                return Err(format!(
                    "tokens file `{}`: token `{}` needs exactly one of `admin = true` or `tenant = \"…\"`",
                    path.display(),
                    t.name
                ));
            }
        };
        out.push(
            ApiToken::new(&t.name, &t.token, role)
                .map_err(|e| format!("tokens file `{}`: {e}", path.display()))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_identify_their_holder_and_role() {
        let tokens = vec![
            ApiToken::new("ops", "admin-token-0123456789", Role::Admin).expect("ok"),
            ApiToken::new("a", "tenant-a-token-0123456", Role::Tenant("a".into())).expect("ok"),
        ];
        let ops = identify(&tokens, "admin-token-0123456789").expect("admin");
        assert!(ops.is_admin() && ops.may_act_on("anyone"));
        let a = identify(&tokens, " tenant-a-token-0123456\n").expect("tenant");
        assert_eq!(a.name, "a");
        assert!(a.may_act_on("a") && !a.may_act_on("b") && !a.is_admin());
        assert!(identify(&tokens, "tenant-a-token-012345").is_none());
        assert!(identify(&tokens, "").is_none());
        assert!(ApiToken::new("short", "0123456789", Role::Admin).is_err());
    }

    #[test]
    fn a_tokens_file_is_checked_entry_by_entry_without_showing_a_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tokens.toml");
        std::fs::write(
            &f,
            "[[token]]\nname = \"ops\"\ntoken = \"secret-secret-secret\"\nadmin = true\n[[token]]\nname = \"both\"\ntoken = \"other-secret-secret\"\nadmin = true\ntenant = \"x\"\n",
        )
        .expect("write");
        let err = load_tokens(&f).expect_err("both roles");
        assert!(
            err.contains("`both`") && !err.contains("other-secret"),
            "{err}"
        );
        std::fs::write(
            &f,
            "[[token]]\nname = \"ops\"\ntoken = \"secret-secret-secret\"\nadmin = true\n[[token]]\nname = \"a\"\ntoken = \"tenant-secret-secret\"\ntenant = \"a\"\n",
        )
        .expect("write");
        let tokens = load_tokens(&f).expect("loads");
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].role, Role::Tenant("a".into()));
    }
}
