//! `turnpike`: a STUN/TURN relay for real-time audio and video.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use turnpike_server::config::{Listen, ListenTransport, PortRange, User};
use turnpike_server::serve::{GeneratedSecret, public_address};
use turnpike_server::{Config, Overrides, state};
use turnpike_turn::auth;
use turnpike_turn::cidr::IpNet;

/// Exit code for a bad flag or configuration (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit code when the server cannot run (a port is taken, say).
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "turnpike",
    version,
    about = "A STUN/TURN relay for real-time audio and video",
    long_about = "A STUN/TURN relay (RFC 8489, RFC 8656) for real-time audio and video, secure by default: \
authentication is always on, and peers in private, loopback, link-local and other special-purpose \
ranges are refused unless explicitly allowed.",
    after_help = "SIGTERM or SIGINT drains: new allocations are refused (300 with [drain] alternate, \
else 508) and /healthz answers 503, while existing allocations go on until they end or [drain] \
timeout passes (30 s by default); a second SIGTERM or SIGINT stops at once. SIGHUP reloads the \
certificates.\n\nExit status: 0 on a clean stop, 1 when the server cannot run \
(a port is in use, say), 2 for a bad flag or configuration.\n\nLogs go to standard error; set the \
level with --log-level or TURNPIKE_LOG (e.g. TURNPIKE_LOG=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    ///
    /// With no arguments: UDP on 0.0.0.0:3478, the realm from the host
    /// name, relays on the address of the default route, and a REST secret
    /// generated and kept in ./turnpike-data. Flags override the file.
    Serve(Box<ServeArgs>),
    /// Print ephemeral TURN REST API credentials as JSON.
    ///
    /// The user name is "<expiry>:<user>"; the password is
    /// base64(HMAC-SHA1(secret, user name)). Any service holding the secret
    /// can mint them the same way.
    Credentials(CredentialsArgs),
    /// Check what this network lets through for a real-time service, and
    /// name the firewall rule to change for what it blocks.
    ///
    /// Against a turnpike server: `turnpike check https://turn.example.com`
    /// fetches the server's profile (and test credentials, when it hands
    /// them out) from URL/api/v1/profile. Against any service:
    /// `turnpike check --profile FILE` (see profiles/). Every check runs at
    /// once, within --timeout. What cannot connect directly within 3 s (the
    /// profile, TLS endpoints, TURN over TCP and TLS) is tried again through
    /// HTTPS_PROXY, if set, and reported as working only through it.
    ///
    /// Exit status: 0 ready (direct UDP works), 1 degraded (only a fallback
    /// such as TURN over TLS works), 2 blocked, 3 for a bad flag or profile.
    Check(CheckArgs),
    /// Load a TURN server and measure it: allocation setup rate, relayed
    /// packets per second, loss, latency, and the server's CPU and memory.
    ///
    /// Speaks standard TURN (RFC 8656) to any server. Each allocation sends
    /// ChannelData at --rate to one of the generator's UDP echo peers (on
    /// --peer-ip), which sends it back through the relay. Traffic goes to
    /// SERVER and the echo peers only.
    Bench(Box<BenchArgs>),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Configuration file (TOML; see turnpike.example.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address: udp://, tcp:// or tls://ADDRESS:PORT, with
    /// ?http=true to serve HTTP(S) on the same port and, for tls,
    /// &cert=PATH&key=PATH (PEM; default: a generated self-signed pair).
    /// E.g. udp://0.0.0.0:3478 or 'tls://0.0.0.0:443?http=true' (repeatable;
    /// replaces [[listen]]).
    #[arg(long, value_name = "URL")]
    listen: Vec<Listen>,
    /// Authentication realm (replaces `realm`; default: the host name).
    #[arg(long)]
    realm: Option<String>,
    /// Address relayed addresses are bound on, one per family (repeatable;
    /// replaces `relay.address`).
    #[arg(long, value_name = "IP")]
    relay_address: Vec<IpAddr>,
    /// Relay port range (replaces `relay.ports`; default 49152-65535).
    #[arg(long, value_name = "FIRST-LAST")]
    relay_ports: Option<PortRange>,
    /// Address put in XOR-RELAYED-ADDRESS behind a 1:1 NAT, one per family
    /// (repeatable; replaces `relay.advertised`).
    #[arg(long, value_name = "IP")]
    advertised: Vec<IpAddr>,
    /// A static user (repeatable; replaces `auth.users`).
    #[arg(long, value_name = "NAME:PASSWORD")]
    user: Vec<User>,
    /// A TURN REST API shared secret (repeatable; replaces `auth.secrets`).
    #[arg(long, value_name = "SECRET")]
    secret: Vec<String>,
    /// Allow relaying to this range despite the default policy (repeatable; replaces `peers.allow`).
    #[arg(long, value_name = "CIDR")]
    allow_peer: Vec<IpNet>,
    /// Never relay to this range (repeatable; replaces `peers.deny`).
    #[arg(long, value_name = "CIDR")]
    deny_peer: Vec<IpNet>,
    /// Where the generated REST secret is kept (replaces `state_dir`; default ./turnpike-data).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Shards, one thread each (replaces `threads`; default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// The name clients reach the server by, for credential URLs and the
    /// generated certificate (replaces `hostname`; default: the advertised address).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// A plain-HTTP listener for /healthz, /metrics and the credentials API
    /// (replaces `http.address`).
    #[arg(long, value_name = "ADDRESS:PORT")]
    http_address: Option<SocketAddr>,
    /// A bearer key for POST /api/v1/credentials (repeatable; replaces `http.api_keys`).
    #[arg(long, value_name = "KEY")]
    api_key: Vec<String>,
    /// Relay over TCP to peers (RFC 6062; replaces `relay.tcp`).
    #[arg(long)]
    relay_tcp: bool,
    /// Seconds existing allocations may go on after SIGTERM before the
    /// server stops; 0 stops at once (replaces `drain.timeout`; default 30).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    drain_timeout: Option<u64>,
    /// Where new allocations are sent while draining, as 300 Try Alternate
    /// (repeatable, one per address family; replaces `drain.alternate`).
    #[arg(long, value_name = "ADDRESS:PORT")]
    drain_alternate: Vec<SocketAddr>,
    /// Run the probe responder on these UDP ports, at most 1024, which
    /// `turnpike check` measures the path to the server with (turns
    /// `probe.enabled` on and replaces `probe.ports`).
    #[arg(long, value_name = "FIRST-LAST")]
    probe_ports: Option<PortRange>,
    /// Log level (default info). TURNPIKE_LOG takes fuller filters, e.g.
    /// TURNPIKE_LOG=info,turnpike_server=debug. The TLS library logs only
    /// errors unless the filter names it (TURNPIKE_LOG=debug,rustls=debug).
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: Option<String>,
}

