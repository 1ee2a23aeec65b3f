//! `check-config` on broken configurations (issue 7): each message names the key path and
//! the line, a misspelt key gets the closest known name, and the exit code is 64. Also:
//! the effective configuration shows environment overrides and masks passwords.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use tollstream_tests::harness::binary;

/// Runs `daemon check-config` on `yaml`; returns (exit code, stdout, stderr).
fn check(
    dir: &Path,
    daemon: &str,
    yaml: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(i32, String, String)> {
    let path = dir.join(format!("{daemon}.yaml"));
    std::fs::write(&path, yaml)?;
    let out = Command::new(binary(daemon)?)
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env_remove("TOLLSTREAM_AGENT_ID")
        .env_remove("TOLLSTREAM_COLLECTOR_URL")
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {daemon}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

const AGENT: &str = "\
collector:
  url: http://127.0.0.1:8700
  token_file: agent.token
flows:
  - stream: toll-transactions
    paths: [\"logs/*.log\"]
";

const COLLECTOR: &str = "\
listen: 127.0.0.1:8700
data_dir: data
auth:
  agent_tokens_file: tokens
";

/// (what is broken, config text, key path the message must name, its line, more text the
/// message must hold).
type Case = (&'static str, String, &'static str, usize, &'static str);

fn agent_cases() -> Vec<Case> {
    let with = |extra: &str| format!("{AGENT}{extra}");
    vec![
        (
            "wrong type",
            AGENT.replace(
                "  token_file: agent.token\n",
                "  token_file: agent.token\n  max_in_flight: many\n",
            ),
            "collector.max_in_flight",
            4,
            "expected usize",
        ),
        (
            "unknown key",
            with("    batch: { max_recods: 5 }\n"),
            "flows[0].batch.max_recods",
            7,
            "did you mean `max_records`?",
        ),
        (
            "unknown top-level key",
            AGENT.replace("collector:", "colector:"),
            "colector",
            1,
            "did you mean `collector`?",
        ),
        (
            "bad duration",
            with("    batch:\n      max_age: 5 parsecs\n"),
            "flows[0].batch.max_age",
            8,
            "not a duration",
        ),
        (
            "bad size",
            with("    max_line_bytes: 12 bananas\n"),
            "flows[0].max_line_bytes",
            7,
            "not a size",
        ),
        (
            "missing required key",
            AGENT.replace("  url: http://127.0.0.1:8700\n", ""),
            "collector.url",
            2,
            "required",
        ),
        (
            "invalid stream name",
            AGENT.replace("stream: toll-transactions", "stream: Toll_Transactions"),
            "flows[0].stream",
            5,
            "not a stream name",
        ),
        (
            "size out of range",
            with("    max_line_bytes: 10\n"),
            "flows[0].max_line_bytes",
            7,
            "between 64B and 64MiB",
        ),
        (
            "bad glob",
            AGENT.replace("logs/*.log", "logs/[.log"),
            "flows[0].paths[0]",
            6,
            "not a valid glob",
        ),
        (
            "YAML syntax error",
            with("   bad: indent\n"),
            "flows",
            7,
            "YAML syntax error",
        ),
    ]
}

fn collector_cases() -> Vec<Case> {
    let with = |extra: &str| format!("{COLLECTOR}{extra}");
    vec![
        (
            "wrong type",
            with("ingest:\n  max_connections: lots\n"),
            "ingest.max_connections",
            6,
            "expected usize",
        ),
        (
            "unknown key",
            with("wal:\n  segment_byte: 1MiB\n"),
            "wal.segment_byte",
            6,
            "did you mean `segment_bytes`?",
        ),
        (
            "bad duration",
            with("shutdown_grace: ten seconds\n"),
            "shutdown_grace",
            5,
            "not a duration",
        ),
        (
            "bad size",
            with("disk:\n  min_free_bytes: huge\n"),
            "disk.min_free_bytes",
            6,
            "not a size",
        ),
        (
            "missing required key",
            COLLECTOR.replace("  agent_tokens_file: tokens\n", "  {}\n"),
            "auth.agent_tokens_file",
            4,
            "required",
        ),
        (
            "buffer max_bytes out of range",
            with(
                "streams:\n  toll-transactions:\n    table: toll_transactions\n    buffer:\n      max_bytes: 512MiB\n",
            ),
            "streams.toll-transactions.buffer.max_bytes",
            9,
            "between 1MiB and 128MiB",
        ),
        (
            "invalid stream name",
            with("streams:\n  Tolls:\n    table: tolls\n"),
            "streams.Tolls",
            7,
            "a stream name is",
        ),
        (
            "value left at its default conflicts",
            with("wal:\n  segment_bytes: 3GiB\n"),
            "wal.max_bytes",
            6,
            "at least twice",
        ),
        (
            "bad warehouse URL",
            with("warehouse:\n  url: mysql://loader:hunter2@db/dw\n"),
            "warehouse.url",
            6,
            "not supported",
        ),
        (
            "YAML syntax error",
            COLLECTOR.replace("listen: 127.0.0.1:8700", "listen: [127.0.0.1:8700"),
            "",
            1,
            "YAML syntax error",
        ),
    ]
}

#[test]
fn check_config_names_the_key_and_the_line_of_every_broken_setting() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (daemon, cases) in [
        ("tollstream-agent", agent_cases()),
        ("tollstream-collector", collector_cases()),
    ] {
        for (what, yaml, key, line, expected) in cases {
            let (code, _, stderr) = check(dir.path(), daemon, &yaml, &[])?;
            let context = format!("{daemon}, {what}:\n{yaml}\n→ {stderr}");
            assert_eq!(code, 64, "{context}");
            assert!(
                stderr.contains(&format!("yaml line {line} column ")),
                "line {line}: {context}"
            );
            assert!(stderr.contains(key), "key {key}: {context}");
            assert!(stderr.contains(expected), "{expected:?}: {context}");
            assert!(!stderr.contains("hunter2"), "{context}");
            assert_eq!(stderr.lines().count(), 1, "one line: {context}");
        }
    }
    Ok(())
}

#[test]
fn check_config_prints_the_effective_config_with_overrides_marked_and_secrets_masked()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let env = [
        ("TOLLSTREAM_AGENT_ID", "booth-042"),
        ("TOLLSTREAM_COLLECTOR_URL", "https://collector.example:8700"),
    ];
    let (code, stdout, stderr) = check(dir.path(), "tollstream-agent", AGENT, &env)?;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("agent_id: booth-042"), "{stdout}");
    assert!(
        stdout.contains("url: https://collector.example:8700"),
        "{stdout}"
    );
    assert!(
        stdout.contains("# collector.url: from the environment variable TOLLSTREAM_COLLECTOR_URL"),
        "{stdout}"
    );
    // An invalid value from the environment is blamed on the variable, not on a line.
    let env = [("TOLLSTREAM_COLLECTOR_URL", "collector:8700")];
    let (code, _, stderr) = check(dir.path(), "tollstream-agent", AGENT, &env)?;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("TOLLSTREAM_COLLECTOR_URL") && stderr.contains("collector.url"),
        "{stderr}"
    );

    // check-config also reads what the collector reads at start: without a token in the
    // agent tokens file it refuses, naming the file (systemd's ExecStartPre stops there).
    let yaml = format!("{COLLECTOR}warehouse:\n  url: postgres://loader:hunter2@db.example/dw\n");
    std::fs::write(dir.path().join("tokens"), "# no token yet\n")?;
    let (code, _, stderr) = check(dir.path(), "tollstream-collector", &yaml, &[])?;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("tokens holds no token"), "{stderr}");
    std::fs::write(dir.path().join("tokens"), "0123456789abcdef0123\n")?;
    let (code, stdout, stderr) = check(dir.path(), "tollstream-collector", &yaml, &[])?;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("postgres://loader:***@db.example/dw") && !stdout.contains("hunter2"),
        "{stdout}"
    );
    Ok(())
}
