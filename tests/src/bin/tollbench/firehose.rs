//! `firehose`: N concurrent Firehose producers → a real collector's Kinesis Firehose API
//! (fsync, SQLite), each sending `PutRecordBatch` requests of 500 records (one toll line a
//! record, as Fluent Bit and the SDK examples send them), signed with SigV4 per request.
//! Measures records/s from the first request to the last answer, answer latency p50/p99, the
//! collector's CPU and peak RSS; then waits until the warehouse holds every line. Compare
//! with `ingest --batch-records 500`: the same lines through the native API.
//!
//! The signer here is written from AWS's description of SigV4, independently of the
//! collector's verifier, so a run also checks that the two agree.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use base64::Engine;
use ring::{digest, hmac};
use serde_json::{Value, json};
use tollstream_tests::harness::{
    CollectorSetup, Daemon, Usage, WarehouseView, binary, free_port, http_get, wait_for,
    write_collector_config,
};
use tollstream_tests::sim::{Mode, SimConfig, Simulator};

const KEY_ID: &str = "AKIDTOLLBENCH";
const SECRET: &str = "tollbench/Secret+0123456789abcdefghij";
/// Records per request: Firehose's maximum.
const RECORDS_PER_REQUEST: usize = 500;
const TARGET: &str = "Firehose_20150804.PutRecordBatch";

/// One prepared request body.
struct Request {
    body: Bytes,
    /// Hex SHA-256 of the body.
    payload_hash: String,
    /// Lines (= records) in it.
    records: u64,
    /// Bytes of those lines.
    raw_len: u64,
}

/// One run per number of producers in `producers`.
///
/// # Errors
/// A collector that does not start, a request refused for good, rows that do not add up.
pub fn firehose(
    dir: &Path,
    lines: u64,
    producers: &[usize],
    buffer_max_age: &'static str,
) -> anyhow::Result<Vec<Value>> {
    let requests = Arc::new(prepare(lines)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    producers
        .iter()
        .map(|&n| run(&runtime, dir, &requests, n, buffer_max_age))
        .collect()
}

fn prepare(lines: u64) -> anyhow::Result<Vec<Request>> {
    let mut simulator = Simulator::new(&SimConfig::default(), Mode::Count { lines })?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut requests = Vec::new();
    let mut line = Vec::new();
    loop {
        let mut records = Vec::with_capacity(RECORDS_PER_REQUEST);
        let mut raw_len = 0u64;
        while records.len() < RECORDS_PER_REQUEST {
            line.clear();
            if simulator.next_into(&mut line).is_none() {
                break;
            }
            raw_len += line.len() as u64;
            records.push(json!({ "Data": engine.encode(&line) }));
        }
        if records.is_empty() {
            return Ok(requests);
        }
        let count = records.len() as u64;
        let body = serde_json::to_vec(
            &json!({ "DeliveryStreamName": "toll-transactions", "Records": records }),
        )?;
        requests.push(Request {
            payload_hash: hex(digest::digest(&digest::SHA256, &body).as_ref()),
            body: Bytes::from(body),
            records: count,
            raw_len,
        });
    }
}

fn run(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    requests: &Arc<Vec<Request>>,
    producers: usize,
    buffer_max_age: &'static str,
) -> anyhow::Result<Value> {
    if producers == 0 {
        bail!("0 producers send nothing; give --agents 1 or more");
    }
    // A smoke run has fewer requests (40) than the largest default count of producers (100):
    // more producers than requests would only sit idle.
    let producers = producers.min(requests.len());
    let work = dir.join(format!("firehose-{producers}"));
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("firehose.secret"), format!("{SECRET}\n"))?;
    let (port, metrics_port) = (free_port()?, free_port()?);
    let config = write_collector_config(
        &work,
        &CollectorSetup {
            port,
            metrics_port: Some(metrics_port),
            buffer_max_bytes: "8MiB",
            buffer_max_age,
            extra: format!(
                "firehose:\n  access_keys:\n    - {{ access_key_id: {KEY_ID}, secret_key_file: \
                 firehose.secret }}\n"
            ),
            ..CollectorSetup::default()
        },
    )?;
    let mut collector = Daemon::new(
        "collector",
        binary("tollstream-collector")?,
        config,
        work.join("collector.log"),
    );
    collector.start()?;
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    wait_for("the collector to start", Duration::from_secs(30), || {
        http_get(metrics_addr, "/healthz").is_some()
    })
    .map_err(|e| e.context(collector.log_tail(20)))?;
    let warehouse_path = work.join("collector-data/warehouse.db");
    wait_for("the warehouse", Duration::from_secs(30), || {
        warehouse_path.exists()
    })?;
    let warehouse = WarehouseView::open(&warehouse_path)?;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let before = collector.usage().context("collector usage")?;
    let client_before = Usage::of(std::process::id()).unwrap_or_default();
    let started = Instant::now();
    let outcome = runtime.block_on(async {
        let mut running = tokio::task::JoinSet::new();
        for producer in 0..producers {
            running.spawn(produce(port, requests.clone(), producer, producers));
        }
        let mut latencies = Vec::new();
        while let Some(part) = running.join_next().await {
            latencies.extend(part??);
        }
        anyhow::Ok(latencies)
    });
    let seconds = started.elapsed().as_secs_f64();
    let during = collector.usage().unwrap_or(before);
    let client_after = Usage::of(std::process::id()).unwrap_or_default();
    let mut latencies = outcome.map_err(|e| e.context(collector.log_tail(20)))?;
    let records: u64 = requests.iter().map(|r| r.records).sum();
    let raw_bytes: u64 = requests.iter().map(|r| r.raw_len).sum();
    let sent_bytes: u64 = requests.iter().map(|r| r.body.len() as u64).sum();
    let mut rows = 0;
    wait_for(
        "every record in the warehouse",
        Duration::from_secs(120 + records / 5_000),
        || {
            rows = warehouse
                .count("SELECT COUNT(*) FROM toll_transactions")
                .unwrap_or(0) as u64;
            rows >= records || !collector.is_running()
        },
    )
    .map_err(|e| e.context(format!("{rows} of {records} loaded")))?;
    let load_lag = started.elapsed().as_secs_f64() - seconds;
    collector.terminate(Duration::from_secs(60))?;
    if rows != records {
        bail!("{producers} producers: the warehouse holds {rows} rows, {records} were sent");
    }
    latencies.sort_unstable();
    let ms = |q: f64| {
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1e3
    };
    let cpu = during.cpu_seconds - before.cpu_seconds;
    Ok(json!({
        "scenario": "firehose",
        "name": format!("firehose: {producers} producer{} → PutRecordBatch", if producers == 1 { "" } else { "s" }),
        "producers": producers,
        "requests": requests.len(),
        "records_per_request": RECORDS_PER_REQUEST,
        "records": records,
        "seconds": seconds,
        "lines_per_sec": records as f64 / seconds,
        "mb_per_sec": raw_bytes as f64 / 1e6 / seconds,
        "mb_per_sec_sent": sent_bytes as f64 / 1e6 / seconds,
        "ack_p50_ms": ms(0.50),
        "ack_p99_ms": ms(0.99),
        "collector_cpu_s": cpu,
        "cpu_us_per_line": cpu * 1e6 / records as f64,
        "peak_rss_mb": during.peak_rss_bytes as f64 / 1e6,
        "client_cpu_s": client_after.cpu_seconds - client_before.cpu_seconds,
        "load_lag_s": load_lag,
        "warehouse_rows": rows,
    }))
}

