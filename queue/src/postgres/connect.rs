//! Reaching a PostgreSQL server: the queue's URL (printed only with its password hidden), the
//! password from the URL, `PGPASSWORD` or `~/.pgpass`, and TLS through rustls as `sslmode`
//! asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::StoreError;

/// How long connecting may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sent data may stay unacknowledged before the connection counts as dead: a machine
/// cut off from the network notices within this, not after TCP's quarter of an hour.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A `postgres://` queue address, parsed.
#[derive(Clone)]
pub struct PostgresUrl {
    config: Config,
    tls: Tls,
    shown: String,
}

/// What `sslmode` asks of the connection.
#[derive(Clone)]
enum Tls {
    /// `disable`: plain TCP or a Unix socket.
    Off,
    /// `prefer` (the default, as in libpq) and `require`: encrypted, the certificate not
    /// checked (libpq's meaning of these modes).
    Unverified(SslMode),
    /// `verify-full`: encrypted, and the certificate must name the host and chain to
    /// `sslrootcert` (a PEM file) or a well-known authority.
    Verified(Option<PathBuf>),
}

impl PostgresUrl {
    /// Whether `text` names a PostgreSQL queue rather than a folder.
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// Whether `text` is a libpq key=value connection string (`host=db dbname=q ...`): some
    /// word of it starts with a libpq keyword and `=`. Such a text is neither a URL nor a
    /// folder a person means (a folder of that name is still reached as `./host=...`), and it
    /// may hold a password, so it must never be echoed.
    pub fn is_key_value(text: &str) -> bool {
        key_value_spans(text).next().is_some()
    }

    /// Parses a queue URL. The password comes from the URL, else `PGPASSWORD`, else a
    /// matching line of `~/.pgpass` (or `PGPASSFILE`), as libpq looks for it.
    pub fn parse(text: &str) -> Result<PostgresUrl, StoreError> {
        let shown = redact_url(text);
        let bad = |message: String| StoreError::Database {
            path: PathBuf::from(&shown),
            message,
        };
        // sslmode's verifying values and sslrootcert are ours to apply; the client library
        // knows only disable, prefer and require.
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut kept = Vec::new();
        let mut mode = "prefer".to_string();
        let mut root = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = value.to_string(),
                Some(("sslrootcert", value)) => root = Some(PathBuf::from(value)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: Config = rest
            .parse()
            .map_err(|err| bad(format!("not a valid PostgreSQL URL: {err}")))?;
        let tls = match mode.as_str() {
            "disable" => Tls::Off,
            "prefer" => Tls::Unverified(SslMode::Prefer),
            "require" => Tls::Unverified(SslMode::Require),
            "verify-full" => Tls::Verified(root),
            other => {
                return Err(bad(format!(
                    "sslmode={other} is not supported: use disable, prefer, require or verify-full"
                )));
            }
        };
        config.ssl_mode(match tls {
            Tls::Off => SslMode::Disable,
            Tls::Unverified(mode) => mode,
            Tls::Verified(_) => SslMode::Require,
        });
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .ok()
                .or_else(crate::os::user_name)
                .unwrap_or_else(|| "postgres".into());
            config.user(&user);
        }
        if config.get_password().is_none()
            && let Some(password) = password_from_environment(&config)
        {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        config.application_name("host");
        Ok(PostgresUrl { config, tls, shown })
    }

    /// Opens a connection.
    pub(crate) fn connect(&self) -> Result<Client, StoreError> {
        let connected = match &self.tls {
            Tls::Off => self.config.connect(NoTls),
            Tls::Unverified(_) => {
                self.config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                        rustls_config(Arc::new(AnyCertificate(provider())))?,
                    ))
            }
            Tls::Verified(root) => {
                let mut roots = rustls::RootCertStore::empty();
                match root {
                    Some(path) => {
                        let certs = CertificateDer::pem_file_iter(path)
                            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                            .map_err(|err| {
                                self.error(format!("sslrootcert {}: {err}", path.display()))
                            })?;
                        for cert in certs {
                            roots.add(cert).map_err(|err| {
                                self.error(format!("sslrootcert {}: {err}", path.display()))
                            })?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|err| self.error(err.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                self.config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(config))
            }
        };
        connected.map_err(|err| self.error(format!("cannot connect: {}", describe(&err))))
    }

    /// An error about this queue, naming it without its password.
    pub(crate) fn error(&self, message: String) -> StoreError {
        StoreError::Database {
            path: PathBuf::from(&self.shown),
            message,
        }
    }

    /// The URL with its password hidden.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({})", self.shown)
    }
}

/// What went wrong, in one line: the server's message, or the client's and its cause.
pub(crate) fn describe(err: &postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_string();
    }
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

/// The keywords of a libpq connection string (`host=db dbname=q`), as libpq's documentation
/// lists them.
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "require_auth",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "requiressl",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// The keyword=value pairs of a libpq connection string found in `text`, each as the keyword
/// and the byte range of its value: a keyword at the start or after whitespace, then `=`
/// (spaces around it allowed, as libpq allows them), then a value up to the next whitespace,
/// or in single quotes with `\'` and `\\` inside.
fn key_value_spans(text: &str) -> impl Iterator<Item = (&'static str, std::ops::Range<usize>)> {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() {
            let start = at;
            let word_start = start == 0 || bytes[start - 1].is_ascii_whitespace();
            at += 1;
            if !word_start || bytes[start].is_ascii_whitespace() {
                continue;
            }
            let Some(keyword) = LIBPQ_KEYWORDS.iter().copied().find(|k| {
                text[start..].starts_with(k) && {
                    let after = text[start + k.len()..].trim_start();
                    after.starts_with('=')
                }
            }) else {
                continue;
            };
            let after_key = start + keyword.len();
            let eq = after_key + text[after_key..].find('=').unwrap_or(0);
            let mut value = eq + 1;
            while value < bytes.len() && bytes[value].is_ascii_whitespace() {
                value += 1;
            }
            let mut end = value;
            if bytes.get(value) == Some(&b'\'') {
                end += 1;
                while end < bytes.len() && bytes[end] != b'\'' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                end = (end + 1).min(bytes.len());
            } else {
                while end < bytes.len() && !bytes[end].is_ascii_whitespace() {
                    end += 1;
                }
            }
            at = end.max(at);
            return Some((keyword, value..end));
        }
        None
    })
}

