//! Kafka client credentials: the SASL login and the TLS material a job
//! names in `spec.kafka.credentialsSecret`, read from the Secret the
//! operator mounts in the directory `WEIR_KAFKA_CREDENTIALS_DIR` names (one
//! file per Secret key, named as the key), and turned into librdkafka
//! properties.
//!
//! Reading ([`SecretMaterial::read`]) is separate from the mapping to
//! properties ([`SecretMaterial::properties`]), which is pure. No error and
//! no `Debug` output holds the SASL password.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use weir_crds::job::{KafkaCredentials, KafkaSpec, SaslMechanism};

use crate::config::KAFKA_CREDENTIALS_DIR_VAR;

/// The librdkafka property choosing plaintext or TLS, with or without SASL.
pub const SECURITY_PROTOCOL: &str = "security.protocol";

/// Why the Kafka credentials could not be read. Never holds a secret value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The job names a credentials Secret but the worker was not told where
    /// it is mounted.
    #[error(
        "{var} is not set: spec.kafka.credentialsSecret names Secret {secret:?}, which the worker reads from the directory this variable names"
    )]
    NoDirectory {
        /// The variable naming the directory.
        var: &'static str,
        /// The Secret's name.
        secret: String,
    },
    /// A key of the Secret cannot be used.
    #[error("key {key:?} of the Kafka credentials Secret {secret:?} ({path}): {reason}")]
    File {
        /// The Secret's name.
        secret: String,
        /// The Secret key.
        key: String,
        /// The file holding the key.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A SASL mechanism with its username and password. `Debug` hides the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslLogin {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a job's credentials Secret provides: the SASL login (when the job
/// names a mechanism) and the files of the TLS material it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretMaterial {
    /// The SASL login, when `saslMechanism` is set.
    pub sasl: Option<SaslLogin>,
    /// The PEM CA certificate of the brokers (`caKey`).
    pub ca_location: Option<PathBuf>,
    /// The PEM client certificate (`certificateKey`).
    pub certificate_location: Option<PathBuf>,
    /// The PEM client private key (`privateKeyKey`).
    pub private_key_location: Option<PathBuf>,
}

/// The client properties the job's credentials Secret, mounted in `dir`,
/// sets (none when the job names no Secret); see
/// [`SecretMaterial::properties`].
pub fn client_properties(
    kafka: &KafkaSpec,
    dir: Option<&Path>,
) -> Result<Vec<(&'static str, String)>, CredentialsError> {
    let Some(credentials) = &kafka.credentials_secret else {
        return Ok(Vec::new());
    };
    let dir = dir.ok_or_else(|| CredentialsError::NoDirectory {
        var: KAFKA_CREDENTIALS_DIR_VAR,
        secret: credentials.name.clone(),
    })?;
    Ok(SecretMaterial::read(credentials, dir)?.properties(&kafka.properties))
}

impl SecretMaterial {
    /// Reads the Secret `credentials` names from the directory it is
    /// mounted in: the username and password when a SASL mechanism is set
    /// (without one trailing line ending, `\n` or `\r\n`, which files
    /// written by hand often have; other whitespace is kept), and checks
    /// that each TLS file it names is a readable, non-empty file.
    pub fn read(credentials: &KafkaCredentials, dir: &Path) -> Result<Self, CredentialsError> {
        let secret = MountedSecret {
            name: &credentials.name,
            dir,
        };
        let sasl = match credentials.sasl_mechanism {
            Some(mechanism) => Some(SaslLogin {
                mechanism,
                username: secret.text(&credentials.username_key)?,
                password: secret.text(&credentials.password_key)?,
            }),
            None => None,
        };
        Ok(Self {
            sasl,
            ca_location: secret.location(credentials.ca_key.as_deref())?,
            certificate_location: secret.location(credentials.certificate_key.as_deref())?,
            private_key_location: secret.location(credentials.private_key_key.as_deref())?,
        })
    }