#[derive(Debug, Args)]
struct CredentialsArgs {
    /// The shared secret (one of the server's `auth.secrets`).
    #[arg(
        long,
        required_unless_present = "state_dir",
        conflicts_with = "state_dir"
    )]
    secret: Option<String>,
    /// Read the secret a server generated in this state directory instead.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The user the credentials are for.
    #[arg(long)]
    user: String,
    /// Seconds the credentials stay valid.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    ttl: u64,
    /// A TURN URI to include, e.g. turn:turn.example.com:3478 (repeatable).
    #[arg(long, value_name = "URI")]
    uri: Vec<String>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when the run completed, 1 when it failed (server unreachable, \
authentication refused, quota reached), 2 for a bad flag."
)]
struct BenchArgs {
    /// HOST:PORT of the TURN server.
    #[arg(value_name = "SERVER")]
    server: String,
    /// Transport to the server.
    #[arg(long, default_value = "udp", value_parser = ["udp", "tcp", "tls"])]
    transport: String,
    /// Static long-term credentials.
    #[arg(
        long,
        value_name = "NAME:PASSWORD",
        required_unless_present = "secret",
        conflicts_with = "secret"
    )]
    user: Option<String>,
    /// TURN REST API shared secret: user name "<unix expiry>:bench",
    /// password base64(HMAC-SHA1(secret, user name)).
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
    /// Allocations (in --churn: at most this many in flight).
    #[arg(long, value_name = "N", default_value_t = 100)]
    allocations: usize,
    /// Packets per second per allocation; 0 allocates and holds them idle.
    #[arg(long, value_name = "PPS", default_value_t = 50)]
    rate: u32,
    /// ChannelData payload bytes (at least 24: run tag, allocation, sequence, echo hold time, send time).
    #[arg(long, value_name = "BYTES", default_value_t = 160)]
    size: usize,
    /// Seconds measured (each step with --saturate; the whole churn with --churn).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before the measured window.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Generator threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Address the echo peers bind; the server must allow relaying to it.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    peer_ip: IpAddr,
    /// Report this server process's CPU time over the measured window and
    /// its memory (from /proc).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Create and delete allocations for --duration instead of streaming;
    /// report allocations per second.
    #[arg(long, conflicts_with = "saturate")]
    churn: bool,
    /// Steps of --duration, the rate times 1.25 each, until loss reaches
    /// 1 % or the generator cannot keep up, then 3 steps that bisect
    /// between the last rate under 1 % loss and the first over it; report
    /// every step and the best.
    #[arg(long)]
    saturate: bool,
    /// One JSON object on standard output instead of the table.
    #[arg(long)]
    json: bool,
    /// For tls: verify the server against this PEM CA (without it, any
    /// certificate is accepted and the report says so).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// `turnpike check`'s exit status for a bad flag or profile (0 to 2 are
