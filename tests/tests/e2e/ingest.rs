//! Hostile and broken clients against the collector's ingest API, while a well-behaved agent
//! ships lines through the same collector: each gets its documented answer, the collector's
//! memory stays bounded, and every line the agent sends still lands exactly once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tollstream_tests::harness::{TOKEN, Usage, wait_for};

use crate::fixture::{EXIT_TIMEOUT, Pipeline, append, line};

/// What a raw exchange produced.
#[derive(Debug)]
struct Answer {
    /// Status of the response, if one came.
    status: Option<u16>,
    /// Response head and body as text.
    text: String,
    /// Bytes the client managed to send before the exchange ended.
    sent: u64,
    /// Time from connecting to the end of the exchange.
    took: Duration,
}

/// Connects to the collector, sends `head` and then the body pieces from a writer thread
/// (pausing `pace` between pieces, as a slow client does), while reading the answer until
/// the server closes the connection or `limit` passes.
fn exchange(
    port: u16,
    head: String,
    pieces: impl Iterator<Item = Vec<u8>> + Send + 'static,
    pace: Duration,
    limit: Duration,
) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(limit))?;
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        if writer.write_all(head.as_bytes()).is_err() {
            return sent;
        }
        sent += head.len() as u64;
        for piece in pieces {
            if !pace.is_zero() {
                std::thread::sleep(pace); // The slow client this test is about.
            }
            if writer.write_all(&piece).is_err() {
                break;
            }
            sent += piece.len() as u64;
        }
        sent
    });
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
        if complete(&received) {
            break;
        }
    }
    let took = started.elapsed();
    let _ = stream.shutdown(Shutdown::Both);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Ok(Answer {
        status,
        text,
        sent,
        took,
    })
}

/// Whether `received` holds a whole response (head plus `content-length` bytes of body).
fn complete(received: &[u8]) -> bool {
    let text = String::from_utf8_lossy(received);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .is_some_and(|len| body.len() >= len)
}

fn post_head(extra: &str) -> String {
    format!(
        "POST /v1/streams/toll-transactions/records HTTP/1.1\r\nhost: collector\r\n\
         authorization: Bearer {TOKEN}\r\n{extra}\r\n"
    )
}

/// A gzip stream that inflates to `members` × 64 MiB of zeros: ~64 KiB per member.
fn gzip_bomb(members: usize) -> anyhow::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        encoder.write_all(&zeros)?;
    }
    let member = encoder.finish()?;
    Ok(member.repeat(members))
}

fn collector_usage(pipeline: &Pipeline) -> anyhow::Result<Usage> {
    let pid = pipeline.collector.pid().context("collector pid")?;
    Usage::of(pid).context("collector usage")
}

/// The limits these tests run the collector with: short timeouts so slow clients are cut
/// off quickly, and a memory budget of 160 MiB for requests in progress (the least that
/// holds one 16 MiB body inflating to 64 MiB).
const HARDENED: &str = "ingest:\n  max_buffered_bytes: 160MiB\n  header_timeout: 1s\n  \
                        body_timeout: 2s\n  idle_timeout: 30s\n  max_connections: 12000\n";