    /// The librdkafka properties of this material: `sasl.mechanism`,
    /// `sasl.username` and `sasl.password` for the SASL login;
    /// `ssl.ca.location`, `ssl.certificate.location` and `ssl.key.location`
    /// pointing at the TLS files; and `security.protocol`, unless
    /// `user_properties` (the job's `spec.kafka.properties`) set it:
    /// `SASL_SSL` with a SASL login and TLS files, `SASL_PLAINTEXT` with a
    /// SASL login only (the password then travels in clear with PLAIN),
    /// `SSL` with TLS files only.
    ///
    /// The user's `security.protocol` wins: SASL over TLS with brokers whose
    /// certificate a public CA signs (as in Confluent Cloud) has no CA file
    /// in the Secret, and needs `security.protocol: SASL_SSL` in the
    /// properties. Every other property returned here is meant to override
    /// a job property of the same name: the Secret wins.
    pub fn properties(
        &self,
        user_properties: &BTreeMap<String, String>,
    ) -> Vec<(&'static str, String)> {
        let mut properties = Vec::new();
        if let Some(login) = &self.sasl {
            properties.push(("sasl.mechanism", mechanism_name(login.mechanism).to_owned()));
            properties.push(("sasl.username", login.username.clone()));
            properties.push(("sasl.password", login.password.clone()));
        }
        let files = [
            ("ssl.ca.location", &self.ca_location),
            ("ssl.certificate.location", &self.certificate_location),
            ("ssl.key.location", &self.private_key_location),
        ];
        let mut tls = false;
        for (property, location) in files {
            if let Some(path) = location {
                properties.push((property, path.to_string_lossy().into_owned()));
                tls = true;
            }
        }
        let protocol = match (self.sasl.is_some(), tls) {
            (true, true) => Some("SASL_SSL"),
            (true, false) => Some("SASL_PLAINTEXT"),
            (false, true) => Some("SSL"),
            (false, false) => None,
        };
        if let Some(protocol) = protocol
            && !user_properties.contains_key(SECURITY_PROTOCOL)
        {
            properties.push((SECURITY_PROTOCOL, protocol.to_owned()));
        }
        properties
    }
}

/// The librdkafka name of a SASL mechanism.
fn mechanism_name(mechanism: SaslMechanism) -> &'static str {
    match mechanism {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// A Secret mounted as a directory of files, one per key.
struct MountedSecret<'a> {
    name: &'a str,
    dir: &'a Path,
}

impl MountedSecret<'_> {
    fn error(&self, key: &str, path: &Path, reason: impl Into<String>) -> CredentialsError {
        CredentialsError::File {
            secret: self.name.to_owned(),
            key: key.to_owned(),
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// The file of `key` and its content, refused when it is empty.
    fn read(&self, key: &str) -> Result<(PathBuf, Vec<u8>), CredentialsError> {
        let path = self.dir.join(key);
        if !is_secret_key(key) {
            return Err(self.error(
                key,
                &path,
                "not a Secret key (letters, digits, '-', '_' and '.')",
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "the file does not exist (does the Secret have this key?)".to_owned()
                }
                _ => format!("cannot read the file: {e}"),
            };
            self.error(key, &path, reason)
        })?;
        if bytes.is_empty() {
            return Err(self.error(key, &path, "the file is empty"));
        }
        Ok((path, bytes))
    }

    /// The text of `key` without one trailing line ending.
    fn text(&self, key: &str) -> Result<String, CredentialsError> {
        let (path, bytes) = self.read(key)?;
        let mut text = String::from_utf8(bytes)
            .map_err(|_| self.error(key, &path, "the file is not UTF-8 text"))?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        if text.is_empty() {
            return Err(self.error(key, &path, "the file holds only a line ending"));
        }
        Ok(text)
    }

    /// The file of `key`, when a key is named, checked to be readable.
    fn location(&self, key: Option<&str>) -> Result<Option<PathBuf>, CredentialsError> {
        key.map(|key| self.read(key).map(|(path, _)| path))
            .transpose()
    }
}

