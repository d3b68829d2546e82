//! Secrets given inline, as `*_file`, or as systemd credentials, read into the settings after
//! layering; the checks that refuse an ambiguous or empty one. Reasons never quote a secret.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::keys::{KEYS, Key, Value};
use super::{ConfigError, Problem, Settings};

/// The path in `<key>_file`, if set.
fn file_of(key: &Key, s: &Settings) -> Option<PathBuf> {
    let file = super::keys::get(&format!("{}_file", key.name))?;
    match file.value(s) {
        Value::Path(p) => p.map(Path::to_path_buf),
        _ => None,
    }
}

/// Reads every secret the key table gives a slot (src/config/keys.rs): given inline, as its
/// `<key>_file`, or as a systemd credential, in that order of preference; inline and file
/// together are an error because one of them would be silently ignored.
pub(super) fn resolve_secrets(
    s: &mut Settings,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let credentials = env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let mut problems = Vec::new();
    for key in KEYS {
        let Some(slot) = key.slot else { continue };
        let file = file_of(key, s);
        let value = (slot.value)(s);
        // A token of spaces enables an endpoint with a credential no client can send (clients
        // and this runner trim it): refused like an empty file.
        if value
            .as_ref()
            .is_some_and(|v| v.expose_secret().trim().is_empty())
        {
            problems.push(Problem {
                key: key.name.to_string(),
                reason: "is only whitespace; set a real value or leave it unset".into(),
            });
            continue;
        }
        match (value.is_some(), &file) {
            (true, Some(_)) => problems.push(Problem {
                key: format!("{}_file", key.name),
                reason: format!("set together with {}; set only one of them", key.name),
            }),
            (false, Some(path)) => match read_secret_file(path) {
                Ok(v) => *value = v,
                Err(reason) => problems.push(Problem {
                    key: format!("{}_file", key.name),
                    reason,
                }),
            },
            (false, None) => {
                if let Some(dir) = &credentials {
                    let path = dir.join(slot.credential);
                    if path.exists() {
                        match read_secret_file(&path) {
                            Ok(v) => *value = v,
                            Err(reason) => problems.push(Problem {
                                key: key.name.to_string(),
                                reason: format!("credential {}: {reason}", slot.credential),
                            }),
                        }
                    }
                }
            }
            (true, None) => {}
        }
    }
    resolve_number_secrets(s, credentials.as_deref(), &mut problems);
    if let (Some(direct), Some(listen)) = (&s.database.direct_url, &s.database.listen_url) {
        if direct.expose_secret() != listen.expose_secret() {
            problems.push(Problem {
                key: "database.listen_url".into(),
                reason: "is the old name of database.direct_url, and both are set to different \
                         URLs; set only database.direct_url"
                    .into(),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// `whatsapp.numbers[i].access_token`: inline, `_file`, or the credential
/// `whatsapp_access_token_<phone_number_id>`; none of them: the `[whatsapp]` token.
fn resolve_number_secrets(
    s: &mut Settings,
    credentials: Option<&Path>,
    problems: &mut Vec<Problem>,
) {
    for (i, n) in s.whatsapp.numbers.iter_mut().enumerate() {
        let key = format!("whatsapp.numbers[{i}].access_token");
        match (n.access_token.is_some(), &n.access_token_file) {
            (true, Some(_)) => problems.push(Problem {
                key: format!("{key}_file"),
                reason: format!("set together with {key}; set only one of them"),
            }),
            (false, Some(path)) => match read_secret_file(path) {
                Ok(v) => n.access_token = v,
                Err(reason) => problems.push(Problem {
                    key: format!("{key}_file"),
                    reason,
                }),
            },
            (false, None) => {
                let Some(dir) = credentials else { continue };
                if n.phone_number_id.is_empty()
                    || !n.phone_number_id.chars().all(|c| c.is_ascii_digit())
                {
                    continue;
                }
                let name = format!("whatsapp_access_token_{}", n.phone_number_id);
                let path = dir.join(&name);
                if path.exists() {
                    match read_secret_file(&path) {
                        Ok(v) => n.access_token = v,
                        Err(reason) => problems.push(Problem {
                            key,
                            reason: format!("credential {name}: {reason}"),
                        }),
                    }
                }
            }
            (true, None) => {}
        }
    }
}

/// The largest secret file read: a secret is a line; anything bigger is the wrong file.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret from `path`: a regular file (never a device or a FIFO, which could never
/// end or never answer) of at most [`MAX_SECRET_FILE`] bytes, in UTF-8. A reason never quotes
/// what the file holds.
fn read_secret_file(path: &Path) -> Result<Option<SecretString>, String> {
    use std::io::Read;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(format!(
            "{} is larger than {} KiB: not a secret file",
            path.display(),
            MAX_SECRET_FILE / 1024
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "{} is larger than {} KiB: not a secret file",
            path.display(),
            MAX_SECRET_FILE / 1024
        ));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if trimmed.trim().is_empty() {
        return Err(format!("{} holds only whitespace", path.display()));
    }
    Ok(Some(SecretString::from(trimmed.to_string())))
}

/// A warning when the configuration file holds secrets and every user of the machine may read
/// it (mode `o+r`); `None` when it does not. Names the keys, never their values. Said at
/// start-up and by `check-config`.
pub fn readable_secrets_warning(opts: &super::LoadOptions, s: &Settings) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let file = opts.config_file()?;
    let mode = std::fs::metadata(&file).ok()?.permissions().mode();
    if mode & 0o004 == 0 {
        return None;
    }
    let origins = super::origins(opts).ok()?;
    let from_file = |key: &str| {
        origins.get(key).or_else(|| {
            key.starts_with("whatsapp.numbers[")
                .then(|| origins.get("whatsapp.numbers"))
                .flatten()
        }) == Some(&"file")
    };
    let keys: Vec<String> = super::keys::effective(s)
        .into_iter()
        .filter(|(key, value)| value == super::keys::MASK && from_file(key))
        .map(|(key, _)| key)
        .collect();
    if keys.is_empty() {
        return None;
    }
    Some(format!(
        "the configuration file {} is readable by every user (mode {:o}) and holds secrets ({}): \
         make it unreadable to others (chmod o-r), or move them to *_file keys or systemd \
         credentials",
        file.display(),
        mode & 0o7777,
        keys.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use crate::config::tests::opts;
    use crate::config::*;

    /// `[[whatsapp.numbers]]`: inherited keys, the per-number credential, and the checks.
    #[test]
    fn several_numbers() {
        let dir = std::env::temp_dir().join(format!("or-numbers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("whatsapp_access_token_222"), "tok-222\n").unwrap();
        let file = dir.join("config.toml");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        let load_it = || {
            load(&LoadOptions {
                config_path: Some(file.clone()),
                skip_default_path: true,
                env: [
                    (
                        "CREDENTIALS_DIRECTORY".to_string(),
                        dir.display().to_string(),
                    ),
                    (
                        "OUTBOUND_RUNNER__DELIVERY__MODE".to_string(),
                        "live".to_string(),
                    ),
                ]
                .into(),
            })
        };
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             rate_per_second = 80\n\
             [[whatsapp.numbers]]\nphone_number_id = \"222\"\nrate_per_second = 20\n\
             [[whatsapp.numbers]]\nphone_number_id = \"333\"\npair_interval = \"1s\"\n",
        );
        let s = load_it().unwrap();
        let w = &s.whatsapp;
        assert_eq!(w.number_ids(), ["111", "222", "333"]);
        assert_eq!(w.default_number_id(), "111");
        let n = w.number(Some("222")).unwrap();
        assert_eq!(n.access_token.unwrap().expose_secret(), "tok-222");
        assert_eq!((n.rate_per_second, n.pair_interval), (20, w.pair_interval));
        let n = w.number(Some("333")).unwrap();
        assert_eq!(
            n.access_token.unwrap().expose_secret(),
            "tok-111",
            "inherited"
        );
        assert_eq!(
            (n.rate_per_second, n.pair_interval),
            (80, Duration::from_secs(1))
        );
        assert_eq!(w.number(None).unwrap().phone_number_id, "111");
        assert!(w.number(Some("444")).is_none());
        assert_eq!(w.total_rate(), 180);

        // A duplicate id, a zero rate, and a number with no token anywhere.
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"111\"\nrate_per_second = 0\n",
        );
        let e = load_it().unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "whatsapp.numbers[0].phone_number_id",
                "whatsapp.numbers[0].rate_per_second"
            ],
            "{e}"
        );
        assert!(e.to_string().contains("configured twice"), "{e}");
        write("[[whatsapp.numbers]]\nphone_number_id = \"555\"\n");
        let e = load_it().unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["whatsapp.numbers[0].access_token"], "{e}");
        assert!(!e.to_string().contains("tok-"), "{e}");

        // Tier limits: inherited, per number, grouped by business; one business, one limit.
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             tier_limit = 250\nbusiness_id = \"acme\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"222\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"333\"\ntier_limit = 2000\nbusiness_id = \"\"\n",
        );
        let w = load_it().unwrap().whatsapp;
        let n = |id| w.number(Some(id)).unwrap();
        assert_eq!(
            (n("222").tier_limit, n("222").tier_group()),
            (250, "business:acme".into())
        );
        assert_eq!(
            (n("333").tier_limit, n("333").tier_group()),
            (2000, "number:333".into())
        );
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             tier_limit = 250\nbusiness_id = \"acme\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"222\"\ntier_limit = 2000\n",
        );
        let e = load_it().unwrap_err();
        assert!(
            e.to_string()
                .contains("share business_id acme but not tier_limit"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_file_and_credentials() {
        let dir = std::env::temp_dir().join(format!("or-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tok"), "from-file\n").unwrap();
        std::fs::write(dir.join("cron_secret"), "from-credential\n").unwrap();
        let tok = dir.join("tok");
        let s = load(&opts(&[
            ("JOB_RUNNER_TOKEN_FILE", tok.to_str().unwrap()),
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(
            s.http.job_runner_token.unwrap().expose_secret(),
            "from-file"
        );
        assert_eq!(
            s.http.cron_secret.unwrap().expose_secret(),
            "from-credential"
        );

        let e = load(&opts(&[
            ("JOB_RUNNER_TOKEN", "x"),
            ("JOB_RUNNER_TOKEN_FILE", tok.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert_eq!(e.problems[0].key, "http.job_runner_token_file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn direct_url_and_its_old_name() {
        let s = load(&opts(&[
            (
                "DATABASE_URL",
                "postgres://u:p@pooler:6543/db?pgbouncer=true",
            ),
            ("DIRECT_URL", "postgres://u:p@db:5432/db"),
        ]))
        .unwrap();
        assert_eq!(s.database.pooler, PoolerMode::Auto);
        assert!(crate::db::pooler_mode(
            &s,
            s.database.url.as_ref().unwrap().expose_secret()
        ));
        assert_eq!(
            s.direct_url().unwrap().expose_secret(),
            "postgres://u:p@db:5432/db"
        );

        // The old name alone still works; both, differing, is an error naming the old one.
        let s = load(&opts(&[(
            "OUTBOUND_RUNNER__DATABASE__LISTEN_URL",
            "postgres://u:p@db/db",
        )]))
        .unwrap();
        assert_eq!(
            s.direct_url().unwrap().expose_secret(),
            "postgres://u:p@db/db"
        );
        let e = load(&opts(&[
            ("DIRECT_URL", "postgres://u:p@db/db"),
            (
                "OUTBOUND_RUNNER__DATABASE__LISTEN_URL",
                "postgres://u:p@other/db",
            ),
        ]))
        .unwrap_err();
        assert_eq!(e.problems[0].key, "database.listen_url", "{e}");

        // Explicit modes win over the URL.
        let s = load(&opts(&[
            ("DATABASE_URL", "postgres://u@pooler/db?pgbouncer=true"),
            ("OUTBOUND_RUNNER__DATABASE__POOLER", "none"),
        ]))
        .unwrap();
        assert!(!crate::db::pooler_mode(
            &s,
            "postgres://u@pooler/db?pgbouncer=true"
        ));
        let s = load(&opts(&[(
            "OUTBOUND_RUNNER__DATABASE__POOLER",
            "transaction",
        )]))
        .unwrap();
        assert!(crate::db::pooler_mode(&s, "postgres://u@pooler/db"));

        // Prisma's schema parameter for another schema is refused, without the password.
        let e = load(&opts(&[(
            "DATABASE_URL",
            "postgres://u:hunter2@h/db?schema=app",
        )]))
        .unwrap_err();
        assert_eq!(e.problems[0].key, "database.url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