#[test]
fn hostile_requests_get_their_documented_answers_while_an_agent_keeps_shipping()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_full(
        |_, setup| {
            setup.extra = HARDENED.into();
            Ok(())
        },
        Ok,
        |_| (),
        |_| Ok(()),
    )?;
    let port = pipeline.collector_port;
    let log = pipeline.dir.path().join("logs").join("booth.log");
    let mut written = 0usize;
    let mut written_extra = 0i64;
    let mut ship = |n: usize| -> anyhow::Result<()> {
        let lines: Vec<String> = (written..written + n).map(line).collect();
        written += n;
        append(&log, &lines)
    };
    ship(500)?;
    pipeline.wait_loaded(500, 0)?;
    let before = collector_usage(&pipeline)?;

    // A 10 GiB gzip bomb in a 10 MB body: 413 once 64 MiB are inflated, not an OOM.
    let bomb = gzip_bomb(160)?;
    let head = post_head(&format!(
        "content-encoding: gzip\r\ncontent-length: {}\r\n",
        bomb.len()
    ));
    let answer = exchange(
        port,
        head,
        bomb.chunks(1 << 20)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>()
            .into_iter(),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    assert_eq!(answer.status, Some(413), "gzip bomb: {answer:?}");
    assert!(answer.text.contains("max_decompressed_bytes"), "{answer:?}");
    ship(500)?;

    // A 2 GiB body announced by Content-Length: refused before it is read.
    let answer = exchange(
        port,
        post_head("content-length: 2147483648\r\n"),
        std::iter::repeat_n(vec![b'x'; 1 << 20], 2048),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    assert_eq!(answer.status, Some(413), "2 GiB body: {answer:?}");
    assert!(
        answer.sent < 1 << 30,
        "refused early, after {} bytes",
        answer.sent
    );
    // The same 2 GiB chunked, with no length up front: refused at max_body_bytes (16 MiB).
    let chunk = [b"100000\r\n".as_slice(), &vec![b'x'; 1 << 20], b"\r\n"].concat();
    let answer = exchange(
        port,
        post_head("transfer-encoding: chunked\r\n"),
        std::iter::repeat_n(chunk, 2048),
        Duration::ZERO,
        Duration::from_secs(60),
    )?;
    assert_eq!(answer.status, Some(413), "2 GiB chunked: {answer:?}");
    assert!(
        answer.sent < 1 << 30,
        "refused early, after {} bytes",
        answer.sent
    );
    ship(500)?;

    // A truncated gzip stream: 400 saying so.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(line(1).as_bytes())?;
    let truncated = encoder.finish()?[..12].to_vec();
    let answer = exchange(
        port,
        post_head(&format!(
            "content-encoding: gzip\r\ncontent-length: {}\r\n",
            truncated.len()
        )),
        std::iter::once(truncated),
        Duration::ZERO,
        Duration::from_secs(30),
    )?;
    assert_eq!(answer.status, Some(400), "truncated gzip: {answer:?}");
    assert!(answer.text.contains("gzip"), "{answer:?}");

    // Garbage bytes instead of HTTP: 400 and the connection is closed.
    let answer = exchange(
        port,
        "\u{1}\u{2}garbage\r\n\r\n".into(),
        std::iter::empty(),
        Duration::ZERO,
        Duration::from_secs(30),
    )?;
    assert_eq!(answer.status, Some(400), "garbage: {answer:?}");

    // Wrong and missing tokens: 401 with a JSON reason, and the token is never echoed.
    for auth in ["authorization: Bearer not-a-valid-token-at-all\r\n", ""] {
        let head = format!(
            "POST /v1/streams/toll-transactions/records HTTP/1.1\r\nhost: c\r\n{auth}\
             content-length: 2\r\n\r\n"
        );
        let answer = exchange(
            port,
            head,
            std::iter::once(b"a\n".to_vec()),
            Duration::ZERO,
            Duration::from_secs(30),
        )?;
        assert_eq!(answer.status, Some(401), "{auth:?}: {answer:?}");
        assert!(
            answer.text.contains("\"reason\":\"unauthorized\""),
            "{answer:?}"
        );
        assert!(!answer.text.contains("not-a-valid-token"), "{answer:?}");
    }
    ship(500)?;

    // Slowloris: a request head trickled one byte every 300 ms is cut off at
    // header_timeout (1 s), long before it is complete.
    let head = post_head("content-length: 2\r\n");
    let trickle: Vec<Vec<u8>> = head.bytes().map(|b| vec![b]).collect();
    let answer = exchange(
        port,
        String::new(),
        trickle.into_iter(),
        Duration::from_millis(300),
        Duration::from_secs(30),
    )?;
    assert!(
        answer.took < Duration::from_secs(10) && answer.sent < head.len() as u64,
        "slow head not cut off: {answer:?}"
    );
    // A body trickled ten bytes every 300 ms: 408 at body_timeout (2 s).
    let answer = exchange(
        port,
        post_head("content-length: 1000\r\n"),
        std::iter::repeat_n(vec![b'x'; 10], 100),
        Duration::from_millis(300),
        Duration::from_secs(30),
    )?;
    assert_eq!(answer.status, Some(408), "slow body: {answer:?}");
    assert!(answer.text.contains("body_timeout"), "{answer:?}");

    // A keep-alive connection may idle between requests for longer than header_timeout
    // (it is idle_timeout that applies there): an agent's pooled connection stays usable.
    let mut kept = TcpStream::connect(("127.0.0.1", port))?;
    kept.set_read_timeout(Some(Duration::from_secs(30)))?;
    for round in 0..2 {
        if round == 1 {
            std::thread::sleep(Duration::from_millis(1500)); // Idle past header_timeout (1 s).
        }
        let body = line(800_000 + round);
        kept.write_all(
            format!(
                "{}{body}",
                post_head(&format!("content-length: {}\r\n", body.len()))
            )
            .as_bytes(),
        )?;
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while !complete(&received) {
            let n = kept
                .read(&mut chunk)
                .context("keep-alive connection closed")?;
            anyhow::ensure!(n > 0, "keep-alive connection closed after {round} requests");
            received.extend_from_slice(&chunk[..n]);
        }
        assert!(
            received.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&received)
        );
    }
    drop(kept);
    written_extra += 2;

    // Meanwhile the agent shipped every line, once.
    ship(500)?;
    pipeline.wait_loaded(written as u64 + written_extra as u64, 0)?;
    let after = collector_usage(&pipeline)?;
    eprintln!(
        "ingest: collector peak RSS {} MiB before the hostile requests, {} MiB after",
        before.peak_rss_bytes >> 20,
        after.peak_rss_bytes >> 20
    );
    // Bounded by the 160 MiB budget for requests in progress.
    assert!(
        after.peak_rss_bytes < before.peak_rss_bytes + (160 << 20),
        "collector memory grew from {} to {} MiB",
        before.peak_rss_bytes >> 20,
        after.peak_rss_bytes >> 20
    );
    let errors = pipeline
        .collector_metric("tollstream_collector_ingest_errors_total", "")
        .unwrap_or(0.0);
    assert!(errors >= 6.0, "refusals counted: {errors}");
    assert!(pipeline.collector.terminate(EXIT_TIMEOUT)?.success());
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    pipeline.stopped = true;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(DISTINCT transaction_id) FROM toll_transactions")?,
        written as i64 + written_extra
    );
    assert_eq!(
        warehouse.count("SELECT COALESCE(SUM(duplicates), 0) FROM loads")?,
        0
    );
    Ok(())
}

