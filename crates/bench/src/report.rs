//! What a run found: the JSON object (stable field names) and the human
//! table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::Histogram;

/// Allocation setup: all allocations created concurrently, each with its
/// 401 round trip, CreatePermission and ChannelBind.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Setup {
    pub created: u64,
    pub failed: u64,
    pub seconds: f64,
    pub per_second: f64,
}

/// Round-trip latency in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Rtt {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Rtt {
    /// From a histogram of nanoseconds.
    #[must_use]
    pub fn from_ns(h: &Histogram) -> Self {
        let us = |ns: u64| ns.div_ceil(1000);
        Self {
            p50: us(h.quantile(0.5)),
            p99: us(h.quantile(0.99)),
            p999: us(h.quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The traffic of a measured window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Traffic {
    /// Allocations times the rate of each.
    pub target_pps: f64,
    /// Packets the clients actually sent, per second.
    pub offered_pps: f64,
    /// Echoes the clients received, per second.
    pub delivered_pps: f64,
    pub sent: u64,
    pub received: u64,
    /// Packets the echo peers received (the first relayed leg).
    pub peer_received: u64,
    pub loss_pct: f64,
    /// Packets the server relayed: to the peers and back to the clients.
    pub relayed_packets: u64,
    pub rtt_us: Rtt,
    /// The generator offered less than 95 % of the target.
    pub generator_limited: bool,
}

impl Traffic {
    /// From the counts of a window of `seconds` at `target_pps`.
    #[must_use]
    pub fn new(
        target_pps: f64,
        seconds: f64,
        sent: u64,
        received: u64,
        peer_received: u64,
        rtt: &Histogram,
    ) -> Self {
        let per_s = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let offered_pps = per_s(sent);
        let loss_pct = if sent == 0 {
            0.0
        } else {
            100.0 * sent.saturating_sub(received) as f64 / sent as f64
        };
        Self {
            target_pps,
            offered_pps: round(offered_pps, 1),
            delivered_pps: round(per_s(received), 1),
            sent,
            received,
            peer_received,
            loss_pct: round(loss_pct, 3),
            relayed_packets: peer_received + received,
            rtt_us: Rtt::from_ns(rtt),
            generator_limited: target_pps > 0.0 && offered_pps < 0.95 * target_pps,
        }
    }
}

/// The server process, with `--server-pid`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ServerProcess {
    pub pid: u32,
    /// CPU seconds (user + system) over the measured window.
    pub cpu_s: f64,
    pub cpu_us_per_relayed_packet: f64,
    /// RSS before the allocations were made, and after.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub peak_rss_kib: u64,
    /// (RSS after setup - before) / allocations.
    pub rss_per_allocation_bytes: i64,
}

/// `--churn`: allocations created and deleted.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Churn {
    pub created: u64,
    pub deleted: u64,
    pub failed: u64,
    pub seconds: f64,
    pub per_second: f64,
}

/// One step of `--saturate`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Step {
    /// Packets per second per allocation in this step.
    pub rate_pps: f64,
    #[serde(flatten)]
    pub traffic: Traffic,
    pub server_process: Option<ServerProcess>,
    /// The generator's own CPU seconds over the step's window.
    pub generator_cpu_s: f64,
}

/// Everything a run reports.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub server: String,
    pub transport: &'static str,
    pub allocations: usize,
    pub rate_pps: u32,
    pub size: usize,
    pub duration_s: f64,
    pub threads: usize,
    pub setup: Setup,
    /// The measured window; with `--saturate`, the best step's.
    #[serde(flatten)]
    pub traffic: Traffic,
    pub server_process: Option<ServerProcess>,
    pub churn: Option<Churn>,
    pub steps: Option<Vec<Step>>,
    /// With `--saturate`: the index in `steps` of the best step (highest
    /// delivered rate under 1 % loss), if any.
    pub best_step: Option<usize>,
    /// The generator's own CPU seconds over the measured window(s).
    pub generator_cpu_s: f64,
    /// For TLS: whether the server's certificate was verified (`--ca`);
    /// without it any certificate is accepted.
    pub tls_verified: Option<bool>,
}

