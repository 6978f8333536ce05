//! Auth tokens, as etcd's `--auth-token` names them: `simple` (the default)
//! and `jwt,pub-key=FILE,priv-key=FILE,sign-method=ALG[,ttl=DURATION]`.
//!
//! A Strata router is one of many, so a token from one router must work on
//! every other. etcd's simple tokens are random strings every member learns
//! through raft; Strata's are signed instead (HMAC-SHA256 with the cluster's
//! auth secret, which placement replaces at every `AuthEnable`):
//! `RANDOM16.USER.GENERATION.ISSUED_MS.MAC`. A simple token lasts
//! `--auth-token-ttl` from when it was issued, and, like etcd's, that TTL
//! starts again on every use (each router remembers the tokens it saw used;
//! at most `MAX_SEEN`). A password change or user deletion ends the user's
//! tokens (the generation no longer matches). JWT tokens carry the user name,
//! the auth revision and an expiry, as etcd's do; they are refused with
//! "revision of auth store is old" once the auth state changed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use dashmap::DashMap;
use hmac::{KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use strata_proto::auth::{AuthError, AuthState};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Tokens a router remembers having seen used (for the sliding TTL).
const MAX_SEEN: usize = 100_000;

/// Who a valid token names.
pub struct TokenInfo {
    pub user: String,
    /// The auth revision a JWT token was issued at (simple tokens: none).
    pub revision: Option<u64>,
}

pub enum Tokens {
    Simple {
        ttl: Duration,
        seen: DashMap<String, Instant>,
    },
    Jwt {
        alg: Algorithm,
        sign: EncodingKey,
        verify: DecodingKey,
        ttl: Duration,
    },
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mac(secret: &[u8], body: &str) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(secret).ok()?;
    m.update(body.as_bytes());
    Some(m)
}

impl Tokens {
    /// Parses `--auth-token` (with `--auth-token-ttl` for simple tokens).
    pub fn parse(opt: &str, simple_ttl: Duration) -> Result<Tokens, String> {
        let mut parts = opt.split(',');
        let kind = parts.next().unwrap_or_default().trim();
        let mut kv = std::collections::BTreeMap::new();
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("invalid --auth-token option {p:?}: use key=value"))?;
            if kv
                .insert(k.trim().to_string(), v.trim().to_string())
                .is_some()
            {
                return Err(format!("--auth-token: {k} given twice"));
            }
        }
        match kind {
            "simple" if kv.is_empty() => Ok(Tokens::Simple {
                ttl: simple_ttl,
                seen: DashMap::new(),
            }),
            "jwt" => Self::jwt(&kv),
            other => Err(format!(
                "unknown --auth-token {other:?}: use simple or jwt,pub-key=FILE,priv-key=FILE,sign-method=ALG"
            )),
        }
    }

    fn jwt(kv: &std::collections::BTreeMap<String, String>) -> Result<Tokens, String> {
        let get = |k: &str| {
            kv.get(k)
                .ok_or_else(|| format!("--auth-token jwt needs {k}="))
        };
        let read = |k: &str| -> Result<Vec<u8>, String> {
            let path = get(k)?;
            std::fs::read(path).map_err(|e| format!("--auth-token {k}={path}: {e}"))
        };
        let method = get("sign-method")?;
        let alg: Algorithm = method
            .parse()
            .map_err(|_| format!("--auth-token: unknown sign-method {method:?}"))?;
        let ttl = match kv.get("ttl") {
            Some(t) => crate::config::parse_duration(t)?,
            None => Duration::from_secs(300),
        };
        let bad = |e: jsonwebtoken::errors::Error| format!("--auth-token: bad key: {e}");
        let (sign, verify) = match method.get(..2) {
            Some("HS") => {
                let secret = read("priv-key")?;
                (
                    EncodingKey::from_secret(&secret).map_err(bad)?,
                    DecodingKey::from_secret(&secret).map_err(bad)?,
                )
            }
            Some("RS") | Some("PS") => (
                EncodingKey::from_rsa_pem(&read("priv-key")?).map_err(bad)?,
                DecodingKey::from_rsa_pem(&read("pub-key")?).map_err(bad)?,
            ),
            Some("ES") => (
                EncodingKey::from_ec_pem(&read("priv-key")?).map_err(bad)?,
                DecodingKey::from_ec_pem(&read("pub-key")?).map_err(bad)?,
            ),
            _ => (
                EncodingKey::from_ed_pem(&read("priv-key")?).map_err(bad)?,
                DecodingKey::from_ed_pem(&read("pub-key")?).map_err(bad)?,
            ),
        };
        Ok(Tokens::Jwt {
            alg,
            sign,
            verify,
            ttl,
        })
    }

    /// A new token for `user` (who just authenticated against `state`).
    pub fn assign(&self, state: &AuthState, user: &str) -> Result<String, AuthError> {
        let u = state.users.get(user).ok_or(AuthError::AuthFailed)?;
        match self {
            Tokens::Simple { .. } => {
                let mut rng = rand::rng();
                let random: String = (0..16)
                    .map(|_| {
                        let c = rng.random_range(0..52u8);
                        (if c < 26 { b'a' + c } else { b'A' + c - 26 }) as char
                    })
                    .collect();
                let body = format!(
                    "{random}.{}.{}.{}",
                    B64.encode(user),
                    u.generation,
                    now_ms()
                );
                let tag = mac(&state.secret, &body).ok_or(AuthError::AuthFailed)?;
                Ok(format!(
                    "{body}.{}",
                    B64.encode(tag.finalize().into_bytes())
                ))
            }
            Tokens::Jwt { alg, sign, ttl, .. } => {
                let claims = Claims {
                    username: user.to_string(),
                    revision: state.revision,
                    exp: now_ms() / 1000 + ttl.as_secs(),
                };
                jsonwebtoken::encode(&Header::new(*alg), &claims, sign)
                    .map_err(|_| AuthError::AuthFailed)
            }
        }
    }

    /// Who `token` names, if it is valid under `state`.
    pub fn info(&self, state: &AuthState, token: &str) -> Result<TokenInfo, AuthError> {
        let invalid = AuthError::InvalidAuthToken;
        match self {
            Tokens::Simple { ttl, seen } => {
                let (body, tag) = token.rsplit_once('.').ok_or(invalid)?;
                let fields: Vec<&str> = body.split('.').collect();
                let [_, user, generation, issued] = fields[..] else {
                    return Err(invalid);
                };
                let tag = B64.decode(tag).map_err(|_| invalid)?;
                mac(&state.secret, body)
                    .ok_or(invalid)?
                    .verify_slice(&tag)
                    .map_err(|_| invalid)?;
                let user = String::from_utf8(B64.decode(user).map_err(|_| invalid)?)
                    .map_err(|_| invalid)?;
                let generation: u64 = generation.parse().map_err(|_| invalid)?;
                let issued: u64 = issued.parse().map_err(|_| invalid)?;
                match state.users.get(&user) {
                    Some(u) if u.generation == generation => {}
                    _ => return Err(invalid),
                }
                let fresh = now_ms().saturating_sub(issued) < ttl.as_millis() as u64;
                let now = Instant::now();
                let used_lately = seen
                    .get(token)
                    .is_some_and(|at| now.duration_since(*at) < *ttl);
                if !fresh && !used_lately {
                    seen.remove(token);
                    return Err(invalid);
                }
                // Remember the use (at most every quarter TTL, at most once
                // a second, per token: this runs on every request).
                if let Some(mut at) = seen.get_mut(token) {
                    if now.duration_since(*at) >= (*ttl / 4).min(Duration::from_secs(1)) {
                        *at = now;
                    }
                } else {
                    if seen.len() >= MAX_SEEN {
                        seen.retain(|_, at| now.duration_since(*at) < *ttl);
                    }
                    if seen.len() < MAX_SEEN {
                        seen.insert(token.to_string(), now);
                    }
                }
                Ok(TokenInfo {
                    user,
                    revision: None,
                })
            }
            Tokens::Jwt { alg, verify, .. } => {
                let mut v = Validation::new(*alg);
                v.set_required_spec_claims(&["exp"]);
                v.leeway = 0;
                let data =
                    jsonwebtoken::decode::<Claims>(token, verify, &v).map_err(|_| invalid)?;
                Ok(TokenInfo {
                    user: data.claims.username,
                    revision: Some(data.claims.revision),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::auth::{AuthCommand, ROOT};

    fn state() -> AuthState {
        let mut s = AuthState::default();
        for cmd in [
            AuthCommand::UserAdd {
                name: ROOT.into(),
                password: None,
            },
            AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCommand::UserAdd {
                name: "a.b".into(),
                password: None,
            },
            AuthCommand::Enable {
                secret: b"k".to_vec(),
            },
        ] {
            s.apply(&cmd, Some(ROOT)).unwrap();
        }
        s
    }

    #[test]
    fn simple_tokens_are_signed_and_end_with_the_user() {
        let t = Tokens::parse("simple", Duration::from_secs(300)).unwrap();
        let mut st = state();
        let tok = t.assign(&st, "a.b").unwrap();
        assert_eq!(t.info(&st, &tok).unwrap().user, "a.b");
        // Another router (another Tokens) accepts it too.
        let other = Tokens::parse("simple", Duration::from_secs(300)).unwrap();
        assert_eq!(other.info(&st, &tok).unwrap().user, "a.b");
        // A forged name, a forged tag, another secret: refused.
        let parts: Vec<&str> = tok.split('.').collect();
        let forged = format!(
            "{}.{}.{}.{}.{}",
            parts[0],
            B64.encode(ROOT),
            parts[2],
            parts[3],
            parts[4]
        );
        let refused = Err(AuthError::InvalidAuthToken);
        assert_eq!(t.info(&st, &forged).map(|i| i.user), refused);
        assert_eq!(t.info(&st, &format!("{tok}A")).map(|i| i.user), refused);
        let mut other_secret = st.clone();
        other_secret.secret = b"other".to_vec();
        assert_eq!(t.info(&other_secret, &tok).map(|i| i.user), refused);
        // A password change (generation) ends it.
        st.apply(
            &AuthCommand::UserChangePassword {
                name: "a.b".into(),
                password: None,
            },
            Some(ROOT),
        )
        .unwrap();
        assert_eq!(t.info(&st, &tok).map(|i| i.user), refused);
    }

    #[test]
    fn simple_tokens_expire_unless_used() {
        let t = Tokens::parse("simple", Duration::from_millis(200)).unwrap();
        let st = state();
        let used = t.assign(&st, ROOT).unwrap();
        let idle = t.assign(&st, ROOT).unwrap();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            assert!(t.info(&st, &used).is_ok());
        }
        assert_eq!(
            t.info(&st, &idle).map(|i| i.user),
            Err(AuthError::InvalidAuthToken)
        );
    }

    #[test]
    fn jwt_tokens_carry_the_revision() {
        let dir = std::env::temp_dir().join(format!("strata-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("hs.key");
        std::fs::write(&key, b"a shared secret of enough length!!").unwrap();
        let opt = format!("jwt,priv-key={},sign-method=HS256,ttl=10m", key.display());
        let t = Tokens::parse(&opt, Duration::from_secs(1)).unwrap();
        let st = state();
        let tok = t.assign(&st, ROOT).unwrap();
        let info = t.info(&st, &tok).unwrap();
        assert_eq!(
            (info.user.as_str(), info.revision),
            (ROOT, Some(st.revision))
        );
        assert!(t.info(&st, &tok.replace('.', ",")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        for bad in ["jwt", "jwt,sign-method=XX256", "bogus", "simple,ttl=1"] {
            assert!(Tokens::parse(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
    }
}
