//! An event as a Kafka record, in the binary content mode of the CloudEvents Kafka protocol
//! binding: the data is the record's value (`content-type: application/json`), every context
//! attribute is a `ce_`-prefixed header, and the partition key is the record's key.
//!
//! Extension attributes beyond the specification's own: `partitionkey` (the Partitioning
//! extension), `traceparent` (Distributed Tracing), `sequence` (the event's position in Tally's
//! log, zero-padded so that it sorts as text), and Tally's `tenantid`, `correlationid` and
//! `causationid`.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use tally_domain::ids::{EventId, TenantId};
use tally_store::LogEvent;
use tally_store::log::partition_of;

/// The CloudEvents specification version of every event.
pub const SPEC_VERSION: &str = "1.0";
/// The media type of every event's data.
pub const CONTENT_TYPE: &str = "application/json";

/// A record's parts before they become an rdkafka record: its key, value and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Record {
    /// The headers as rdkafka sends them.
    pub fn kafka_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(
            OwnedHeaders::new_with_capacity(self.headers.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        )
    }
}

/// Why a record is not one of Tally's events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {name} is not valid: {value:?}")]
    Invalid { name: &'static str, value: String },
    #[error("the record has no key")]
    NoKey,
    #[error("the value is not JSON: {0}")]
    Data(String),
}

/// The record of `event`.
pub fn encode(event: &LogEvent) -> Record {
    let mut headers = vec![
        ("ce_specversion", SPEC_VERSION.to_owned()),
        ("ce_id", event.id.to_string()),
        ("ce_source", event.source.clone()),
        ("ce_type", event.event_type.clone()),
        ("ce_subject", event.subject.clone()),
        (
            "ce_time",
            event.time.to_rfc3339_opts(SecondsFormat::Micros, true),
        ),
        ("content-type", CONTENT_TYPE.to_owned()),
        ("ce_partitionkey", event.partition_key.clone()),
        ("ce_sequence", format!("{:020}", event.position)),
        ("ce_tenantid", event.tenant_id.to_string()),
    ];
    let optional = [
        ("ce_correlationid", &event.correlation_id),
        ("ce_causationid", &event.causation_id),
        ("ce_traceparent", &event.traceparent),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            headers.push((name, value.clone()));
        }
    }
    Record {
        key: event.partition_key.clone(),
        value: event.data.get().as_bytes().to_vec(),
        headers,
    }
}

/// The event carried by a record with `key`, `value` and `headers`. `log_partitions` is the
/// embedded log's partition count, from which the event's log partition follows.
pub fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    log_partitions: u32,
) -> Result<LogEvent, Malformed> {
    let header = |name: &'static str| -> Result<Option<String>, Malformed> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| {
                String::from_utf8(v.clone()).map_err(|_| Malformed::Invalid {
                    name,
                    value: String::from_utf8_lossy(v).into_owned(),
                })
            })
            .transpose()
    };
    let required = |name: &'static str| header(name)?.ok_or(Malformed::Missing(name));
    let parsed = |name: &'static str| -> Result<_, Malformed> {
        let value = required(name)?;
        Ok((name, value))
    };
    let invalid = |(name, value): (&'static str, String)| Malformed::Invalid { name, value };

    if required("ce_specversion")? != SPEC_VERSION {
        return Err(invalid(parsed("ce_specversion")?));
    }
    let key = key
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .ok_or(Malformed::NoKey)?;
    let (name, id) = parsed("ce_id")?;
    let id: EventId = id.parse().map_err(|_| invalid((name, id)))?;
    let (name, tenant) = parsed("ce_tenantid")?;
    let tenant_id: TenantId = tenant.parse().map_err(|_| invalid((name, tenant)))?;
    let (name, time) = parsed("ce_time")?;
    let time = DateTime::parse_from_rfc3339(&time)
        .map_err(|_| invalid((name, time)))?
        .with_timezone(&Utc);
    let (name, sequence) = parsed("ce_sequence")?;
    let position: i64 = sequence.parse().map_err(|_| invalid((name, sequence)))?;
    let data =
        serde_json::from_slice::<Box<serde_json::value::RawValue>>(value.unwrap_or_default())
            .map_err(|e| Malformed::Data(e.to_string()))?
            .into();
    Ok(LogEvent {
        position,
        id,
        tenant_id,
        event_type: required("ce_type")?,
        source: required("ce_source")?,
        subject: required("ce_subject")?,
        partition: partition_of(&key, log_partitions),
        partition_key: key,
        time,
        data,
        correlation_id: header("ce_correlationid")?,
        causation_id: header("ce_causationid")?,
        traceparent: header("ce_traceparent")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tally_store::EventData;

    fn event() -> LogEvent {
        LogEvent {
            position: 42,
            id: EventId::generate(),
            tenant_id: TenantId::generate(),
            event_type: "tally.order.placed.v1".to_owned(),
            source: "/tally/order".to_owned(),
            subject: "order-1".to_owned(),
            partition_key: "order-1".to_owned(),
            partition: partition_of("order-1", 8),
            time: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap_or_default(),
            data: EventData::from_json(
                json!({"total": {"minor": 1999, "currency": "USD"}}).to_string(),
            )
            .expect("JSON"),
            correlation_id: Some("req-1".to_owned()),
            causation_id: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        }
    }

    fn owned(record: &Record) -> Vec<(String, Vec<u8>)> {
        record
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone().into_bytes()))
            .collect()
    }

    #[test]
    fn an_event_survives_the_round_trip() {
        let event = event();
        let record = encode(&event);
        assert_eq!(record.key, "order-1");
        let back = decode(
            Some(record.key.as_bytes()),
            Some(&record.value),
            &owned(&record),
            8,
        );
        assert_eq!(back, Ok(event));
    }

    #[test]
    fn sequence_sorts_as_text() {
        let mut early = event();
        early.position = 9;
        let mut late = event();
        late.position = 10;
        let sequence = |e: &LogEvent| {
            encode(e)
                .headers
                .into_iter()
                .find(|(n, _)| *n == "ce_sequence")
                .map(|(_, v)| v)
        };
        assert!(sequence(&early) < sequence(&late));
    }

    #[test]
    fn records_that_are_not_events_are_named() {
        let record = encode(&event());
        let mut headers = owned(&record);
        headers.retain(|(n, _)| n != "ce_id");
        assert_eq!(
            decode(Some(b"k"), Some(&record.value), &headers, 8),
            Err(Malformed::Missing("ce_id"))
        );
        assert_eq!(
            decode(None, Some(&record.value), &owned(&record), 8),
            Err(Malformed::NoKey)
        );
        assert!(matches!(
            decode(Some(b"k"), Some(b"{not json"), &owned(&record), 8),
            Err(Malformed::Data(_))
        ));
    }
}
