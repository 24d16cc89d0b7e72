//! Checks against a turnpike server's probe responder (`[probe]`):
//! whether UDP reaches a sample of its media ports directly, and a round
//! trip to it through a TURN relay (what check credentials may relay to).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use tokio::time::{Duration, Instant};
use turnpike_probe::{self as wire, Kind, Request};
use turnpike_profile::PortRange;
use turnpike_stun::{Attr, Method};

use crate::client::Client;
use crate::net::{Failure, Step};

/// The most ports of a range one check sends to.
pub(crate) const SAMPLE: usize = 8;
/// A probe request's length: about that of an audio packet.
const REQUEST_LEN: usize = 200;
/// Sends to each port at most this many times, each round waiting
/// [`ROUND`] for the replies.
const ROUNDS: u32 = 3;
const ROUND: Duration = Duration::from_millis(500);

/// Up to [`SAMPLE`] ports of `range`, spread evenly from its first port to
/// its last, each once, in order.
#[must_use]
pub(crate) fn sample(range: PortRange) -> Vec<u16> {
    let (first, last) = (u32::from(range.lo()), u32::from(range.hi()));
    let span = last - first;
    let n = u32::try_from(SAMPLE).unwrap_or(1).min(span + 1);
    let mut ports: Vec<u16> = (0..n)
        .map(|i| {
            let offset = if n > 1 { span * i / (n - 1) } else { 0 };
            u16::try_from(first + offset).unwrap_or(range.hi())
        })
        .collect();
    ports.dedup();
    ports
}

/// What a sample of a UDP range answered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RangeResult {
    /// The ports sent to, in order.
    pub(crate) sampled: Vec<u16>,
    /// The ports that answered, with the fastest round trip to each.
    pub(crate) answered: Vec<(u16, Duration)>,
    /// The client's address as the responder saw it (its NAT mapping).
    pub(crate) seen_as: Option<SocketAddr>,
}

impl RangeResult {
    /// The ports that never answered, in order.
    pub(crate) fn silent(&self) -> Vec<u16> {
        self.sampled
            .iter()
            .copied()
            .filter(|p| !self.answered.iter().any(|(a, _)| a == p))
            .collect()
    }

    /// The fastest round trip of all.
    pub(crate) fn best(&self) -> Option<Duration> {
        self.answered.iter().map(|&(_, rtt)| rtt).min()
    }
}

/// Sends probe requests from one UDP socket to `ports` of `ip`, again to
/// those that have not answered, for [`ROUNDS`] rounds or until
/// `deadline`.
pub(crate) async fn udp_range(
    ip: IpAddr,
    ports: &[u16],
    deadline: Instant,
) -> Result<RangeResult, Failure> {
    let socket = crate::net::udp_socket_for(ip).await?;
    let started = Instant::now();
    let mut result = RangeResult {
        sampled: ports.to_vec(),
        answered: Vec::new(),
        seen_as: None,
    };
    // Sequence numbers name the port and the round; the timestamp is the
    // send time, in microseconds since `started`.
    let mut sent_at: HashMap<u32, (u16, Instant)> = HashMap::new();
    let mut buf = [0u8; wire::MAX_LEN + 1];
    let mut request = [0u8; REQUEST_LEN];
    for round in 0..ROUNDS {
        let waiting: Vec<u16> = result.silent();
        if waiting.is_empty() || Instant::now() >= deadline {
            break;
        }
        for (i, &port) in (0u32..).zip(&waiting) {
            let sequence = round * 0x1_0000 + i;
            let now = Instant::now();
            let timestamp = u64::try_from(now.duration_since(started).as_micros()).unwrap_or(0);
            let r = Request::new(Kind::Echo, sequence, timestamp);
            let len = wire::encode_request(&r, REQUEST_LEN, &mut request)
                .map_err(|e| Failure::new(Step::Protocol, e.to_string()))?;
            // A send refused at once (ICMP from an earlier one) is as
            // good as a loss here: the port counts as silent.
            if let Some(bytes) = request.get(..len)
                && socket
                    .send_to(bytes, SocketAddr::new(ip, port))
                    .await
                    .is_ok()
            {
                sent_at.insert(sequence, (port, now));
            }
        }
        let round_end = (Instant::now() + ROUND).min(deadline);
        while result.answered.len() < result.sampled.len() {
            let Ok(got) = tokio::time::timeout_at(round_end, socket.recv_from(&mut buf)).await
            else {
                break;
            };
            let Ok((len, from)) = got else { continue };
            let Some(Ok(reply)) = buf.get(..len).map(wire::parse_reply) else {
                continue;
            };
            let Some(&(port, at)) = sent_at.get(&reply.sequence) else {
                continue;
            };
            // Only the port asked answers for itself.
            if from.ip() != ip || from.port() != port {
                continue;
            }
            let rtt = at.elapsed();
            result.seen_as.get_or_insert(reply.source);
            match result.answered.iter_mut().find(|(p, _)| *p == port) {
                Some((_, best)) => *best = (*best).min(rtt),
                None => result.answered.push((port, rtt)),
            }
        }
    }
    result.answered.sort_unstable_by_key(|&(p, _)| p);
    Ok(result)
}

