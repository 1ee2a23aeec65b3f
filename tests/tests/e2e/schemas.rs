//! A stream defined only in the collector's config — JSON lines, its own columns and key —
//! goes from a watched file through the real agent and collector into its own table; the
//! config then grows a column (added to the table, old rows keep NULL), and a change that
//! would alter what stored values mean stops the collector with a message saying so.

use tollstream_tests::harness::wait_for;

use crate::fixture::{ARRIVAL_TIMEOUT, EXIT_TIMEOUT, Pipeline, append};

/// The `payments` stream as YAML under `streams:`; `extra` adds column entries.
fn payments(scale: u32, extra: &str) -> String {
    format!(
        "  payments:\n    table: payments\n    buffer: {{ max_bytes: 1MiB, max_age: 1s }}\n    schema:\n      format: json\n      unique_key: payment_id\n      columns:\n\
         \x20       - {{ name: payment_id, type: uuid }}\n\
         \x20       - {{ name: amount, type: decimal, scale: {scale}, column: amount_cents }}\n\
         \x20       - {{ name: settled, type: boolean }}\n\
         \x20       - {{ name: at, type: timestamp, index: true }}\n{extra}"
    )
}

fn payment(n: usize, extra: &str) -> String {
    format!(
        r#"{{"payment_id":"0b9a3c4e-6f1d-4e8a-9a51-{n:012}","amount":"{n}.25","settled":{},"at":"2026-11-25T14:03:27.512-03:00"{extra}}}{}"#,
        n.is_multiple_of(2),
        '\n'
    )
}

#[test]
fn a_stream_defined_in_the_config_lands_in_its_own_table_and_follows_the_config()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_full(
        |_, setup| {
            setup.extra_streams = payments(2, "");
            Ok(())
        },
        Ok,
        |agent| agent.stream = "payments",
        |_| Ok(()),
    )?;
    let log = pipeline.dir.path().join("logs/payments.log");
    let mut lines: Vec<String> = (1..=50).map(|n| payment(n, "")).collect();
    lines.push(
        r#"{"payment_id":"not a uuid","amount":1,"settled":true,"at":"2026-11-25T14:03:27Z"}"#
            .to_string()
            + "\n",
    );
    lines.push(payment(7, "")); // The same payment again: kept out by the key.
    append(&log, &lines)?;
    let warehouse = pipeline.warehouse()?;
    wait_for("50 payments and 1 rejected line", ARRIVAL_TIMEOUT, || {
        warehouse
            .count("SELECT COUNT(*) FROM payments")
            .unwrap_or(0)
            == 50
            && warehouse
                .count("SELECT COUNT(*) FROM rejected_records WHERE stream = 'payments'")
                .unwrap_or(0)
                == 1
            && warehouse
                .count("SELECT COALESCE(SUM(duplicates), 0) FROM loads WHERE stream = 'payments'")
                .unwrap_or(0)
                == 1
    })?;
    assert_eq!(
        warehouse.count("SELECT SUM(amount_cents) FROM payments")?,
        (1..=50).map(|n| n * 100 + 25).sum::<i64>()
    );
    assert_eq!(warehouse.count("SELECT SUM(settled) FROM payments")?, 25);
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        0
    );

    // A change of scale would make stored cents mean something else: refused at start.
    pipeline.stop()?;
    let config_path = pipeline.dir.path().join("collector.yaml");
    let config = std::fs::read_to_string(&config_path)?;
    let rescaled = config.replace(&payments(2, ""), &payments(3, ""));
    anyhow::ensure!(rescaled != config, "the test's config edit applies");
    std::fs::write(&config_path, &rescaled)?;
    pipeline.collector.start()?;
    wait_for("the collector to refuse the config", EXIT_TIMEOUT, || {
        !pipeline.collector.is_running()
    })?;
    let status = pipeline.collector.try_exit();
    anyhow::ensure!(
        status.is_some_and(|s| !s.success()),
        "the collector should exit with an error, got {status:?}"
    );
    let log_text = pipeline.collector.log_since_start();
    anyhow::ensure!(
        log_text.contains(
            "table payments stores column amount_cents as decimal with scale 2 but the config now says decimal with scale 3"
        ),
        "the refusal says what and why: {log_text}"
    );

    // A new column is added to the table; rows loaded before have none.
    let wider = config.replace(
        &payments(2, ""),
        &payments(2, "        - { name: booth, type: text, optional: true }\n"),
    );
    std::fs::write(&config_path, wider)?;
    pipeline.collector.start()?;
    pipeline.wait_collector_ready()?;
    pipeline.agent.start()?;
    let more: Vec<String> = (51..=60)
        .map(|n| payment(n, r#","booth":"PLZ-017""#))
        .collect();
    append(&log, &more)?;
    wait_for("60 payments", ARRIVAL_TIMEOUT, || {
        warehouse
            .count("SELECT COUNT(*) FROM payments")
            .unwrap_or(0)
            == 60
    })?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM payments WHERE booth = 'PLZ-017'")?,
        10
    );
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM payments WHERE booth IS NULL")?,
        50
    );
    assert_eq!(
        warehouse.count(
            "SELECT MAX(version) FROM tollstream_table_versions WHERE table_name = 'payments'"
        )?,
        2
    );
    pipeline.stop()?;
    Ok(())
}
