//! Queue triggers: a broker subscription that delivers each message to a function.

use serde::{Deserialize, Serialize};

use crate::{ModelError, Name, Namespace};

/// Retries after the first attempt when `--max-retries` is not given.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// The most retries a trigger may ask for (each waits up to the backoff cap).
pub const MAX_RETRIES_LIMIT: u32 = 100;
/// The most messages one trigger works on at once.
pub const MAX_CONCURRENCY: u32 = 256;

/// The broker a trigger consumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MqKind {
    /// NATS JetStream: `--topic` is a subject, consumed by a durable consumer.
    Nats,
    /// MQTT 5: `--topic` is a topic filter, QoS 1, persistent session.
    Mqtt,
    /// AMQP 0.9.1 (RabbitMQ): `--topic` is a durable queue.
    Amqp,
    /// Redis Streams: `--topic` is a stream key, read through a consumer group.
    Redis,
}

impl MqKind {
    pub const ALL: [MqKind; 4] = [Self::Nats, Self::Mqtt, Self::Amqp, Self::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Mqtt => "mqtt",
            Self::Amqp => "amqp",
            Self::Redis => "redis",
        }
    }

    /// URL schemes a broker of this kind is reached with.
    pub fn schemes(self) -> &'static [&'static str] {
        match self {
            Self::Nats => &["nats", "tls"],
            Self::Mqtt => &["mqtt", "mqtts", "tcp"],
            Self::Amqp => &["amqp", "amqps"],
            Self::Redis => &["redis", "rediss"],
        }
    }

    pub fn parse(value: &str) -> Result<Self, ModelError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == value.trim())
            .ok_or_else(|| ModelError::OutOfRange {
                field: "kind",
                reason: format!("unknown broker kind {value:?}; use nats, mqtt, amqp or redis"),
            })
    }
}

/// A broker URL. The whole URL (credentials included) is kept to connect; everything shown to
/// users goes through [`BrokerUrl::redacted`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BrokerUrl(String);

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BrokerUrl({:?})", self.redacted())
    }
}

impl BrokerUrl {
    pub fn parse(kind: MqKind, value: &str) -> Result<Self, ModelError> {
        let value = value.trim();
        let invalid = |reason: String| ModelError::OutOfRange {
            field: "url",
            reason: format!("{reason} (in {:?})", redact_url(value)),
        };
        let (scheme, rest) = value
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://host:port".into()))?;
        if !kind.schemes().contains(&scheme) {
            return Err(invalid(format!(
                "a {} trigger needs a {} URL",
                kind.as_str(),
                kind.schemes().join(" or ")
            )));
        }
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        if host_port.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("the URL needs a host and no spaces".into()));
        }
        Ok(Self(value.to_owned()))
    }

    /// The URL with its credentials, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password or token replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// `text` (an error message from a client library, say) with this URL's secret removed.
    pub fn scrub(&self, text: &str) -> String {
        match self.secret() {
            Some(secret) if !secret.is_empty() => text.replace(secret, "***"),
            _ => text.to_owned(),
        }
    }

    fn secret(&self) -> Option<&str> {
        let (_, rest) = self.0.split_once("://")?;
        let authority = rest.split(['/', '?']).next()?;
        let (userinfo, _) = authority.rsplit_once('@')?;
        Some(
            userinfo
                .split_once(':')
                .map_or(userinfo, |(_, password)| password),
        )
    }
}

fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        None => url.to_owned(),
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
    }
}