/// Rounds to `digits` decimals, for numbers a person reads.
#[must_use]
pub(crate) fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

impl Report {
    /// The report as one line of JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a table for a person.
    #[must_use]
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "turnpike bench: {} over {}, {} allocation(s), {} thread(s)",
            self.server, self.transport, self.allocations, self.threads
        );
        if self.tls_verified == Some(false) {
            let _ = writeln!(
                o,
                "  tls: certificate NOT verified (any certificate accepted; give --ca to verify)"
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                o,
                "churn      {} created, {} deleted, {} failed in {:.2} s: {:.1} allocations/s",
                c.created, c.deleted, c.failed, c.seconds, c.per_second
            );
        } else {
            let s = &self.setup;
            let _ = writeln!(
                o,
                "setup      {} created, {} failed in {:.3} s: {:.1} allocations/s",
                s.created, s.failed, s.seconds, s.per_second
            );
        }
        if let Some(steps) = &self.steps {
            let _ = writeln!(
                o,
                "steps      {:>10} {:>12} {:>12} {:>12} {:>8} {:>8} {:>8}",
                "pps/alloc", "target/s", "offered/s", "delivered/s", "loss %", "p50 us", "p99 us"
            );
            for (i, s) in steps.iter().enumerate() {
                let mark = if Some(i) == self.best_step { "*" } else { " " };
                let t = &s.traffic;
                let _ = writeln!(
                    o,
                    "         {mark} {:>10.1} {:>12.0} {:>12.0} {:>12.0} {:>8.3} {:>8} {:>8}{}",
                    s.rate_pps,
                    t.target_pps,
                    t.offered_pps,
                    t.delivered_pps,
                    t.loss_pct,
                    t.rtt_us.p50,
                    t.rtt_us.p99,
                    if t.generator_limited {
                        "  generator-limited"
                    } else {
                        ""
                    }
                );
            }
            match self.best_step {
                Some(_) => {
                    let _ = writeln!(o, "best step (*) below:");
                }
                None => {
                    let _ = writeln!(o, "no step stayed under 1 % loss; the first step below:");
                }
            }
        }
        if self.churn.is_none() {
            let t = &self.traffic;
            let rate = self
                .steps
                .as_ref()
                .and_then(|s| s.get(self.best_step.unwrap_or(0)))
                .map_or(f64::from(self.rate_pps), |s| s.rate_pps);
            let _ = writeln!(
                o,
                "traffic    {rate} pps/allocation, {} bytes, {:.1} s measured",
                self.size, self.duration_s
            );
            let _ = writeln!(
                o,
                "  offered   {:>12.1} pkt/s (target {:.1}){}",
                t.offered_pps,
                t.target_pps,
                if t.generator_limited {
                    "  GENERATOR-LIMITED: the generator could not offer 95 % of the target"
                } else {
                    ""
                }
            );
            let _ = writeln!(o, "  delivered {:>12.1} pkt/s", t.delivered_pps);
            let _ = writeln!(
                o,
                "  sent {}  received {}  peer received {}  loss {:.3} %",
                t.sent, t.received, t.peer_received, t.loss_pct
            );
            let _ = writeln!(o, "  relayed by the server: {} packets", t.relayed_packets);
            let _ = writeln!(
                o,
                "  rtt us    p50 {}  p99 {}  p99.9 {}  max {}",
                t.rtt_us.p50, t.rtt_us.p99, t.rtt_us.p999, t.rtt_us.max
            );
        }
        if let Some(p) = &self.server_process {
            let _ = writeln!(
                o,
                "server     pid {}: {:.2} cpu s, {:.2} cpu us per relayed packet",
                p.pid, p.cpu_s, p.cpu_us_per_relayed_packet
            );
            let _ = writeln!(
                o,
                "  rss {} KiB before, {} KiB after setup, peak {} KiB; {} bytes per allocation",
                p.rss_before_kib, p.rss_after_kib, p.peak_rss_kib, p.rss_per_allocation_bytes
            );
        }
        let _ = writeln!(o, "generator  {:.2} cpu s", self.generator_cpu_s);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_shape() {
        let mut h = Histogram::new();
        h.record(80_000);
        let r = Report {
            server: "127.0.0.1:3478".into(),
            transport: "udp",
            allocations: 1000,
            rate_pps: 50,
            size: 160,
            duration_s: 10.0,
            threads: 2,
            setup: Setup {
                created: 1000,
                failed: 0,
                seconds: 0.41,
                per_second: 2439.0,
            },
            traffic: Traffic::new(50_000.0, 10.0, 499_980, 499_900, 499_950, &h),
            server_process: None,
            churn: None,
            steps: None,
            best_step: None,
            generator_cpu_s: 1.0,
            tls_verified: None,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "server",
                "transport",
                "allocations",
                "rate_pps",
                "size",
                "duration_s",
                "threads",
                "setup",
                "target_pps",
                "offered_pps",
                "delivered_pps",
                "sent",
                "received",
                "peer_received",
                "loss_pct",
                "relayed_packets",
                "rtt_us",
                "generator_limited",
                "server_process",
                "churn",
                "steps",
                "best_step",
                "generator_cpu_s",
                "tls_verified"
            ]
        );
        assert_eq!(v["setup"]["per_second"], 2439.0);
        assert_eq!(v["duration_s"], 10.0);
        assert_eq!(v["offered_pps"], 49998.0);
        assert_eq!(v["delivered_pps"], 49990.0);
        assert_eq!(v["loss_pct"], 0.016);
        assert_eq!(v["relayed_packets"], 999_850);
        assert_eq!(v["generator_limited"], false);
        assert!(v["server_process"].is_null() && v["churn"].is_null() && v["steps"].is_null());
        let rtt = &v["rtt_us"];
        for k in ["p50", "p99", "p999", "max"] {
            assert!(rtt[k].as_u64().unwrap() >= 80, "{k}");
        }

        let with = Report {
            server_process: Some(ServerProcess {
                pid: 1,
                ..ServerProcess::default()
            }),
            churn: Some(Churn::default()),
            steps: Some(vec![Step::default()]),
            ..r
        };
        let v: serde_json::Value = serde_json::from_str(&with.to_json()).unwrap();
        let sp: Vec<&str> = v["server_process"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            sp,
            [
                "pid",
                "cpu_s",
                "cpu_us_per_relayed_packet",
                "rss_before_kib",
                "rss_after_kib",
                "peak_rss_kib",
                "rss_per_allocation_bytes"
            ]
        );
        let churn: Vec<&str> = v["churn"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            churn,
            ["created", "deleted", "failed", "seconds", "per_second"]
        );
        let step = &v["steps"][0];
        for k in [
            "rate_pps",
            "target_pps",
            "offered_pps",
            "loss_pct",
            "rtt_us",
            "generator_limited",
        ] {
            assert!(step.get(k).is_some(), "{k}");
        }
        assert!(!with.to_table().is_empty());
    }

    #[test]
    fn a_generator_that_falls_short_says_so() {
        let h = Histogram::new();
        let t = Traffic::new(1000.0, 1.0, 940, 940, 940, &h);
        assert!(t.generator_limited);
        let t = Traffic::new(1000.0, 1.0, 960, 900, 950, &h);
        assert!(!t.generator_limited);
        assert_eq!(t.loss_pct, 6.25);
        let idle = Traffic::new(0.0, 1.0, 0, 0, 0, &h);
        assert!(!idle.generator_limited);
        assert_eq!(idle.loss_pct, 0.0);
    }
}