#[test]
fn ten_thousand_idle_connections_cost_bounded_memory_and_the_agent_keeps_shipping()
-> anyhow::Result<()> {
    const IDLE: usize = 10_000;
    rlimit::increase_nofile_limit(IDLE as u64 + 1024)?;
    let mut pipeline = Pipeline::start_full(
        |_, setup| {
            setup.extra = "ingest:\n  max_connections: 10050\n  header_timeout: 5m\n".into();
            Ok(())
        },
        Ok,
        |_| (),
        |_| Ok(()),
    )?;
    let port = pipeline.collector_port;
    let log = pipeline.dir.path().join("logs").join("booth.log");
    append(&log, &(0..1000).map(line).collect::<Vec<_>>())?;
    pipeline.wait_loaded(1000, 0)?;
    let before = collector_usage(&pipeline)?;
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(("127.0.0.1", port))?);
    }
    wait_for(
        "the collector to hold the idle connections",
        Duration::from_secs(60),
        || {
            pipeline
                .collector_metric("tollstream_collector_connections", "")
                .is_some_and(|n| n >= IDLE as f64)
        },
    )?;
    // The agent keeps shipping while they sit there (its connection predates them).
    append(&log, &(1000..3000).map(line).collect::<Vec<_>>())?;
    pipeline.wait_loaded(3000, 0)?;
    // Past the limit, a new connection is told why in JSON and closed.
    let mut extra = Vec::new();
    let refused = loop {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        if text.starts_with("HTTP/1.1 503") {
            break text;
        }
        extra.push(stream);
        anyhow::ensure!(
            extra.len() < 500,
            "no connection was refused past the limit"
        );
    };
    assert!(
        refused.contains("max_connections") && refused.contains("retry-after"),
        "{refused}"
    );
    let during = collector_usage(&pipeline)?;
    eprintln!(
        "ingest: {IDLE} idle connections: collector RSS {} MiB (was {} MiB)",
        during.rss_bytes >> 20,
        before.rss_bytes >> 20
    );
    assert!(
        during.rss_bytes < before.rss_bytes + (200 << 20),
        "{IDLE} idle connections cost {} MiB",
        (during.rss_bytes.saturating_sub(before.rss_bytes)) >> 20
    );
    drop(idle);
    drop(extra);
    wait_for(
        "the collector to let the closed connections go",
        Duration::from_secs(60),
        || {
            pipeline
                .collector_metric("tollstream_collector_connections", "")
                .is_some_and(|n| n < 100.0)
        },
    )?;
    append(&log, &(3000..4000).map(line).collect::<Vec<_>>())?;
    pipeline.wait_loaded(4000, 0)?;
    pipeline.stop()?;
    Ok(())
}