/// What a user writes to create a queue trigger: the API's JSON body and, through clap, the
/// flags of `gust mqt create`, defined once.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct MqTriggerConfig {
    /// Trigger name; generated and printed when omitted
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The function to invoke
    #[cfg_attr(feature = "cli", arg(long = "fn"))]
    pub function: String,
    /// The broker
    #[cfg_attr(
        feature = "cli",
        arg(long, value_parser = ["nats", "mqtt", "amqp", "redis"])
    )]
    pub kind: String,
    /// Broker URL, e.g. nats://127.0.0.1:4222, mqtt://user:pass@host:1883,
    /// amqp://user:pass@host:5672/%2f, redis://127.0.0.1:6379 (credentials are never shown)
    #[cfg_attr(feature = "cli", arg(long))]
    pub url: String,
    /// nats: a subject; mqtt: a topic filter; amqp: a durable queue; redis: a stream key
    #[cfg_attr(feature = "cli", arg(long))]
    pub topic: String,
    /// Where the function's responses are published
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_topic: Option<String>,
    /// Where messages go after their last failed attempt (else the dead-letter store)
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_topic: Option<String>,
    /// Attempts after the first one [default: 3]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Messages worked on at once; 1 keeps their order [default: 1]
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Content type the function receives (else what the message says)
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The app the trigger belongs to, as `gust apply` records it
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl MqTriggerConfig {
    pub fn validate(
        &self,
        namespace: Namespace,
        generated_name: Name,
        now_ms: u64,
    ) -> Result<MqTrigger, ModelError> {
        let name = match &self.name {
            Some(name) => Name::parse("trigger", name)?,
            None => generated_name,
        };
        let kind = MqKind::parse(&self.kind)?;
        let url = BrokerUrl::parse(kind, &self.url)?;
        let topic = parse_topic(kind, "topic", &self.topic, true)?;
        let optional = |field, value: &Option<String>| {
            value
                .as_deref()
                .map(|t| parse_topic(kind, field, t, false))
                .transpose()
        };
        let resp_topic = optional("resp_topic", &self.resp_topic)?;
        let error_topic = optional("error_topic", &self.error_topic)?;
        for (field, other) in [("resp_topic", &resp_topic), ("error_topic", &error_topic)] {
            if other.as_deref() == Some(topic.as_str()) {
                return Err(ModelError::OutOfRange {
                    field,
                    reason:
                        "must differ from the topic the trigger consumes (it would feed itself)"
                            .into(),
                });
            }
        }
        let max_retries = self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries > MAX_RETRIES_LIMIT {
            return Err(ModelError::OutOfRange {
                field: "max_retries",
                reason: format!("{max_retries} is more than {MAX_RETRIES_LIMIT}"),
            });
        }
        let concurrency = self.concurrency.unwrap_or(1);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(ModelError::OutOfRange {
                field: "concurrency",
                reason: format!("{concurrency} is not between 1 and {MAX_CONCURRENCY}"),
            });
        }
        let content_type = match self.content_type.as_deref().map(str::trim) {
            None => None,
            Some(ct) if ct.bytes().all(|b| (0x20..0x7f).contains(&b)) && ct.contains('/') => {
                Some(ct.to_owned())
            }
            Some(ct) => {
                return Err(ModelError::OutOfRange {
                    field: "content_type",
                    reason: format!("{ct:?} is not a media type such as application/json"),
                });
            }
        };
        Ok(MqTrigger {
            namespace,
            name,
            function: Name::parse("function", &self.function)?,
            kind,
            url,
            topic,
            resp_topic,
            error_topic,
            max_retries,
            concurrency,
            content_type,
            created_at_ms: now_ms,
            app: Name::parse_app(self.app.as_deref())?,
        })
    }
}

/// Checks a topic, subject, queue or stream name for what its broker accepts.
fn parse_topic(
    kind: MqKind,
    field: &'static str,
    value: &str,
    consumed: bool,
) -> Result<String, ModelError> {
    let invalid = |reason: &str| ModelError::OutOfRange {
        field,
        reason: format!("{value:?} {reason}"),
    };
    if value.is_empty() || value.len() > 255 {
        return Err(invalid("must have 1 to 255 characters"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("must not contain spaces or control characters"));
    }
    match kind {
        MqKind::Nats => {
            if value.split('.').any(str::is_empty) {
                return Err(invalid("is not a NATS subject (empty token)"));
            }
            if !consumed && value.contains(['*', '>']) {
                return Err(invalid("is published to, so it cannot hold wildcards"));
            }
        }
        MqKind::Mqtt => {
            if value.starts_with('$') {
                return Err(invalid("is a broker-reserved topic ($...)"));
            }
            if !consumed && value.contains(['+', '#']) {
                return Err(invalid("is published to, so it cannot hold wildcards"));
            }
            let levels: Vec<&str> = value.split('/').collect();
            for (i, level) in levels.iter().enumerate() {
                let misplaced_hash = level.contains('#') && (*level != "#" || i + 1 < levels.len());
                if misplaced_hash || (level.contains('+') && *level != "+") {
                    return Err(invalid("is not an MQTT topic filter"));
                }
            }
        }
        MqKind::Amqp | MqKind::Redis => {}
    }
    Ok(value.to_owned())
}

/// A validated queue trigger.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MqTrigger {
    pub namespace: Namespace,
    pub name: Name,
    pub function: Name,
    pub kind: MqKind,
    pub url: BrokerUrl,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_topic: Option<String>,
    pub max_retries: u32,
    pub concurrency: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub created_at_ms: u64,
    /// The app (`gust apply`) this belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Name>,
}

impl MqTrigger {
    /// `gust:<namespace>/mqt/<name>`, the CloudEvents `source` of its messages.
    pub fn event_source(&self) -> String {
        format!("gust:{}/mqt/{}", self.namespace, self.name)
    }