/// Through an allocation `client` holds (relayed address `relayed`): a
/// permission for `probe`, then probe requests sent to it until one comes
/// back or three have gone out; the fastest round trip.
pub(crate) async fn relayed_round_trip(
    client: &mut Client,
    relayed: SocketAddr,
    probe: SocketAddr,
    deadline: Instant,
) -> Result<Duration, Failure> {
    let r = client
        .request(
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(probe)],
            deadline,
        )
        .await?;
    if let Some(code) = r.code() {
        return Err(Failure::new(
            Step::Protocol,
            format!("CreatePermission for the probe responder {probe} refused ({code})"),
        ));
    }
    let mut request = [0u8; REQUEST_LEN];
    let mut best: Option<Duration> = None;
    for sequence in 0u32..5 {
        let len = wire::encode_request(
            &Request::new(Kind::Echo, sequence, 0),
            REQUEST_LEN,
            &mut request,
        )
        .map_err(|e| Failure::new(Step::Protocol, e.to_string()))?;
        let payload = request.get(..len).unwrap_or_default();
        let sent = Instant::now();
        client
            .indicate(
                Method::SEND,
                &[Attr::XorPeerAddress(probe), Attr::Data(payload)],
            )
            .await?;
        let wait = (Instant::now() + Duration::from_millis(1000)).min(deadline);
        while let Some((from, data)) = client.data(wait).await {
            let reply = wire::parse_reply(&data);
            if from == probe && reply.is_ok_and(|r| r.sequence == sequence) {
                let took = sent.elapsed();
                best = Some(best.map_or(took, |b| b.min(took)));
                break;
            }
        }
        if best.is_some() && sequence >= 2 {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    best.ok_or_else(|| {
        Failure::new(
            Step::Protocol,
            format!(
                "allocated {relayed}, but nothing relayed to the probe responder {probe} came back"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::net::UdpSocket;

    use super::*;

    fn range(a: u16, b: u16) -> PortRange {
        PortRange::new(a, b).unwrap()
    }

    #[test]
    fn samples_spread_from_first_to_last() {
        assert_eq!(sample(range(50_000, 50_000)), vec![50_000]);
        assert_eq!(sample(range(50_000, 50_002)), vec![50_000, 50_001, 50_002]);
        assert_eq!(
            sample(range(50_000, 50_009)),
            vec![
                50_000, 50_001, 50_002, 50_003, 50_005, 50_006, 50_007, 50_009
            ]
        );
        let wide = sample(range(10_000, 59_999));
        assert_eq!(wide.len(), SAMPLE);
        assert_eq!((wide[0], wide[SAMPLE - 1]), (10_000, 59_999));
        assert!(wide.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample(range(1, 65_535)).last(), Some(&65_535));
    }

    #[tokio::test]
    async fn a_range_with_some_ports_answering() {
        // Two responders on loopback; a third port in the sample has none.
        let mut responders = Vec::new();
        for _ in 0..2 {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = socket.local_addr().unwrap().port();
            responders.push(port);
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                let mut out = [0u8; 1500];
                while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                    if let Ok(Some(n)) = wire::answer(&buf[..len], from, 1, &mut out) {
                        let _ = socket.send_to(&out[..n], from).await;
                    }
                }
            });
        }
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let ports = [responders[0], silent_port, responders[1]];
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = udp_range(IpAddr::V4(Ipv4Addr::LOCALHOST), &ports, deadline)
            .await
            .unwrap();
        let mut answered: Vec<u16> = got.answered.iter().map(|&(p, _)| p).collect();
        answered.sort_unstable();
        let mut want = responders.clone();
        want.sort_unstable();
        assert_eq!(answered, want);
        assert_eq!(got.silent(), vec![silent_port]);
        assert_eq!(
            got.seen_as.map(|a| a.ip()),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert!(got.best().is_some());
        drop(silent);
    }
}