#[test]
fn tokens_reload_on_sighup_and_a_token_bound_to_an_agent_sends_only_as_that_agent()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let port = pipeline.collector_port;
    let send = |token: &str, source: &str| -> anyhow::Result<Answer> {
        let head = format!(
            "POST /v1/streams/toll-transactions/records HTTP/1.1\r\nhost: c\r\n\
             authorization: Bearer {token}\r\nx-tollstream-source: {source}\r\n\
             x-tollstream-range: 0-{}\r\ncontent-length: {}\r\n\r\n",
            line(900_001).len(),
            line(900_001).len()
        );
        exchange(
            port,
            head,
            std::iter::once(line(900_001).into_bytes()),
            Duration::ZERO,
            Duration::from_secs(30),
        )
    };
    let new_token = "booth-9-token-5c1e2d7a9b";
    let refused = send(new_token, "booth-9/1-1-1-0")?;
    assert_eq!(refused.status, Some(401), "{refused:?}");
    // The operator adds a token bound to booth-9 and sends SIGHUP (systemctl reload).
    let tokens = pipeline.dir.path().join("agent-tokens");
    let mut text = std::fs::read_to_string(&tokens)?;
    text.push_str(&format!("booth-9 {new_token}\n"));
    std::fs::write(&tokens, text)?;
    let pid = pipeline.collector.pid().context("collector pid")?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    wait_for(
        "the new token to be accepted",
        Duration::from_secs(30),
        || send(new_token, "booth-9/1-1-1-0").is_ok_and(|a| a.status == Some(200)),
    )?;
    let wrong_agent = send(new_token, "booth-10/1-1-1-0")?;
    assert_eq!(wrong_agent.status, Some(403), "{wrong_agent:?}");
    assert!(wrong_agent.text.contains("booth-9"), "{wrong_agent:?}");
    // A broken file on reload keeps the tokens in use.
    std::fs::write(&tokens, "one two three four\n")?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    wait_for(
        "the failed reload to be counted",
        Duration::from_secs(30),
        || {
            pipeline
                .collector_metric("tollstream_collector_reloads_total", "result=\"error\"")
                .is_some_and(|n| n >= 1.0)
        },
    )?;
    let still = send(new_token, "booth-9/1-1-1-0")?;
    assert_eq!(still.status, Some(200), "{still:?}");
    let log = std::fs::read_to_string(pipeline.dir.path().join("collector.log"))?;
    assert!(
        !log.contains(new_token) && !log.contains(TOKEN),
        "a token was logged"
    );
    pipeline.stop()?;
    Ok(())
}

#[test]
fn over_tls_the_agent_ships_to_the_collector_it_trusts_and_plain_http_is_refused()
-> anyhow::Result<()> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let mut pipeline = Pipeline::start_full(
        |dir, setup| {
            std::fs::write(dir.join("cert.pem"), cert.pem())?;
            std::fs::write(dir.join("key.pem"), signing_key.serialize_pem())?;
            setup.extra =
                "ingest:\n  tls:\n    cert_file: cert.pem\n    key_file: key.pem\n".into();
            Ok(())
        },
        Ok,
        |agent| {
            agent.collector_host = "localhost";
            agent.collector_ca_file = Some("cert.pem".into());
        },
        |_| Ok(()),
    )?;
    let log = pipeline.dir.path().join("logs").join("booth.log");
    append(&log, &(0..2000).map(line).collect::<Vec<_>>())?;
    pipeline.wait_loaded(2000, 0)?;
    // Plain HTTP to the TLS port gets no answer: the handshake fails and is counted.
    let answer = exchange(
        pipeline.collector_port,
        post_head("content-length: 2\r\n"),
        std::iter::once(b"a\n".to_vec()),
        Duration::ZERO,
        Duration::from_secs(30),
    )?;
    assert_eq!(answer.status, None, "{answer:?}");
    wait_for(
        "the failed handshake to be counted",
        Duration::from_secs(30),
        || {
            pipeline
                .collector_metric("tollstream_collector_tls_handshake_errors_total", "")
                .is_some_and(|n| n >= 1.0)
        },
    )?;
    // A renewed certificate is read on SIGHUP.
    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    std::fs::write(pipeline.dir.path().join("cert.pem"), renewed.cert.pem())?;
    std::fs::write(
        pipeline.dir.path().join("key.pem"),
        renewed.signing_key.serialize_pem(),
    )?;
    let pid = pipeline.collector.pid().context("collector pid")?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    wait_for(
        "the TLS files to be reloaded",
        Duration::from_secs(30),
        || {
            pipeline
                .collector_metric(
                    "tollstream_collector_reloads_total",
                    "what=\"tls\",result=\"ok\"",
                )
                .is_some_and(|n| n >= 1.0)
        },
    )?;
    pipeline.stop()?;
    Ok(())
}
