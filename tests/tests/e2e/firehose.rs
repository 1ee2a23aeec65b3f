//! Issue 9's acceptance: real AWS clients — boto3 and the AWS CLI (v1, from PyPI) — send
//! toll lines to the collector's Kinesis Firehose–compatible API, signed with SigV4, and
//! the lines land in the warehouse exactly once, resends included.
//!
//! The clients come from a Python with `boto3` and `awscli`: `TOLLSTREAM_TEST_PYTHON`, or
//! the virtual environment `.ci/run` makes (`/opt/tollstream-ci-venv`). Without one the
//! tests fail and say how to get it; `TOLLSTREAM_SKIP_AWS_TESTS=1` skips them instead, for
//! a machine that cannot have it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

use tollstream_tests::harness::wait_for;
use tollstream_tests::sim::{Mode, SimConfig, Simulator};

use crate::fixture::{ARRIVAL_TIMEOUT, Pipeline};

/// The access key the tests configure (its secret is in a file next to the config).
const KEY_ID: &str = "AKIDTOLLSTREAME2E";
const SECRET: &str = "e2e/firehose+Secret0123456789abcdefXYZ";
/// The Python with boto3 and awscli that `.ci/run` installs.
const CI_VENV_PYTHON: &str = "/opt/tollstream-ci-venv/bin/python";
/// Lines the boto3 test sends.
const LINES: u64 = 3_000;

/// The Python to drive boto3 and the AWS CLI with, or `None` when the tests are skipped by
/// request.
fn python() -> anyhow::Result<Option<PathBuf>> {
    let python = std::env::var_os("TOLLSTREAM_TEST_PYTHON")
        .map_or_else(|| PathBuf::from(CI_VENV_PYTHON), PathBuf::from);
    let usable = Command::new(&python)
        .args(["-c", "import boto3, awscli"])
        .output()
        .is_ok_and(|o| o.status.success());
    if usable {
        return Ok(Some(python));
    }
    if std::env::var_os("TOLLSTREAM_SKIP_AWS_TESTS").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED: {} has no boto3/awscli and TOLLSTREAM_SKIP_AWS_TESTS=1",
            python.display()
        );
        return Ok(None);
    }
    anyhow::bail!(
        "the Firehose tests need a Python with boto3 and awscli, and {} has not both: make \
         the one .ci/run makes (python3 -m venv /opt/tollstream-ci-venv && \
         /opt/tollstream-ci-venv/bin/pip install boto3 awscli, versions as in .ci/run), or set \
         TOLLSTREAM_TEST_PYTHON to a python that has both; TOLLSTREAM_SKIP_AWS_TESTS=1 skips \
         these tests instead",
        python.display()
    )
}

/// A pipeline whose collector serves the Firehose API with [`KEY_ID`], and a line limit
/// (4 KiB) that the partial-failure check goes over.
fn start() -> anyhow::Result<Pipeline> {
    Pipeline::start_full(
        |dir, setup| {
            std::fs::write(dir.join("firehose.secret"), format!("{SECRET}\n"))?;
            setup.extra = format!(
                "ingest:\n  max_line_bytes: 4KiB\nfirehose:\n  access_keys:\n    - \
                 access_key_id: {KEY_ID}\n      secret_key_file: firehose.secret\n"
            );
            Ok(())
        },
        Ok,
        |_| (),
        |_| Ok(()),
    )
}

