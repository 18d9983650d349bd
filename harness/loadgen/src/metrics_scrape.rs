//! Event lag from the server's Prometheus text at `GET /metrics`, read once a second while the
//! run lasts and once at its end: how many outbox rows the relay has not yet put in the log
//! (`tally_relay_lag_events`) and how far each consumer group trails the log
//! (`tally_consumer_lag_events{group=…}`). A server without these gauges is reported as such,
//! never as a failed run.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::client::Api;

pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
pub const RELAY_LAG_GAUGE: &str = "tally_relay_lag_events";
pub const CONSUMER_LAG_GAUGE: &str = "tally_consumer_lag_events";
/// The label that names a consumer group.
pub const GROUP_LABEL: &str = "group";

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`; comments, blank lines and lines that do not parse are skipped, so
/// that one odd line cannot hide the gauges.
pub fn parse_text(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after_labels) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after_labels;
    }
    // A value, then an optional timestamp.
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `name="value",…}` and returns the labels and what follows the closing brace.
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    // Each turn consumes at least one byte, so the input's length bounds the loop.
    for _ in 0..=rest.len() {
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after_name) = rest.split_once('=')?;
        let quoted = after_name.trim_start().strip_prefix('"')?;
        let (value, after_value) = unquote(quoted)?;
        labels.push((name.trim().to_owned(), value));
        rest = after_value;
    }
    None
}

/// Reads an escaped label value up to its closing quote.
fn unquote(quoted: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &quoted[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

fn parse_value(raw: &str) -> Option<f64> {
    match raw {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => raw.parse().ok(),
    }
}

/// The readings of one gauge over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaugeTrack {
    pub max: f64,
    /// The most recent reading: the final scrape's, unless the gauge vanished before it.
    pub last: f64,
    pub readings: u64,
}

impl GaugeTrack {
    fn observe(track: &mut Option<GaugeTrack>, value: f64) {
        *track = Some(match *track {
            None => GaugeTrack {
                max: value,
                last: value,
                readings: 1,
            },
            Some(seen) => GaugeTrack {
                max: seen.max.max(value),
                last: value,
                readings: seen.readings + 1,
            },
        });
    }
}

/// What the scrapes of one run found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagTracker {
    /// `None` while the server has never exposed the gauge.
    pub relay: Option<GaugeTrack>,
    /// Per consumer group; empty while the server has never exposed the gauge.
    pub consumers: BTreeMap<String, GaugeTrack>,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub last_error: Option<String>,
}

impl LagTracker {
    /// Takes one scrape's samples. Series of one gauge (or of one group) that differ in other
    /// labels are summed: lag is a count of events.
    pub fn observe(&mut self, samples: &[Sample]) {
        self.scrapes_ok += 1;
        let mut relay: Option<f64> = None;
        let mut consumers: BTreeMap<String, f64> = BTreeMap::new();
        for sample in samples {
            if sample.name == RELAY_LAG_GAUGE {
                *relay.get_or_insert(0.0) += sample.value;
            } else if sample.name == CONSUMER_LAG_GAUGE {
                let group = sample.label(GROUP_LABEL).unwrap_or_default().to_owned();
                *consumers.entry(group).or_default() += sample.value;
            }
        }
        if let Some(value) = relay {
            GaugeTrack::observe(&mut self.relay, value);
        }
        for (group, value) in consumers {
            let mut track = self.consumers.get(&group).copied();
            GaugeTrack::observe(&mut track, value);
            if let Some(track) = track {
                self.consumers.insert(group, track);
            }
        }
    }

    async fn scrape(&mut self, api: &Api) {
        match api.metrics_text().await {
            Ok(text) => self.observe(&parse_text(&text)),
            Err(error) => {
                self.scrapes_failed += 1;
                self.last_error = Some(format!("{error:#}"));
            }
        }
    }
}

/// Scrapes every [`SCRAPE_INTERVAL`] until `stop` turns true (or its sender goes), then once
/// more for the final values.
pub async fn scrape_until(api: Api, mut stop: watch::Receiver<bool>) -> LagTracker {
    let mut tracker = LagTracker::default();
    let mut ticker = tokio::time::interval(SCRAPE_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    while !*stop.borrow() {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { break },
            _ = ticker.tick() => tracker.scrape(&api).await,
        }
    }
    tracker.scrape(&api).await;
    tracker
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP tally_relay_lag_events Outbox rows not yet in the log.
# TYPE tally_relay_lag_events gauge
tally_relay_lag_events 42
tally_consumer_lag_events{group="checkout"} 7
tally_consumer_lag_events{group="notifications",shard="1"} 3 1700000000000
tally_consumer_lag_events{shard="2", group="notifications"} 2
http_request_duration_seconds_bucket{method="POST",route="/v1/orders",status="201",le="+Inf"} 12
odd{label="a \"quoted\" \\ value, with {braces}"} NaN
not a sample line
"#;

    #[test]
    fn samples_are_read_with_labels_escapes_and_timestamps() {
        let samples = parse_text(TEXT);
        assert_eq!(samples.len(), 6, "{samples:?}");
        assert_eq!(samples[0].name, RELAY_LAG_GAUGE);
        assert_eq!(samples[0].value, 42.0);
        assert!(samples[0].labels.is_empty());
        assert_eq!(samples[2].label("group"), Some("notifications"));
        assert_eq!(samples[2].value, 3.0);
        assert_eq!(samples[4].label("le"), Some("+Inf"));
        assert_eq!(
            samples[5].label("label"),
            Some(r#"a "quoted" \ value, with {braces}"#)
        );
        assert!(samples[5].value.is_nan());
    }

    #[test]
    fn values_in_every_notation_parse() {
        for (raw, value) in [("1e3", 1000.0), ("-2.5", -2.5), ("+Inf", f64::INFINITY)] {
            let line = format!("g {raw}");
            assert_eq!(parse_text(&line)[0].value, value);
        }
        assert!(parse_text("g{unclosed=\"x} 1").is_empty());
        assert!(parse_text("g").is_empty());
    }

    #[test]
    fn lag_keeps_max_and_last_per_gauge_and_group() {
        let mut tracker = LagTracker::default();
        tracker.observe(&parse_text(TEXT));
        tracker.observe(&parse_text(
            "tally_relay_lag_events 5\ntally_consumer_lag_events{group=\"checkout\"} 9",
        ));
        let relay = tracker.relay.expect("relay lag");
        assert_eq!((relay.max, relay.last, relay.readings), (42.0, 5.0, 2));
        let checkout = tracker.consumers["checkout"];
        assert_eq!((checkout.max, checkout.last), (9.0, 9.0));
        let notifications = tracker.consumers["notifications"];
        assert_eq!((notifications.max, notifications.last), (5.0, 5.0));
        assert_eq!(notifications.readings, 1);
        assert_eq!(tracker.scrapes_ok, 2);
    }

    #[test]
    fn absent_gauges_stay_not_available() {
        let mut tracker = LagTracker::default();
        tracker.observe(&parse_text("http_requests_total 3\n"));
        assert_eq!(tracker.relay, None);
        assert!(tracker.consumers.is_empty());
        assert_eq!(tracker.scrapes_ok, 1);
    }
}
