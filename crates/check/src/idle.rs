//! The UDP idle timeout: how long a NAT or firewall keeps a UDP mapping
//! open without traffic. Media on a path that goes quiet for longer (a
//! muted participant, a paused stream) is cut.
//!
//! Many sockets search at once, each for one interval of silence: it
//! first warms its mapping up with a few echo round trips over about
//! 2.5 s (a Linux conntrack flow that has seen replies and lived past 2 s
//! gets the longer "stream" timeout, which is what media sees; the replies
//! also give the responder's cookie), then asks the responder for a
//! `later` reply after its interval, and is silent. The reply arrives only
//! if the mapping outlived the silence. The intervals grow geometrically
//! (by 10 %, or more to keep the sockets within [`MAX_SOCKETS`]) from 2 s
//! to the longest asked, so the whole search takes about that longest
//! interval plus the warm-up and a grace for the reply to travel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};
use turnpike_probe::{self as wire, Kind, ReplyKind, Request};

use crate::net::{Failure, Step};

/// What the idle-timeout search found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct IdleReport {
    /// The longest silence (seconds) after which a reply still came.
    pub longest_kept_s: Option<f64>,
    /// The shortest silence (seconds) after which no reply came.
    pub shortest_lost_s: Option<f64>,
    /// The longest silence tried.
    pub max_s: f64,
    /// Every silence tried was outlived: the timeout is at least `max_s`.
    pub at_least: bool,
    /// What was found, in words.
    pub detail: String,
}

/// The most sockets (so intervals) one search uses. The responder keeps
/// at most 64 `later` replies pending per source IP, and each socket asks
/// twice.
pub(crate) const MAX_SOCKETS: usize = 30;
/// The growth of the intervals, at least.
const FACTOR: f64 = 1.1;
/// Echo round trips in the warm-up.
const WARM_ROUNDS: u32 = 4;
/// The `later` request's sequence number (the warm-up's are below).
const LATER_SEQUENCE: u32 = 1000;
/// Between the two copies of the `later` request.
const COPY_GAP: Duration = Duration::from_millis(5);
/// The responder's longest `later` delay.
const MAX_DELAY: Duration = Duration::from_secs(600);

/// The search's knobs (tests shrink them).
#[derive(Debug, Clone, Copy)]
struct Params {
    /// How long each socket warms its mapping up before the silence.
    warm_up: Duration,
    /// How long after its interval a reply may still arrive.
    grace: Duration,
    /// The shortest interval.
    min_interval: Duration,
    max_sockets: usize,
}

const DEFAULT: Params = Params {
    warm_up: Duration::from_millis(2500),
    grace: Duration::from_secs(2),
    min_interval: Duration::from_secs(2),
    max_sockets: MAX_SOCKETS,
};

/// Searches the UDP idle timeout on the way to `target` (a probe
/// responder's UDP port, which must serve `later` requests: turnpike
/// probe wire format v2) for silences up to `max` (at most 600 s), until
/// `deadline` at most. Takes about `max` + 4.5 s. An error when the
/// responder answers none of the warm-up's echo requests.
pub(crate) async fn udp_idle_timeout(
    target: SocketAddr,
    max: Duration,
    deadline: Instant,
) -> Result<IdleReport, Failure> {
    search(target, max, deadline, DEFAULT).await
}

/// The intervals tried: from `min` growing by [`FACTOR`] (or more, to stay
/// within `count` of them) up to `max`, which is included.
fn intervals(min: Duration, max: Duration, count: usize) -> Vec<Duration> {
    let (lo, hi) = (min.as_secs_f64(), max.as_secs_f64());
    if hi <= lo || count < 2 || lo <= 0.0 {
        return vec![max];
    }
    let steps = f64::from(u32::try_from(count - 1).unwrap_or(u32::MAX));
    let factor = FACTOR.max((hi / lo).powf(1.0 / steps));
    let mut out = Vec::with_capacity(count);
    let mut t = lo;
    // Within a millisecond of the top counts as the top.
    while t < hi - 1e-3 && out.len() + 1 < count {
        out.push(Duration::from_secs_f64(t));
        t *= factor;
    }
    out.push(max);
    out
}

/// What one socket's interval got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Kept,
    Lost,
    /// No echo reply in the warm-up (so no cookie, no `later`).
    NotWarm,
    OutOfTime,
    Failed(String),
}