/// Producer `index` of `count`: sends requests `index, index + count, …` one after another,
/// retrying 503s after their `Retry-After`; the latency of each accepted request.
async fn produce(
    port: u16,
    requests: Arc<Vec<Request>>,
    index: usize,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?;
    let url = format!("http://127.0.0.1:{port}/");
    let host = format!("127.0.0.1:{port}");
    let mut latencies = Vec::new();
    for request in requests.iter().skip(index).step_by(count) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (date, authorization) = sign(&host, &request.payload_hash);
            let sent = Instant::now();
            let answer = client
                .post(&url)
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amz-date", &date)
                .header("x-amz-target", TARGET)
                .header("authorization", authorization)
                .body(request.body.clone())
                .send()
                .await?;
            let status = answer.status().as_u16();
            let retry_after = answer
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let text = answer.text().await?;
            if status == 200 {
                let value: Value = serde_json::from_str(&text)?;
                if value["FailedPutCount"] != 0 {
                    bail!("producer {index}: records failed: {text}");
                }
                latencies.push(sent.elapsed());
                break;
            }
            if status != 503 || attempts >= 20 {
                bail!("producer {index}: answer {status}: {text}");
            }
            tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
        }
    }
    Ok(latencies)
}

/// `X-Amz-Date` and `Authorization` for a `PutRecordBatch` with this body hash, now.
fn sign(host: &str, payload_hash: &str) -> (String, String) {
    let now = jiff::Timestamp::now();
    let date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let day = &date[..8];
    let signed = "content-type;host;x-amz-date;x-amz-target";
    let canonical = format!(
        "POST\n/\n\ncontent-type:application/x-amz-json-1.1\nhost:{host}\nx-amz-date:{date}\n\
         x-amz-target:{TARGET}\n\n{signed}\n{payload_hash}"
    );
    let scope = format!("{day}/us-east-1/firehose/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{SECRET}").into_bytes();
    for part in [
        day,
        "us-east-1",
        "firehose",
        "aws4_request",
        to_sign.as_str(),
    ] {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={KEY_ID}/{scope}, SignedHeaders={signed}, Signature={}",
        hex(&key)
    );
    (date, authorization)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Firehose runs in detail, after the common table.
pub fn print_table(results: &[Value]) {
    let runs: Vec<&Value> = results
        .iter()
        .filter(|r| r["scenario"] == "firehose")
        .collect();
    if runs.is_empty() {
        return;
    }
    println!(
        "\n{:>9} {:>8} {:>10} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8}",
        "producers",
        "requests",
        "records/s",
        "MB/s",
        "sent MB/s",
        "p50 ms",
        "p99 ms",
        "coll CPU",
        "peak RSS",
        "load lag"
    );
    for r in runs {
        let num = |k: &str| r[k].as_f64().unwrap_or(0.0);
        println!(
            "{:>9} {:>8} {:>10.0} {:>8.1} {:>9.1} {:>8.1} {:>8.1} {:>7.1} s {:>6.0} MB {:>6.1} s",
            r["producers"].as_u64().unwrap_or(0),
            r["requests"].as_u64().unwrap_or(0),
            num("lines_per_sec"),
            num("mb_per_sec"),
            num("mb_per_sec_sent"),
            num("ack_p50_ms"),
            num("ack_p99_ms"),
            num("collector_cpu_s"),
            num("peak_rss_mb"),
            num("load_lag_s"),
        );
    }
}