    /// `dev.gust.mqt.<kind>`, the CloudEvents `type` of its messages.
    pub fn event_type(&self) -> String {
        format!("dev.gust.mqt.{}", self.kind.as_str())
    }

    /// A name for this trigger at the broker (durable consumer, client id, consumer group):
    /// stable across restarts, different for every trigger.
    pub fn broker_identity(&self) -> String {
        format!("gust-{}-{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: &str, url: &str, topic: &str) -> MqTriggerConfig {
        MqTriggerConfig {
            name: Some("orders".into()),
            function: "work".into(),
            kind: kind.into(),
            url: url.into(),
            topic: topic.into(),
            resp_topic: None,
            error_topic: None,
            max_retries: None,
            concurrency: None,
            content_type: None,
            app: None,
        }
    }

    fn validate(config: &MqTriggerConfig) -> Result<MqTrigger, ModelError> {
        config.validate(
            Namespace::default(),
            Name::parse("trigger", "x").unwrap(),
            0,
        )
    }

    #[test]
    fn credentials_never_show() {
        let url = BrokerUrl::parse(MqKind::Amqp, "amqp://app:s3cret@mq:5672/%2f").unwrap();
        assert_eq!(url.redacted(), "amqp://app:***@mq:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            url.scrub("auth failed for s3cret at mq"),
            "auth failed for *** at mq"
        );
        let token = BrokerUrl::parse(MqKind::Nats, "nats://t0ken@localhost:4222").unwrap();
        assert_eq!(token.redacted(), "nats://***@localhost:4222");
        let redis = BrokerUrl::parse(MqKind::Redis, "redis://:pw@127.0.0.1:6379/0").unwrap();
        assert_eq!(redis.redacted(), "redis://:***@127.0.0.1:6379/0");
        let plain = BrokerUrl::parse(MqKind::Mqtt, "mqtt://127.0.0.1:1883").unwrap();
        assert_eq!(plain.redacted(), "mqtt://127.0.0.1:1883");
    }

    #[test]
    fn defaults_and_limits() {
        let trigger = validate(&config("nats", "nats://127.0.0.1:4222", "orders.>")).unwrap();
        assert_eq!(trigger.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(trigger.concurrency, 1);
        assert_eq!(trigger.event_source(), "gust:default/mqt/orders");
        assert_eq!(
            trigger.event_type(),
            format!("dev.gust.mqt.{}", trigger.kind.as_str())
        );
        let mut bad = config("nats", "nats://127.0.0.1:4222", "orders");
        bad.concurrency = Some(0);
        assert!(
            validate(&bad)
                .unwrap_err()
                .to_string()
                .contains("concurrency")
        );
        bad.concurrency = None;
        bad.max_retries = Some(1000);
        assert!(
            validate(&bad)
                .unwrap_err()
                .to_string()
                .contains("max_retries")
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (config("kafka", "nats://h:1", "t"), "kind"),
            (config("nats", "mqtt://h:1", "t"), "url"),
            (config("nats", "nats://", "t"), "url"),
            (config("nats", "nats://h:1", "a..b"), "topic"),
            (config("mqtt", "mqtt://h:1", "a/#/b"), "topic"),
            (config("mqtt", "mqtt://h:1", "$SYS/x"), "topic"),
            (config("redis", "redis://h:1", "has space"), "topic"),
        ];
        for (config, field) in cases {
            let error = validate(&config).unwrap_err().to_string();
            assert!(error.contains(field), "{error} should name {field}");
        }
        let mut wildcard_errors = config("mqtt", "mqtt://h:1", "in/+");
        wildcard_errors.error_topic = Some("errors/#".into());
        assert!(
            validate(&wildcard_errors)
                .unwrap_err()
                .to_string()
                .contains("error_topic")
        );
        let mut loop_back = config("redis", "redis://h:1", "in");
        loop_back.resp_topic = Some("in".into());
        assert!(
            validate(&loop_back)
                .unwrap_err()
                .to_string()
                .contains("resp_topic")
        );
        let mut content_type = config("redis", "redis://h:1", "in");
        content_type.content_type = Some("json".into());
        assert!(
            validate(&content_type)
                .unwrap_err()
                .to_string()
                .contains("content_type")
        );
        let secret = config("amqp", "amqps://u:hunter2@h", "q");
        let mut bad_kind = secret.clone();
        bad_kind.kind = "redis".into();
        assert!(
            !validate(&bad_kind)
                .unwrap_err()
                .to_string()
                .contains("hunter2")
        );
    }
}