async fn search(
    target: SocketAddr,
    max: Duration,
    deadline: Instant,
    params: Params,
) -> Result<IdleReport, Failure> {
    let max = max.min(MAX_DELAY);
    let tried = intervals(params.min_interval, max, params.max_sockets);
    let start = Instant::now();
    let shared = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for interval in tried.iter().copied() {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let outcome = one(target, interval, params, start, deadline, &shared).await;
            (interval, outcome)
        });
    }
    let mut results = Vec::with_capacity(tried.len());
    while let Some(done) = tasks.join_next().await {
        if let Ok(r) = done {
            results.push(r);
        }
    }
    results.sort_by_key(|(interval, _)| *interval);
    summarize(&results, max)
}

fn summarize(results: &[(Duration, Outcome)], max: Duration) -> Result<IdleReport, Failure> {
    let secs = |d: &Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
    let kept: Vec<f64> = results
        .iter()
        .filter(|(_, o)| *o == Outcome::Kept)
        .map(|(d, _)| secs(d))
        .collect();
    let lost: Vec<f64> = results
        .iter()
        .filter(|(_, o)| *o == Outcome::Lost)
        .map(|(d, _)| secs(d))
        .collect();
    let not_warm = results
        .iter()
        .filter(|(_, o)| *o == Outcome::NotWarm)
        .count();
    let failed = results.iter().find_map(|(_, o)| match o {
        Outcome::Failed(why) => Some(why.clone()),
        _ => None,
    });
    let out_of_time = results.iter().any(|(_, o)| *o == Outcome::OutOfTime);
    if kept.is_empty() && lost.is_empty() {
        let why = match failed {
            Some(why) => why,
            None if not_warm > 0 => "the responder answered no echo request".to_owned(),
            None => "timed out".to_owned(),
        };
        return Err(Failure::new(Step::Connect, why));
    }
    let longest_kept = kept.iter().copied().reduce(f64::max);
    let shortest_lost = lost.iter().copied().reduce(f64::min);
    let max_s = secs(&max);
    let at_least = lost.is_empty() && longest_kept.is_some_and(|k| k >= max_s);
    let mut detail = vec![match (longest_kept, shortest_lost) {
        (Some(k), None) if at_least => {
            format!("UDP mappings outlived every silence tried, up to {k} s")
        }
        (Some(k), None) => format!("UDP mappings outlived {k} s of silence"),
        (Some(k), Some(l)) if k < l => format!(
            "UDP mappings outlived {k} s of silence but not {l} s: the idle timeout is in between"
        ),
        (Some(k), Some(l)) => format!(
            "a UDP mapping outlived {k} s of silence but another did not outlive {l} s \
             (loss, or a timeout that varies)"
        ),
        (None, Some(l)) => format!("no UDP mapping outlived {l} s of silence"),
        (None, None) => String::new(),
    }];
    if not_warm > 0 {
        detail.push(format!(
            "{not_warm} of {} sockets got no echo reply in the warm-up and measured nothing",
            results.len()
        ));
    }
    if out_of_time {
        detail.push("the longest silences were not waited out (out of time)".to_owned());
    }
    Ok(IdleReport {
        longest_kept_s: longest_kept,
        shortest_lost_s: shortest_lost,
        max_s,
        at_least,
        detail: detail.join("; "),
    })
}