/// verdicts).
const EXIT_CHECK_USAGE: u8 = 3;

#[derive(Debug, Args)]
struct CheckArgs {
    /// A turnpike server's base URL: https://HOST[:PORT] (or http:// for a
    /// plain HTTP listener).
    #[arg(value_name = "URL", required_unless_present = "profile")]
    url: Option<String>,
    /// A requirement profile (TOML) to check instead of a server's.
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    profile: Option<PathBuf>,
    /// TURN user name, for allocations and relayed round trips.
    #[arg(long, value_name = "NAME", requires = "password")]
    user: Option<String>,
    /// TURN password (or set TURNPIKE_PASSWORD).
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "TURNPIKE_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    password: Option<String>,
    /// Seconds the whole check may take.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    timeout: f64,
    /// The report as JSON on standard output, instead of the text.
    #[arg(long)]
    json: bool,
    /// Also write the report as JUnit XML, for CI pipelines.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Skip the measurements of the path to the server's probe responder
    /// (RTT, jitter, loss, bandwidth, DSCP, NAT, path MTU).
    #[arg(long)]
    no_measure: bool,
    /// Seconds the audio-like and video-like streams run (0.5-60).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    stream_seconds: f64,
    /// The video-like stream's rate in kbit/s (1200-byte packets); by
    /// default the profile's largest bandwidth threshold, else 1000.
    #[arg(long, value_name = "KBPS")]
    video_kbps: Option<u32>,
    /// The bandwidth ramp's cap, each way, in kbit/s.
    #[arg(long, value_name = "KBPS", default_value_t = 10_000)]
    max_kbps: u32,
    /// Also search for the UDP idle timeout of the NAT or firewall, up to
    /// MAX_S seconds of silence (5-600, default 180); the check may then
    /// take MAX_S + 15 s longer. A profile may ask for the search
    /// ([measure] udp_idle_timeout, up to its udp_idle_timeout_s minimum);
    /// MAX_S given here replaces its maximum.
    #[arg(long, value_name = "MAX_S", num_args = 0..=1, default_missing_value = "180")]
    udp_timeout: Option<f64>,
    /// Skip the UDP idle-timeout search even when the profile asks for it.
    #[arg(long, conflicts_with = "udp_timeout")]
    no_udp_timeout: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = if !e.use_stderr() {
                0
            } else if std::env::args().nth(1).as_deref() == Some("check") {
                EXIT_CHECK_USAGE
            } else {
                EXIT_USAGE
            };
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Credentials(args) => credentials(&args),
        Command::Check(args) => check(&args),
        Command::Bench(args) => bench(&args),
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    use std::io::IsTerminal as _;
    use turnpike_check::report::{Check, Report, Status, Verdict};
    use turnpike_check::{Plan, ProbeTarget, Progress, fetch, render};