/// `text` with its passwords replaced by `***`: of a URL's user-info part and `password=`
/// parameter, or of a libpq key=value string's `password` (and `sslpassword`).
pub fn redact_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        let mut shown = text.to_string();
        let secrets: Vec<std::ops::Range<usize>> = key_value_spans(text)
            .filter(|(keyword, _)| keyword.ends_with("password"))
            .map(|(_, value)| value)
            .collect();
        for value in secrets.into_iter().rev() {
            shown.replace_range(value, "***");
        }
        return shown;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let shown = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    // A password can also be a query parameter.
    let tail = tail
        .split('&')
        .map(|part| match part.split_once("password=") {
            Some((before, _)) if before.is_empty() || before.ends_with('?') => {
                format!("{before}password=***")
            }
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{scheme}://{shown}{tail}")
}

/// `PGPASSWORD`, else the first matching line of the password file (`PGPASSFILE`, else
/// `~/.pgpass`), which libpq ignores unless only its owner can read it.
fn password_from_environment(config: &Config) -> Option<String> {
    if let Ok(password) = std::env::var("PGPASSWORD") {
        return Some(password);
    }
    let file = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(default_pgpass)?;
    pgpass_lookup(&file, config)
}

/// Where libpq looks for the password file when `PGPASSFILE` is not set.
fn default_pgpass() -> Option<PathBuf> {
    #[cfg(windows)]
    let file =
        std::env::var_os("APPDATA").map(|dir| Path::new(&dir).join(r"postgresql\pgpass.conf"));
    #[cfg(not(windows))]
    let file = std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass"));
    file
}

fn pgpass_lookup(file: &Path, config: &Config) -> Option<String> {
    if !crate::os::owner_only(&std::fs::metadata(file).ok()?) {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        _ => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let db = config
        .get_dbname()
        .map_or_else(|| user.clone(), str::to_string);
    let wanted = [host, port, db, user];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(&wanted)
                .all(|(field, want)| field == "*" || field == want);
            matches.then(|| fields[4].clone())
        })
}

/// A line of `.pgpass`: fields separated by `:`, where `\:` and `\\` are literal.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn rustls_config(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, StoreError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| StoreError::Database {
                path: PathBuf::from("(TLS)"),
                message: err.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// Accepts any server certificate: what `sslmode=prefer` and `require` mean (encryption
/// against eavesdroppers, no protection from an impostor; `verify-full` gives that). The
/// handshake's signatures are still checked, so the session key is the certificate's.
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://ann:s3cr3t@db.example:5432/q?sslmode=require"),
            "postgres://ann:***@db.example:5432/q?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://db/q?user=ann&password=s3cr3t"),
            "postgresql://db/q?user=ann&password=***"
        );
        assert_eq!(redact_url("postgres://ann@db/q"), "postgres://ann@db/q");
        assert_eq!(
            redact_url("host=db password=s3cr3t dbname=q"),
            "host=db password=*** dbname=q"
        );
        assert_eq!(
            redact_url("password = 'it\\'s s3cr3t' sslpassword=k3y host=db"),
            "password = *** sslpassword=*** host=db"
        );
    }

    #[test]
    fn key_value_strings_are_told_from_folders() {
        for libpq in [
            "host=db dbname=q",
            "dbname = q",
            "  user=ann password=x",
            "service=queue",
        ] {
            assert!(PostgresUrl::is_key_value(libpq), "{libpq}");
        }
        for folder in [
            "./host=db",
            "/srv/queues/dbname=q",
            "copilot-orchestration",
            "hostname=x",
            "my host",
            "",
        ] {
            assert!(!PostgresUrl::is_key_value(folder), "{folder}");
        }
    }

    #[test]
    fn pgpass_fields_unescape() {
        assert_eq!(
            split_pgpass(r"db:5432:*:ann:pa\:ss\\"),
            ["db", "5432", "*", "ann", r"pa:ss\"]
        );
    }
}
