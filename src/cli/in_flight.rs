//! `status`'s view of this host's daemon: its in-flight limit and the inputs it was sized from,
//! read from the daemon's own `/metrics` (the limit lives in the process, not in the table).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use crate::config::Settings;

/// The daemon's in-flight sizing (docs/operations.md, "Connections").
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    /// Where it was read.
    pub metrics: String,
    pub limit: i64,
    pub busy: i64,
    pub rate_per_second: f64,
    pub latency_p95_seconds: f64,
    pub connection_waits: f64,
}

/// The daemon's metrics address as this configuration sets it: `metrics.listen`, else
/// `http.listen`; an unspecified IP is asked on loopback.
pub fn metrics_address(settings: &Settings) -> Option<SocketAddr> {
    let mut addr = settings
        .metrics_listen()
        .or_else(|| settings.http_listen())?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Some(addr)
}

/// Reads the sizing from the daemon's `/metrics`; `None` if no daemon answers there.
pub async fn scrape(settings: &Settings) -> Option<InFlight> {
    let addr = metrics_address(settings)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    parse(&text, addr)
}

/// The gauges of a Prometheus text exposition.
pub fn parse(text: &str, addr: SocketAddr) -> Option<InFlight> {
    let value = |name: &str| {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
    };
    Some(InFlight {
        metrics: addr.to_string(),
        limit: value("outbound_runner_in_flight_limit")? as i64,
        busy: value("outbound_runner_workers_busy").unwrap_or(0.0) as i64,
        rate_per_second: value("outbound_runner_in_flight_rate_per_second").unwrap_or(0.0),
        latency_p95_seconds: value("outbound_runner_in_flight_latency_p95_seconds").unwrap_or(0.0),
        connection_waits: value("outbound_runner_db_connection_waits_total").unwrap_or(0.0),
    })
}

/// The lines `status` prints.
pub fn render(i: &InFlight) -> String {
    format!(
        "\nIn flight (the daemon at {})\n  {} jobs of a limit of {}, sized from {}/s × p95 latency {:.3} s \
         unless runner.workers pins it\n  {} waits for a database connection so far\n",
        i.metrics, i.busy, i.limit, i.rate_per_second, i.latency_p95_seconds, i.connection_waits
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sizing_from_the_exposition() {
        let m = crate::metrics::Metrics::new();
        m.in_flight_limit.set(300);
        m.in_flight_rate.set(1000.0);
        m.in_flight_latency.set(0.2);
        m.workers_busy.set(17);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let i = parse(&m.render(), addr).unwrap();
        assert_eq!((i.limit, i.busy), (300, 17));
        assert_eq!((i.rate_per_second, i.latency_p95_seconds), (1000.0, 0.2));
        assert!(render(&i).contains("17 jobs of a limit of 300"));
        assert_eq!(parse("", addr), None);
    }
}
