//! The Kafka client properties of a job's credentials Secret, as the
//! operator uses them to read the lag: the same mapping as the workers'
//! (`worker/src/kafka/credentials.rs`), but from the Secret's data read
//! through the API rather than from files mounted in a pod, so TLS
//! material is passed as PEM text (`ssl.*.pem`) instead of file locations.
//! Pure; no error and no `Debug` output holds a secret value.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use weir_crds::job::{KafkaCredentials, KafkaSpec, SaslMechanism};

/// The librdkafka property choosing plaintext or TLS, with or without SASL.
pub const SECURITY_PROTOCOL: &str = "security.protocol";

/// Why a key of the credentials Secret cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("key {key:?} of the Kafka credentials Secret {secret:?}: {reason}")]
pub struct CredentialsError {
    /// The Secret's name.
    pub secret: String,
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The client properties of the job's Kafka connection: its
/// `spec.kafka.properties`, overridden by those of its credentials Secret
/// (whose data is `secret`): `sasl.mechanism`, `sasl.username` and
/// `sasl.password` when a mechanism is named, `ssl.ca.pem`,
/// `ssl.certificate.pem` and `ssl.key.pem` for the TLS keys it names, and
/// `security.protocol` (unless the job sets it): `SASL_SSL`, `SASL_PLAINTEXT`
/// or `SSL` as the workers choose it.
pub fn client_properties(
    kafka: &KafkaSpec,
    secret: Option<&BTreeMap<String, ByteString>>,
) -> Result<BTreeMap<String, String>, CredentialsError> {
    let mut properties = kafka.properties.clone();
    let Some(credentials) = &kafka.credentials_secret else {
        return Ok(properties);
    };
    let empty = BTreeMap::new();
    let data = secret.unwrap_or(&empty);
    let text = |key: &str, trim: bool| text_of(credentials, data, key, trim);
    let mut sasl = false;
    if let Some(mechanism) = credentials.sasl_mechanism {
        properties.insert("sasl.mechanism".into(), mechanism_name(mechanism).into());
        properties.insert(
            "sasl.username".into(),
            text(&credentials.username_key, true)?,
        );
        properties.insert(
            "sasl.password".into(),
            text(&credentials.password_key, true)?,
        );
        sasl = true;
    }
    let mut tls = false;
    let pems = [
        ("ssl.ca.pem", &credentials.ca_key),
        ("ssl.certificate.pem", &credentials.certificate_key),
        ("ssl.key.pem", &credentials.private_key_key),
    ];
    for (property, key) in pems {
        if let Some(key) = key {
            properties.insert(property.into(), text(key, false)?);
            tls = true;
        }
    }
    let protocol = match (sasl, tls) {
        (true, true) => Some("SASL_SSL"),
        (true, false) => Some("SASL_PLAINTEXT"),
        (false, true) => Some("SSL"),
        (false, false) => None,
    };
    if let Some(protocol) = protocol
        && !kafka.properties.contains_key(SECURITY_PROTOCOL)
    {
        properties.insert(SECURITY_PROTOCOL.into(), protocol.into());
    }
    Ok(properties)
}

/// The UTF-8 text of `key`, without one trailing line ending when `trim`
/// (as the workers read the SASL login).
fn text_of(
    credentials: &KafkaCredentials,
    data: &BTreeMap<String, ByteString>,
    key: &str,
    trim: bool,
) -> Result<String, CredentialsError> {
    let error = |reason| CredentialsError {
        secret: credentials.name.clone(),
        key: key.to_owned(),
        reason,
    };
    let bytes = data
        .get(key)
        .ok_or_else(|| error("the Secret has no such key"))?;
    let mut text =
        String::from_utf8(bytes.0.clone()).map_err(|_| error("the value is not UTF-8 text"))?;
    if trim && text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(error("the value is empty"));
    }
    Ok(text)
}

/// The librdkafka name of a SASL mechanism.
fn mechanism_name(mechanism: SaslMechanism) -> &'static str {
    match mechanism {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(credentials: Option<KafkaCredentials>) -> KafkaSpec {
        KafkaSpec {
            bootstrap_servers: "kafka:9092".into(),
            properties: BTreeMap::from([("client.rack".into(), "a".into())]),
            credentials_secret: credentials,
        }
    }

    fn credentials(mechanism: Option<SaslMechanism>, ca: Option<&str>) -> KafkaCredentials {
        KafkaCredentials {
            name: "kafka-login".into(),
            sasl_mechanism: mechanism,
            username_key: "username".into(),
            password_key: "password".into(),
            ca_key: ca.map(Into::into),
            certificate_key: None,
            private_key_key: None,
        }
    }

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn sasl_over_tls_from_the_secret_data() {
        let spec = kafka(Some(credentials(
            Some(SaslMechanism::ScramSha512),
            Some("ca.crt"),
        )));
        let secret = data(&[
            ("username", "weir\n"),
            ("password", "s3cret\r\n"),
            (
                "ca.crt",
                "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
            ),
        ]);
        let properties = client_properties(&spec, Some(&secret)).unwrap();
        assert_eq!(properties["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(properties["sasl.username"], "weir");
        assert_eq!(properties["sasl.password"], "s3cret");
        assert!(properties["ssl.ca.pem"].ends_with("-----END CERTIFICATE-----\n"));
        assert_eq!(properties[SECURITY_PROTOCOL], "SASL_SSL");
        assert_eq!(properties["client.rack"], "a", "the job's properties stay");
    }

    #[test]
    fn the_jobs_security_protocol_wins_and_no_secret_means_its_properties() {
        let mut spec = kafka(Some(credentials(Some(SaslMechanism::Plain), None)));
        spec.properties
            .insert(SECURITY_PROTOCOL.into(), "SASL_SSL".into());
        let secret = data(&[("username", "u"), ("password", "p")]);
        let properties = client_properties(&spec, Some(&secret)).unwrap();
        assert_eq!(properties[SECURITY_PROTOCOL], "SASL_SSL");
        let plain = kafka(None);
        assert_eq!(
            client_properties(&plain, None).unwrap(),
            plain.properties,
            "no Secret: the job's properties as they are"
        );
    }

    #[test]
    fn a_missing_key_is_named_without_any_secret_value() {
        let spec = kafka(Some(credentials(Some(SaslMechanism::Plain), None)));
        let secret = data(&[("username", "u"), ("pass", "hunter2")]);
        let error = client_properties(&spec, Some(&secret)).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("\"password\""), "{message}");
        assert!(message.contains("kafka-login"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