/// Whether `key` is a valid Secret key, so that it names a file in the
/// Secret's directory and nothing outside it.
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;

    const PASSWORD: &str = "hunter2-s3cret";

    fn credentials(mechanism: Option<SaslMechanism>) -> KafkaCredentials {
        KafkaCredentials {
            name: "kafka-creds".into(),
            sasl_mechanism: mechanism,
            username_key: "username".into(),
            password_key: "password".into(),
            ca_key: None,
            certificate_key: None,
            private_key_key: None,
        }
    }

    fn kafka(credentials: Option<KafkaCredentials>, properties: &[(&str, &str)]) -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: "b:9092".into(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            credentials_secret: credentials,
        }
    }

    /// A directory holding the given Secret keys.
    fn secret_dir(files: &[(&str, &[u8])]) -> TempDir {
        let dir = TempDir::new().unwrap();
        for (key, content) in files {
            std::fs::write(dir.path().join(key), content).unwrap();
        }
        dir
    }

    fn login_files() -> [(&'static str, &'static [u8]); 2] {
        [("username", b"alice\n"), ("password", b"hunter2-s3cret\n")]
    }

    fn props(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn location(dir: &TempDir, key: &str) -> String {
        dir.path().join(key).to_string_lossy().into_owned()
    }

    #[test]
    fn no_secret_means_no_properties() {
        assert_eq!(client_properties(&kafka(None, &[]), None).unwrap(), vec![]);
        let dir = secret_dir(&[]);
        assert_eq!(
            client_properties(&kafka(None, &[]), Some(dir.path())).unwrap(),
            vec![]
        );
    }

    #[test]
    fn sasl_plain_without_tls_is_sasl_plaintext() {
        let dir = secret_dir(&login_files());
        let spec = kafka(Some(credentials(Some(SaslMechanism::Plain))), &[]);
        assert_eq!(
            client_properties(&spec, Some(dir.path())).unwrap(),
            props(&[
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "alice"),
                ("sasl.password", PASSWORD),
                ("security.protocol", "SASL_PLAINTEXT"),
            ])
        );
    }

    #[test]
    fn scram_with_a_ca_is_sasl_ssl() {
        let dir = secret_dir(&[
            ("user", b"bob"),
            ("pass", b"pw"),
            ("ca.crt", b"-----BEGIN CERTIFICATE-----\n"),
        ]);
        let mut creds = credentials(Some(SaslMechanism::ScramSha512));
        creds.username_key = "user".into();
        creds.password_key = "pass".into();
        creds.ca_key = Some("ca.crt".into());
        let spec = kafka(Some(creds.clone()), &[]);
        assert_eq!(
            client_properties(&spec, Some(dir.path())).unwrap(),
            props(&[
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "bob"),
                ("sasl.password", "pw"),
                ("ssl.ca.location", &location(&dir, "ca.crt")),
                ("security.protocol", "SASL_SSL"),
            ])
        );
        creds.sasl_mechanism = Some(SaslMechanism::ScramSha256);
        let properties = client_properties(&kafka(Some(creds), &[]), Some(dir.path())).unwrap();
        assert_eq!(
            properties[0],
            ("sasl.mechanism", "SCRAM-SHA-256".to_owned())
        );
    }

    #[test]
    fn mutual_tls_without_sasl_is_ssl() {
        let dir = secret_dir(&[
            ("ca.crt", b"ca"),
            ("tls.crt", b"cert"),
            ("tls.key", b"key"),
            // Present but unused: no SASL mechanism is named.
            ("username", b"alice"),
        ]);
        let mut creds = credentials(None);
        creds.ca_key = Some("ca.crt".into());
        creds.certificate_key = Some("tls.crt".into());
        creds.private_key_key = Some("tls.key".into());
        assert_eq!(
            client_properties(&kafka(Some(creds), &[]), Some(dir.path())).unwrap(),
            props(&[
                ("ssl.ca.location", &location(&dir, "ca.crt")),
                ("ssl.certificate.location", &location(&dir, "tls.crt")),
                ("ssl.key.location", &location(&dir, "tls.key")),
                ("security.protocol", "SSL"),
            ])
        );
    }

    #[test]
    fn the_users_security_protocol_wins() {
        // SASL over TLS with a publicly signed broker certificate: no CA in
        // the Secret, the user says SASL_SSL.
        let dir = secret_dir(&login_files());
        let spec = kafka(
            Some(credentials(Some(SaslMechanism::Plain))),
            &[("security.protocol", "SASL_SSL")],
        );
        let properties = client_properties(&spec, Some(dir.path())).unwrap();
        assert!(properties.iter().all(|(k, _)| *k != "security.protocol"));
        assert_eq!(properties.len(), 3);
    }

    #[test]
    fn one_trailing_line_ending_is_trimmed() {
        let text = |content: &[u8]| {
            let dir = secret_dir(&[("username", b"u"), ("password", content)]);
            let creds = credentials(Some(SaslMechanism::Plain));
            SecretMaterial::read(&creds, dir.path())
                .unwrap()
                .sasl
                .unwrap()
                .password
        };
        assert_eq!(text(b"pw\n"), "pw");
        assert_eq!(text(b"pw\r\n"), "pw");
        assert_eq!(text(b"pw\n\n"), "pw\n");
        assert_eq!(text(b" pw \t"), " pw \t");
        assert_eq!(text(b"pw\r"), "pw\r");
    }

    #[test]
    fn missing_and_unusable_files_are_named() {
        let err = |files: &[(&str, &[u8])], creds: KafkaCredentials| {
            let dir = secret_dir(files);
            let message = SecretMaterial::read(&creds, dir.path())
                .unwrap_err()
                .to_string();
            assert!(!message.contains(PASSWORD), "{message}");
            (message, dir)
        };
        let plain = credentials(Some(SaslMechanism::Plain));

        let (message, dir) = err(&[("username", b"alice")], plain.clone());
        assert_eq!(
            message,
            format!(
                "key \"password\" of the Kafka credentials Secret \"kafka-creds\" ({}): the file does not exist (does the Secret have this key?)",
                location(&dir, "password")
            )
        );

        let (message, _) = err(
            &[("username", b"alice"), ("password", b"\xff\xfe")],
            plain.clone(),
        );
        assert!(message.ends_with("the file is not UTF-8 text"), "{message}");

        let (message, _) = err(
            &[("username", b"\n"), ("password", PASSWORD.as_bytes())],
            plain.clone(),
        );
        assert!(message.starts_with("key \"username\""), "{message}");
        assert!(
            message.ends_with("the file holds only a line ending"),
            "{message}"
        );

        let mut tls = credentials(None);
        tls.ca_key = Some("ca.crt".into());
        let (message, _) = err(&[("ca.crt", b"")], tls.clone());
        assert!(message.ends_with("the file is empty"), "{message}");

        tls.ca_key = Some("../ca.crt".into());
        let (message, _) = err(&[], tls.clone());
        assert!(message.contains("not a Secret key"), "{message}");

        // A directory where a file should be: not readable as a file.
        let dir = secret_dir(&[]);
        std::fs::create_dir(dir.path().join("ca.crt")).unwrap();
        tls.ca_key = Some("ca.crt".into());
        let message = SecretMaterial::read(&tls, dir.path())
            .unwrap_err()
            .to_string();
        assert!(message.contains("cannot read the file"), "{message}");
    }

    #[test]
    fn a_secret_needs_its_directory() {
        let spec = kafka(Some(credentials(Some(SaslMechanism::Plain))), &[]);
        let message = client_properties(&spec, None).unwrap_err().to_string();
        assert!(
            message.starts_with(
                "WEIR_KAFKA_CREDENTIALS_DIR is not set: spec.kafka.credentialsSecret names Secret \"kafka-creds\""
            ),
            "{message}"
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let dir = secret_dir(&login_files());
        let material =
            SecretMaterial::read(&credentials(Some(SaslMechanism::Plain)), dir.path()).unwrap();
        let debug = format!("{material:?}");
        assert!(
            debug.contains("alice") && !debug.contains(PASSWORD),
            "{debug}"
        );
    }
}
