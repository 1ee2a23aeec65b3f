//! The systemd notify protocol (issue 7), spoken by the real binaries to a socket the test
//! binds as `NOTIFY_SOCKET`: `READY=1` once the listeners accept connections, `WATCHDOG=1`
//! at half of `WATCHDOG_USEC` while the daemon is alive, `STOPPING=1` on SIGTERM.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, bail};
use tollstream_tests::harness::{Daemon, binary, free_port};

use crate::fixture::EXIT_TIMEOUT;

/// `WATCHDOG_USEC` the daemons get: fed every second.
const WATCHDOG_USEC: &str = "2000000";

/// Waits for a datagram holding `needle`; returns every message received meanwhile.
fn wait_message(
    socket: &UnixDatagram,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10)),
        ))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|l| l == needle);
                seen.push(message);
                if done {
                    return Ok(seen);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no {needle} within {timeout:?}; received {seen:?}")
}

/// Starts `daemon`, checks READY (with `addr` accepting connections by then), three
/// WATCHDOG=1 and STOPPING=1 on SIGTERM; returns the STATUS lines seen.
fn speaks_the_protocol(
    dir: &Path,
    mut daemon: Daemon,
    addr: SocketAddr,
) -> anyhow::Result<Vec<String>> {
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    let socket_env = socket_path.to_string_lossy().into_owned();
    daemon.start_with_env(&[
        ("NOTIFY_SOCKET", &socket_env),
        ("WATCHDOG_USEC", WATCHDOG_USEC),
    ])?;
    let result = (|| {
        let mut seen = wait_message(&socket, "READY=1", Duration::from_secs(30))?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("READY=1 came, but {addr} does not accept connections"))?;
        let started = Instant::now();
        for _ in 0..3 {
            seen.extend(wait_message(&socket, "WATCHDOG=1", Duration::from_secs(5))?);
        }
        // Fed at half the interval: three feeds in about two seconds, not faster.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        let status = daemon.terminate(EXIT_TIMEOUT)?;
        assert!(status.success(), "{status:?}");
        seen.extend(wait_message(&socket, "STOPPING=1", Duration::from_secs(5))?);
        Ok(seen
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| l.strip_prefix("STATUS="))
            .map(str::to_owned)
            .collect())
    })();
    if result.is_err() {
        eprintln!("{}", daemon.log_tail(40));
        let _ = daemon.kill();
    }
    result
}

#[test]
fn the_collector_is_ready_after_its_listener_is_fed_while_alive_and_says_stopping()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    std::fs::write(dir.path().join("tokens"), "systemd-test-token-0123456789\n")?;
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: data\nauth: {{ agent_tokens_file: tokens }}\n"
        ),
    )?;
    let daemon = Daemon::new(
        "collector",
        binary("tollstream-collector")?,
        config,
        dir.path().join("collector.log"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let statuses = speaks_the_protocol(dir.path(), daemon, addr)?;
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("Recovering the WAL of stream toll-transactions")),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("Ready: ingest on http://127.0.0.1:")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.starts_with("Stopping")),
        "{statuses:?}"
    );
    Ok(())
}

#[test]
fn the_agent_is_ready_after_its_first_scan_fed_while_alive_and_says_stopping() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let metrics_port = free_port()?;
    std::fs::create_dir_all(dir.path().join("logs"))?;
    std::fs::write(dir.path().join("logs/a.log"), "a line\n")?;
    std::fs::write(dir.path().join("agent.token"), "t0ken\n")?;
    let config = dir.path().join("agent.yaml");
    // No collector runs: readiness is about the agent's own start-up.
    std::fs::write(
        &config,
        format!(
            "agent_id: booth-1\nstate_dir: state\nmetrics_listen: 127.0.0.1:{metrics_port}\n\
             collector: {{ url: \"http://127.0.0.1:9\", token_file: agent.token }}\n\
             flows:\n  - stream: toll-transactions\n    paths: [\"logs/*.log\"]\n"
        ),
    )?;
    let daemon = Daemon::new(
        "agent",
        binary("tollstream-agent")?,
        config,
        dir.path().join("agent.log"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let statuses = speaks_the_protocol(dir.path(), daemon, addr)?;
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("Following 1 files of 1 flows")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.starts_with("Stopping")),
        "{statuses:?}"
    );
    Ok(())
}