/// One socket: warm-up from `start`, then `interval` of silence.
/// `shared`: the first cookie any socket got, for this socket's echo
/// requests until it has its own (so that they count as validated, out
/// of reach of the responder's per-source limit on the others). The
/// `later` request carries the socket's own: a NAT that maps sockets to
/// different public addresses would make another's invalid.
async fn one(
    target: SocketAddr,
    interval: Duration,
    params: Params,
    start: Instant,
    deadline: Instant,
    shared: &AtomicU64,
) -> Outcome {
    let socket = match crate::net::udp_socket_for(target.ip()).await {
        Ok(s) => s,
        Err(f) => return Outcome::Failed(f.detail),
    };
    if let Err(e) = socket.connect(target).await {
        return Outcome::Failed(format!("{target}: {e}"));
    }
    let mut buf = vec![0u8; wire::MAX_LEN];
    let mut request = vec![0u8; wire::MIN_REQUEST_LEN];

    let mut cookie = 0u64;
    for round in 0..WARM_ROUNDS {
        let slot_end = start + params.warm_up * (round + 1) / WARM_ROUNDS;
        if slot_end > deadline {
            return Outcome::OutOfTime;
        }
        let echo = Request {
            cookie: if cookie == 0 {
                shared.load(Ordering::Relaxed)
            } else {
                cookie
            },
            ..Request::new(Kind::Echo, round, 0)
        };
        if send(&socket, &echo, &mut request).await.is_err() {
            // Refused, or the like: the next round tries again.
            tokio::time::sleep_until(slot_end).await;
            continue;
        }
        while let Ok(Ok(n)) = tokio::time::timeout_at(slot_end, socket.recv(&mut buf)).await {
            if let Ok(r) = wire::parse_reply(buf.get(..n).unwrap_or_default())
                && r.cookie != 0
            {
                cookie = r.cookie;
                shared.store(cookie, Ordering::Relaxed);
            }
        }
        tokio::time::sleep_until(slot_end).await;
    }
    if cookie == 0 {
        return Outcome::NotWarm;
    }

    let delay_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
    let later = Request {
        cookie,
        ..Request::new(Kind::Later { delay_ms }, LATER_SEQUENCE, 0)
    };
    // Twice, so that one lost request does not fake a short timeout.
    let first = send(&socket, &later, &mut request).await;
    tokio::time::sleep(COPY_GAP).await;
    let second = send(&socket, &later, &mut request).await;
    if let (Err(e), Err(_)) = (first, second) {
        return Outcome::Failed(e);
    }
    let due = Instant::now() + interval + params.grace;
    let until = due.min(deadline);
    while let Ok(got) = tokio::time::timeout_at(until, socket.recv(&mut buf)).await {
        let Ok(n) = got else {
            // An ICMP error for an earlier datagram: keep listening.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if let Ok(r) = wire::parse_reply(buf.get(..n).unwrap_or_default())
            && r.kind == ReplyKind::Later
            && r.sequence == LATER_SEQUENCE
        {
            return Outcome::Kept;
        }
    }
    if until < due {
        Outcome::OutOfTime
    } else {
        Outcome::Lost
    }
}

async fn send(socket: &UdpSocket, request: &Request, buf: &mut [u8]) -> Result<(), String> {
    let n = wire::encode_request(request, wire::MIN_REQUEST_LEN, buf).map_err(|e| e.to_string())?;
    socket
        .send(buf.get(..n).unwrap_or_default())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use super::*;

    const COOKIE: u64 = 0x5EED;

    /// Small enough for a test: the search takes about max + 0.6 s.
    const QUICK: Params = Params {
        warm_up: Duration::from_millis(300),
        grace: Duration::from_millis(300),
        min_interval: Duration::from_secs(1),
        max_sockets: MAX_SOCKETS,
    };

    /// A responder behind a simulated NAT whose UDP mappings expire after
    /// `timeout` of silence (no packet either way): it answers echo
    /// requests with a cookie, and `later` requests with a valid cookie
    /// after their delay unless the mapping expired meanwhile. It loses
    /// the first copy of every `later` request, and answers only the
    /// first `unvalidated` echo requests without the cookie (a per-source
    /// rate limit).
    async fn responder(timeout: Duration, unvalidated: usize) -> SocketAddr {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let last_seen: Arc<Mutex<HashMap<SocketAddr, Instant>>> = Arc::default();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut laters = HashSet::new();
            let mut unvalidated = unvalidated;
            loop {
                let (n, from) = socket.recv_from(&mut buf).await.unwrap();
                last_seen.lock().unwrap().insert(from, Instant::now());
                let Ok(request) = wire::parse_request(&buf[..n]) else {
                    continue;
                };
                let len = u16::try_from(n).unwrap();
                let mut reply = wire::Reply::to(&request, len, from, 1);
                reply.cookie = COOKIE;
                let mut out = [0u8; 2048];
                let out_len = wire::encode_reply(&reply, &mut out).unwrap();
                match request.kind {
                    Kind::Echo => {
                        if request.cookie != COOKIE {
                            if unvalidated == 0 {
                                continue;
                            }
                            unvalidated -= 1;
                        }
                        socket.send_to(&out[..out_len], from).await.unwrap();
                    }
                    Kind::Later { delay_ms } => {
                        if request.cookie != COOKIE || laters.insert(from) {
                            continue; // unvalidated, or the lost first copy
                        }
                        let (socket, last_seen) = (Arc::clone(&socket), Arc::clone(&last_seen));
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay_ms.into())).await;
                            let silent = last_seen.lock().unwrap()[&from].elapsed();
                            if silent <= timeout {
                                last_seen.lock().unwrap().insert(from, Instant::now());
                                socket.send_to(&out[..out_len], from).await.unwrap();
                            }
                        });
                    }
                    _ => {}
                }
            }
        });
        addr
    }

    #[test]
    fn intervals_grow_geometrically_to_the_max_within_the_socket_cap() {
        let secs = |v: Vec<Duration>| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
        let short = secs(intervals(
            Duration::from_secs(2),
            Duration::from_secs(3),
            MAX_SOCKETS,
        ));
        assert_eq!(short.len(), 6);
        assert!((short[1] - 2.2).abs() < 1e-9);
        assert_eq!(*short.last().unwrap(), 3.0);

        for max in [5, 20, 180, 600] {
            let v = secs(intervals(
                Duration::from_secs(2),
                Duration::from_secs(max),
                MAX_SOCKETS,
            ));
            assert!(v.len() <= MAX_SOCKETS, "{max}: {}", v.len());
            assert_eq!(v[0], 2.0);
            assert_eq!(*v.last().unwrap(), max as f64);
            for w in v.windows(2) {
                assert!(w[1] > w[0], "{max}: {v:?}");
            }
            // Geometric, by at least 1.1, but for the last step to max.
            for w in v[..v.len() - 1].windows(2) {
                assert!(w[1] / w[0] >= 1.1 - 1e-9, "{max}: {v:?}");
            }
        }
        // 180 s: 30 sockets, each step under 17 %.
        let v = secs(intervals(
            Duration::from_secs(2),
            Duration::from_secs(180),
            MAX_SOCKETS,
        ));
        assert_eq!(v.len(), MAX_SOCKETS);
        assert!(v.windows(2).all(|w| w[1] / w[0] < 1.17));
        assert_eq!(
            intervals(Duration::from_secs(2), Duration::from_secs(1), 30),
            vec![Duration::from_secs(1)]
        );
    }

    #[tokio::test]
    async fn the_bounds_bracket_the_simulated_timeout() {
        // Fewer unvalidated answers than sockets: the others warm up
        // with the cookie one got.
        let target = responder(Duration::from_secs(3), 5).await;
        let start = Instant::now();
        let r = search(
            target,
            Duration::from_secs(6),
            Instant::now() + Duration::from_secs(20),
            QUICK,
        )
        .await
        .unwrap();
        let (kept, lost) = (r.longest_kept_s.unwrap(), r.shortest_lost_s.unwrap());
        assert!(kept <= 3.0 && lost > 3.0, "{r:?}");
        assert!(lost / kept < 1.15, "{r:?}");
        assert!(!r.at_least);
        assert_eq!(r.max_s, 6.0);
        assert!(r.detail.contains("in between"), "{}", r.detail);
        assert!(!r.detail.contains("no echo reply"), "{}", r.detail);
        // max + warm-up + grace, and a little.
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn mappings_outliving_the_max_are_a_lower_bound() {
        let target = responder(Duration::from_secs(100), usize::MAX).await;
        let r = search(
            target,
            Duration::from_secs(2),
            Instant::now() + Duration::from_secs(20),
            QUICK,
        )
        .await
        .unwrap();
        assert_eq!(r.longest_kept_s, Some(2.0));
        assert_eq!(r.shortest_lost_s, None);
        assert!(r.at_least);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["max_s"], 2.0);
        assert_eq!(v["at_least"], true);
    }

    #[tokio::test]
    async fn the_deadline_leaves_the_longest_silences_unknown() {
        let target = responder(Duration::from_secs(100), usize::MAX).await;
        let r = search(
            target,
            Duration::from_secs(6),
            Instant::now() + Duration::from_millis(2500),
            QUICK,
        )
        .await
        .unwrap();
        let kept = r.longest_kept_s.unwrap();
        assert!((1.0..=2.2).contains(&kept), "{r:?}");
        assert_eq!(r.shortest_lost_s, None);
        assert!(!r.at_least);
        assert!(r.detail.contains("out of time"), "{}", r.detail);
    }

    #[tokio::test]
    async fn a_silent_responder_is_an_error_after_the_warm_up() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = Instant::now();
        let e = search(
            silent.local_addr().unwrap(),
            Duration::from_secs(6),
            Instant::now() + Duration::from_secs(20),
            QUICK,
        )
        .await
        .unwrap_err();
        assert!(e.detail.contains("no echo"), "{}", e.detail);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