    let usage = |m: &str| {
        eprintln!("turnpike check: {m}");
        ExitCode::from(EXIT_CHECK_USAGE)
    };
    let budget = match std::time::Duration::try_from_secs_f64(args.timeout) {
        Ok(d) if (1.0..=600.0).contains(&args.timeout) => d,
        _ => return usage("--timeout must be between 1 and 600 seconds"),
    };
    if !(0.5..=60.0).contains(&args.stream_seconds) {
        return usage("--stream-seconds must be between 0.5 and 60");
    }
    if args.video_kbps == Some(0) || args.max_kbps == 0 {
        return usage("--video-kbps and --max-kbps must be above 0");
    }
    let udp_timeout = match args.udp_timeout {
        None => None,
        Some(s) if (5.0..=600.0).contains(&s) => Some(std::time::Duration::from_secs_f64(s)),
        Some(_) => return usage("--udp-timeout must be between 5 and 600 seconds"),
    };
    // The idle-timeout search takes up to its longest silence, and more.
    let search_time = |max: std::time::Duration| max + std::time::Duration::from_secs(15);
    let budget = budget + udp_timeout.map_or(std::time::Duration::ZERO, search_time);
    let measure = (!args.no_measure).then_some(turnpike_check::MeasureOptions {
        stream_seconds: args.stream_seconds,
        video_kbps: args.video_kbps,
        max_kbps: args.max_kbps,
        udp_timeout,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage(&format!("cannot start: {e}")),
    };
    let credentials = args.user.clone().zip(args.password.clone());
    let proxy = turnpike_check::Proxy::from_env();
    let started = std::time::Instant::now();
    let mut plan = match (&args.profile, &args.url) {
        (Some(path), _) => match turnpike_profile::Profile::load(path) {
            Ok(profile) => Plan {
                profile,
                target: path.display().to_string(),
                credentials,
                tls_issuer: None,
                budget,
                proxy: proxy.clone(),
                probe: None,
                measure: measure.clone(),
            },
            Err(e) => return usage(&e.to_string()),
        },
        (None, Some(url)) => {
            let base = match fetch::BaseUrl::parse(url) {
                Ok(b) => b,
                Err(e) => return usage(&e),
            };
            // A third of the time to fetch the profile; the rest is the
            // checks'.
            let deadline = tokio::time::Instant::now() + budget / 3;
            match runtime.block_on(fetch::published(&base, deadline, proxy.as_ref())) {
                Ok((published, _seen)) => {
                    // Credentials given on the command line are the
                    // operator's: they relay anywhere the server allows.
                    let check_credentials =
                        credentials.is_none() && published.credentials.is_some();
                    Plan {
                        profile: published.profile,
                        target: url.clone(),
                        credentials: credentials
                            .or(published.credentials.map(|c| (c.username, c.password))),
                        tls_issuer: published.tls_issuer,
                        budget: budget.saturating_sub(started.elapsed()),
                        proxy: proxy.clone(),
                        probe: published.probe.map(|p| ProbeTarget {
                            udp_endpoint: p.udp_endpoint,
                            relay_to_it: check_credentials,
                        }),
                        measure,
                    }
                }
                Err(e) => {
                    // Without the server's profile, the one thing known is
                    // that its HTTPS side cannot be reached from here.
                    let mut c = Check::new(
                        "https:profile",
                        format!("HTTPS to {}:{}", base.host, base.port),
                        Status::Fail,
                    );
                    c.detail = Some(e);
                    c.remediation = Some(format!(
                        "allow outbound TCP to {} port {} ({}), then check again",
                        base.host,
                        base.port,
                        if base.tls { "HTTPS" } else { "HTTP" }
                    ));
                    c.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                    let report = Report {
                        verdict: Verdict::Blocked,
                        summary: format!("The server's profile could not be fetched from {url}."),
                        profile: "unknown".into(),
                        target: url.clone(),
                        started: String::new(),
                        duration_ms: c.duration_ms,
                        checks: vec![c],
                        measurements: None,
                    };
                    return write_report(args, &report);
                }
            }
        }
        (None, None) => return usage("give a server URL or --profile FILE"),
    };
    // The profile may ask for the idle-timeout search; it is known only
    // now (a server's is fetched), so its time is added to what is left.
    if args.udp_timeout.is_none()
        && !args.no_udp_timeout
        && let Some(max) = turnpike_check::run::profile_udp_timeout(&plan.profile)
        && let Some(m) = plan.measure.as_mut()
    {
        m.udp_timeout = Some(max);
        plan.budget += search_time(max);
    }

    let progress = std::io::stderr().is_terminal() && !args.json;
    let report = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let total = plan.profile.endpoints.len();
        let drawer = tokio::spawn(async move {
            let mut running: Vec<String> = Vec::new();
            let mut done = 0;
            while let Some(p) = rx.recv().await {
                match p {
                    Progress::Started { id } => running.push(id),
                    Progress::Finished { id, .. } => {
                        running.retain(|r| *r != id);
                        if !id.starts_with("dns:") {
                            done += 1;
                        }
                    }
                }
                if progress {
                    let names: Vec<&str> = running.iter().map(String::as_str).collect();
                    let line = render::progress_line(done, total, &names);
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[2K{line}");
                    let _ = err.flush();
                }
            }
            if progress {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            }
        });
        let report = turnpike_check::run(plan, Some(tx)).await;
        let _ = drawer.await;
        report
    });
    write_report(args, &report)
}