/// `count` simulated toll lines and their transaction ids.
fn toll_lines(count: u64) -> anyhow::Result<(Vec<u8>, BTreeSet<String>)> {
    let mut simulator = Simulator::new(&SimConfig::default(), Mode::Count { lines: count })?;
    let mut text = Vec::new();
    while simulator.next_into(&mut text).is_some() {}
    let ids = String::from_utf8(text.clone())?
        .lines()
        .filter_map(|l| l.split(',').nth(1).map(str::to_owned))
        .collect();
    Ok((text, ids))
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// The warehouse's transaction ids and sources.
fn loaded(pipeline: &Pipeline) -> anyhow::Result<Vec<(String, String)>> {
    pipeline
        .warehouse()?
        .pairs("SELECT transaction_id, source FROM toll_transactions ORDER BY transaction_id")
}

#[test]
fn boto3_puts_toll_lines_that_land_in_the_warehouse_exactly_once() -> anyhow::Result<()> {
    let Some(python) = python()? else {
        return Ok(());
    };
    let mut pipeline = start()?;
    let (text, ids) = toll_lines(LINES)?;
    assert_eq!(ids.len() as u64, LINES, "the simulator's ids are unique");
    let lines_file = pipeline.dir.path().join("firehose-lines.txt");
    std::fs::write(&lines_file, &text)?;
    let script = pipeline.dir.path().join("firehose_client.py");
    std::fs::write(&script, include_str!("firehose_client.py"))?;
    let endpoint = format!("http://127.0.0.1:{}", pipeline.collector_port);
    let output = run(Command::new(&python)
        .arg(&script)
        .args([endpoint.as_str(), KEY_ID, SECRET, "toll-transactions"])
        .arg(&lines_file))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    eprintln!("firehose_client.py: {report}");
    let resent = report["resent_lines"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no resent_lines in {report}"))?;

    pipeline.wait_loaded(LINES, 0)?;
    // The resent lines reached the WAL and the loader a second time; the natural key kept
    // them out of the table, and the manifest counts each one it dropped.
    let warehouse = pipeline.warehouse()?;
    let mut duplicates = 0;
    let counted = wait_for("the resent lines to be counted", ARRIVAL_TIMEOUT, || {
        duplicates = warehouse
            .count("SELECT COALESCE(SUM(duplicates), 0) FROM loads")
            .unwrap_or(-1);
        duplicates >= resent
    });
    counted.map_err(|e| e.context(format!("duplicates counted: {duplicates} of {resent}")))?;
    let requests = pipeline
        .collector_metric(
            "tollstream_collector_firehose_requests_total",
            "outcome=\"InvalidSignatureException\"",
        )
        .unwrap_or(0.0);
    assert_eq!(requests, 1.0, "the wrong secret is counted");
    let accepted = pipeline
        .collector_metric(
            "tollstream_collector_firehose_records_total",
            "result=\"accepted\"",
        )
        .unwrap_or(0.0);
    assert!(
        accepted >= (LINES as f64) / 3.0,
        "accepted records counted: {accepted}"
    );
    pipeline.stop()?;

    let rows = loaded(&pipeline)?;
    assert_eq!(rows.len() as u64, LINES, "rows in the warehouse");
    let got: BTreeSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, ids, "exactly the transaction ids sent");
    let source = format!("firehose:{KEY_ID}");
    assert!(
        rows.iter().all(|(_, s)| *s == source),
        "every row's source is {source}"
    );
    assert_eq!(
        duplicates, resent,
        "each resent line dropped once by the natural key"
    );
    let rejected = warehouse.count("SELECT COUNT(*) FROM rejected_records")?;
    assert_eq!(rejected, 0, "no refused record reached the warehouse");
    Ok(())
}

#[test]
fn the_aws_cli_sends_a_record_and_a_wrong_secret_is_refused() -> anyhow::Result<()> {
    let Some(python) = python()? else {
        return Ok(());
    };
    let aws = python
        .parent()
        .map(|bin| bin.join("aws"))
        .filter(|aws| aws.is_file())
        .ok_or_else(|| anyhow::anyhow!("no `aws` next to {}", python.display()))?;
    let mut pipeline = start()?;
    let (text, ids) = toll_lines(2)?;
    let text = String::from_utf8(text)?;
    let endpoint = format!("http://127.0.0.1:{}", pipeline.collector_port);
    let cli = |secret: &str, args: &[&str]| {
        let mut command = Command::new(&aws);
        command
            .args([
                "firehose",
                "--endpoint-url",
                endpoint.as_str(),
                "--output",
                "json",
            ])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", pipeline.dir.path())
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1");
        command
    };
    let listed = run(&mut cli(SECRET, &["list-delivery-streams"]))?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(listed["DeliveryStreamNames"][0], "toll-transactions");
    // The AWS CLI v1 takes --record Data=… as the raw bytes and base64-encodes them itself
    // (v2 would expect base64 unless given --cli-binary-format raw-in-base64-out).
    // The JSON form: the shorthand Data=… would split a CSV line at its commas.
    for line in text.lines() {
        let record = serde_json::json!({ "Data": line }).to_string();
        let put = run(&mut cli(
            SECRET,
            &[
                "put-record",
                "--delivery-stream-name",
                "toll-transactions",
                "--record",
                &record,
            ],
        ))?;
        let put: serde_json::Value = serde_json::from_slice(&put.stdout)?;
        assert!(put["RecordId"].is_string(), "{put}");
    }
    let refused = cli(
        "not-the-secret",
        &[
            "put-record",
            "--delivery-stream-name",
            "toll-transactions",
            "--record",
            r#"{"Data": "never,stored"}"#,
        ],
    )
    .output()?;
    assert!(!refused.status.success(), "a wrong secret is refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("InvalidSignatureException"), "{stderr}");
    pipeline.wait_loaded(2, 0)?;
    pipeline.stop()?;
    let got: BTreeSet<String> = loaded(&pipeline)?.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids);
    Ok(())
}
