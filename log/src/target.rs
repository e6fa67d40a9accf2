//! Which log a URL names, parsed and checked without touching anything, so a
//! bad `--log` fails before any file or connection is opened; and the URL as
//! it may be printed (credentials masked).

use crate::embedded::{EmbeddedLog, MAX_PARTITIONS};
use crate::kafka::{KafkaConfig, KafkaLog};
use crate::{Error, Log, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// A parsed log URL.
#[derive(Debug, Clone)]
pub enum LogTarget {
    /// `embedded://<dir>[?partitions=N]`.
    Embedded {
        dir: PathBuf,
        partitions: Option<u32>,
    },
    /// `kafka://host:port[,host:port][?...]`.
    Kafka(KafkaConfig),
}

impl LogTarget {
    /// Parses `url`; `client_options` are librdkafka properties for every
    /// Kafka client (checked: none may weaken delivery), `unsafe_options`
    /// the same without the check. Both are refused for the embedded log,
    /// which has no use for them.
    pub fn parse(
        url: &str,
        client_options: &[(String, String)],
        unsafe_options: &[(String, String)],
    ) -> Result<Self> {
        match url.split_once("://") {
            Some(("embedded", rest)) => {
                if let Some((name, _)) = client_options.iter().chain(unsafe_options).next() {
                    return Err(Error::invalid_url(
                        url,
                        format!("librdkafka option `{name}` given for an embedded log"),
                    ));
                }
                let (dir, partitions) = parse_embedded(url, rest)?;
                Ok(Self::Embedded { dir, partitions })
            }
            Some(("kafka", _)) => {
                let mut config = KafkaConfig::from_url(url)?;
                config.client_options.extend(client_options.iter().cloned());
                config.unsafe_options.extend(unsafe_options.iter().cloned());
                config.validate()?;
                Ok(Self::Kafka(config))
            }
            _ => Err(Error::UnsupportedUrl(redact_url(url))),
        }
    }

    /// Opens (creating if needed) the log.
    pub async fn open(self) -> Result<Arc<dyn Log>> {
        match self {
            Self::Embedded { dir, partitions } => {
                Ok(Arc::new(EmbeddedLog::open(&dir, partitions).await?))
            }
            Self::Kafka(config) => Ok(Arc::new(KafkaLog::open(config).await?)),
        }
    }
}

fn parse_embedded(url: &str, rest: &str) -> Result<(PathBuf, Option<u32>)> {
    let (dir, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut partitions = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("partitions", n)) => {
                partitions = Some(
                    n.parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_PARTITIONS).contains(n))
                        .ok_or_else(|| {
                            Error::invalid_url(
                                url,
                                format!("partitions must be 1 to {MAX_PARTITIONS}"),
                            )
                        })?,
                )
            }
            _ => {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                return Err(Error::invalid_url(
                    url,
                    format!("unknown parameter `{name}`"),
                ));
            }
        }
    }
    if dir.is_empty() {
        return Err(Error::invalid_url(url, "no directory given"));
    }
    Ok((PathBuf::from(dir), partitions))
}

/// Whether a URL parameter or librdkafka property holds a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential", "jaas"]
        .iter()
        .any(|s| name.contains(s))
}

/// `url` as it may appear in logs and errors: the values of parameters
/// that name a secret (`rdkafka.sasl.password=…`, `…ssl.key.password=…`)
/// and any password in the authority (`user:pass@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_string(),
    };
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_name(name) => format!("{name}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_survive_redaction() {
        let url = "kafka://u:hunter2@b1:9093,b2:9093?prefix=p.&rdkafka.sasl.password=hunter2&rdkafka.ssl.key.password=k3y&rdkafka.sasl.oauthbearer.client.secret=s3&rdkafka.linger.ms=5";
        let shown = redact_url(url);
        for secret in ["hunter2", "k3y", "s3&"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("prefix=p.") && shown.contains("rdkafka.linger.ms=5"));
        assert!(shown.starts_with("kafka://u:***@b1:9093,b2:9093?"));
        assert_eq!(redact_url("embedded://./data/log"), "embedded://./data/log");
    }

    #[test]
    fn errors_about_a_url_do_not_print_its_secrets() {
        let url = "kafka://h:1?rdkafka.sasl.password=hunter2&bogus=1";
        let error = LogTarget::parse(url, &[], &[]).unwrap_err().to_string();
        assert!(
            error.contains("bogus") && !error.contains("hunter2"),
            "{error}"
        );
        let error = LogTarget::parse("nats://x?token=hunter2", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn embedded_urls() {
        let LogTarget::Embedded { dir, partitions } =
            LogTarget::parse("embedded://./d?partitions=4", &[], &[]).unwrap()
        else {
            panic!("not embedded")
        };
        assert_eq!((dir, partitions), (PathBuf::from("./d"), Some(4)));
        for bad in [
            "embedded://",
            "embedded://d?partitions=0",
            "embedded://d?partitions=x",
            "embedded://d?color=red",
        ] {
            assert!(LogTarget::parse(bad, &[], &[]).is_err(), "{bad}");
        }
        let option = [("linger.ms".to_string(), "5".to_string())];
        assert!(LogTarget::parse("embedded://d", &option, &[]).is_err());
    }
}