/// Writes the report where asked; the exit status is its verdict.
fn write_report(args: &CheckArgs, report: &turnpike_check::report::Report) -> ExitCode {
    use std::io::IsTerminal as _;
    use turnpike_check::render;
    let mut failed = false;
    for (path, text) in [
        (
            &args.junit,
            args.junit.as_ref().map(|_| render::junit(report)),
        ),
        (&args.html, args.html.as_ref().map(|_| render::html(report))),
    ] {
        if let (Some(path), Some(text)) = (path, text)
            && let Err(e) = std::fs::write(path, text)
        {
            eprintln!("turnpike check: {}: {e}", path.display());
            failed = true;
        }
    }
    let out = if args.json {
        render::json(report)
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        render::text(report, color)
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    if failed {
        return ExitCode::from(EXIT_CHECK_USAGE);
    }
    ExitCode::from(report.exit_code())
}

fn bench(args: &BenchArgs) -> ExitCode {
    let fail = |code: u8, m: &str| {
        eprintln!("turnpike bench: {m}");
        ExitCode::from(code)
    };
    let credentials = match (&args.user, &args.secret) {
        (Some(user), _) => match user.split_once(':') {
            Some((name, password)) if !name.is_empty() && !password.is_empty() => {
                turnpike_bench::Credentials::User {
                    name: name.to_owned(),
                    password: password.to_owned(),
                }
            }
            _ => return fail(EXIT_USAGE, "--user is NAME:PASSWORD, neither empty"),
        },
        (None, Some(secret)) => turnpike_bench::Credentials::Secret(secret.clone()),
        (None, None) => return fail(EXIT_USAGE, "give --user or --secret"),
    };
    let seconds = |flag: &str, v: f64| {
        std::time::Duration::try_from_secs_f64(v)
            .map_err(|_| format!("{flag} must be a number of seconds, at least 0"))
    };
    let (duration, warmup) = match (
        seconds("--duration", args.duration),
        seconds("--warmup", args.warmup),
    ) {
        (Ok(d), Ok(w)) => (d, w),
        (Err(e), _) | (_, Err(e)) => return fail(EXIT_USAGE, &e),
    };
    let mut config = turnpike_bench::Config::new(args.server.clone(), credentials);
    config.transport = match args.transport.as_str() {
        "tcp" => turnpike_bench::Transport::Tcp,
        "tls" => turnpike_bench::Transport::Tls,
        _ => turnpike_bench::Transport::Udp,
    };
    config.allocations = args.allocations;
    config.rate = args.rate;
    config.size = args.size;
    config.duration = duration;
    config.warmup = warmup;
    if let Some(t) = args.threads {
        config.threads = t;
    }
    config.peer_ip = args.peer_ip;
    config.server_pid = args.server_pid;
    config.mode = if args.churn {
        turnpike_bench::Mode::Churn
    } else if args.saturate {
        turnpike_bench::Mode::Saturate
    } else {
        turnpike_bench::Mode::Stream
    };
    config.ca.clone_from(&args.ca);
    match turnpike_bench::run(&config) {
        Ok(report) => {
            let text = if args.json {
                report.to_json()
            } else {
                report.to_table()
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", text.trim_end());
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(turnpike_bench::Error::Usage(m)) => fail(EXIT_USAGE, &m),
        Err(turnpike_bench::Error::Failed(m)) => fail(EXIT_FAILURE, &m),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    if let Err(e) = init_logging(args.log_level.as_deref()) {
        eprintln!("turnpike: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let overrides = Overrides {
        listen: args.listen,
        realm: args.realm,
        relay_addresses: args.relay_address,
        relay_ports: args.relay_ports,
        advertised: args.advertised,
        users: args.user,
        secrets: args.secret,
        allow_peers: args.allow_peer,
        deny_peers: args.deny_peer,
        state_dir: args.state_dir,
        threads: args.threads,
        hostname: args.hostname,
        http_address: args.http_address,
        api_keys: args.api_key,
        relay_tcp: args.relay_tcp.then_some(true),
        drain_timeout: args.drain_timeout,
        drain_alternates: args.drain_alternate,
        probe_ports: args.probe_ports,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("turnpike: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let running = match turnpike_server::start(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("turnpike: {e:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    print_banner(&running, &config);
    serve_until_stopped(&running);
    running.stop();
    ExitCode::SUCCESS
}

/// What a new user needs to know, printed once at start.
#[allow(clippy::print_stdout)]
fn print_banner(running: &turnpike_server::Running, config: &Config) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "turnpike {} serving realm \"{}\" on {} thread(s)",
        env!("CARGO_PKG_VERSION"),
        running.realm,
        running.threads
    );
    for l in &running.listening {
        let http = if l.http { " (and HTTP)" } else { "" };
        let _ = writeln!(out, "listening: {} {}{http}", l.transport, l.address);
    }
    if let Some(http) = running.http_address {
        let _ = writeln!(out, "listening: http {http}");
    }
    for relay in &running.relays {
        if relay.advertised == relay.bound {
            let _ = writeln!(
                out,
                "relaying: {} ports {}",
                relay.bound, running.relay_ports
            );
        } else {
            let _ = writeln!(
                out,
                "relaying: {} (advertised as {}) ports {}",
                relay.bound, relay.advertised, running.relay_ports
            );
        }
    }
    if let Some(probe) = &running.probe {
        let tcp = probe
            .tcp_port
            .map(|p| format!(", tcp port {p}"))
            .unwrap_or_default();
        let credentials = if probe.credentials {
            "; check credentials at /api/v1/profile"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "probe: {} udp ports {}{tcp}{credentials}",
            probe.ip, probe.ports
        );
    }
    let uri = running
        .listening
        .first()
        .map(|l| match &config.hostname {
            Some(name) => format!(" --uri turn:{}", host_port(name, l.address.port())),
            None => format!(" --uri turn:{}", public_address(l, &running.relays)),
        })
        .unwrap_or_default();
    match &running.generated_secret {
        Some(GeneratedSecret::Created(path) | GeneratedSecret::Kept(path)) => {
            let _ = writeln!(
                out,
                "credentials: REST secret kept in {}; get a user name and password with\n  turnpike credentials --state-dir {} --user NAME{uri}",
                path.display(),
                config.state_dir.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "credentials: {} static user(s), {} REST secret(s); for REST credentials run\n  turnpike credentials --secret SECRET --user NAME{uri}",
                config.users.len(),
                config.secrets.len()
            );
        }
    }
    if let Some(base) = http_base(running).filter(|_| running.credentials_api) {
        let _ = writeln!(
            out,
            "credentials API: curl -X POST -H 'Authorization: Bearer KEY' {base}/api/v1/credentials"
        );
    }
    let _ = out.flush();
}

/// Where the HTTP side is reached: a TURN listener that shares its port
/// with HTTP(S), else the plain-HTTP listener.
fn http_base(running: &turnpike_server::Running) -> Option<String> {
    let shared = running.listening.iter().find(|l| l.http).map(|l| {
        let scheme = if l.transport == ListenTransport::Tls {
            "https"
        } else {
            "http"
        };
        let host = if l.address.ip().is_unspecified() {
            running.hostname.clone()
        } else {
            l.address.ip().to_string()
        };
        match (scheme, l.address.port()) {
            ("https", 443) | ("http", 80) => format!("{scheme}://{}", host_port(&host, 0)),
            (_, port) => format!("{scheme}://{}", host_port(&host, port)),
        }
    });
    shared.or_else(|| running.http_address.map(|a| format!("http://{a}")))
}

/// `host:port` for a URL, IPv6 in brackets; just the host for port 0.
fn host_port(host: &str, port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == 0 {
        host
    } else {
        format!("{host}:{port}")
    }
}

fn credentials(args: &CredentialsArgs) -> ExitCode {
    let secret = match (&args.secret, &args.state_dir) {
        (Some(s), _) if !s.is_empty() => s.clone(),
        (Some(_), _) => return usage("--secret must not be empty"),
        (None, Some(dir)) => match state::read_secret(dir) {
            Ok(s) => s,
            Err(e) => return usage(&format!("cannot read the secret in {}: {e}", dir.display())),
        },
        (None, None) => return usage("give --secret or --state-dir"),
    };
    if args.user.is_empty() || args.user.chars().any(char::is_control) {
        return usage("--user must be a non-empty name without control characters");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let username = auth::rest_username(now.saturating_add(args.ttl), &args.user);
    let password = auth::rest_password(secret.as_bytes(), &username);
    let json = serde_json::json!({
        "username": username,
        "password": password,
        "ttl": args.ttl,
        "uris": args.uri,
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{json}");
    }
    ExitCode::SUCCESS
}

/// `spec` with the TLS library's own warnings left out unless it names
/// the library: they are about what a remote client sent (an IP address
/// as its server name, say), which anyone can repeat to flood the log;
/// the server counts failed handshakes in its metrics instead.
fn quiet_tls_library(spec: &str) -> String {
    if spec.contains("rustls") {
        spec.to_owned()
    } else {
        format!("{spec},rustls=error")
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("turnpike: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn init_logging(level: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(quiet_tls_library(level))
            .map_err(|e| format!("--log-level {level}: {e}"))?,
        None => match std::env::var("TURNPIKE_LOG") {
            Ok(spec) => EnvFilter::try_new(quiet_tls_library(&spec))
                .unwrap_or_else(|_| EnvFilter::new(quiet_tls_library("info"))),
            Err(_) => EnvFilter::new(quiet_tls_library("info")),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    Ok(())
}

/// Serves until SIGTERM or SIGINT, then drains: new allocations are
/// refused while existing ones go on, until the last one ends or the drain
/// timeout passes; a second SIGTERM or SIGINT stops at once. SIGHUP reloads
/// the certificates at any time.
fn serve_until_stopped(running: &turnpike_server::Running) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot wait for signals; stopping");
            return;
        }
    };
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot wait for signals; stopping");
            return;
        };
        let first = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => running.reload_certificates(),
            }
        };
        let timeout = running.drain_timeout;
        let held = running.allocations();
        if timeout.is_zero() || held == 0 {
            tracing::info!(signal = first, allocations = held, "stopping");
            return;
        }
        running.drain();
        tracing::info!(
            signal = first,
            allocations = held,
            timeout_s = timeout.as_secs(),
            "draining: new allocations are refused; stopping when the last one ends or the \
             timeout passes (send the signal again to stop now)"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let mut check = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!(allocations = running.allocations(), "SIGTERM again: stopping now");
                    return;
                }
                _ = int.recv() => {
                    tracing::info!(allocations = running.allocations(), "SIGINT again: stopping now");
                    return;
                }
                _ = hup.recv() => running.reload_certificates(),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::info!(
                        allocations = running.allocations(),
                        "drain timeout passed: stopping"
                    );
                    return;
                }
                _ = check.tick() => {
                    if running.allocations() == 0 {
                        tracing::info!("the last allocation ended: stopping");
                        return;
                    }
                }
            }
        }
    });
}
