//! A full disk under the collector: its data directory on a small tmpfs that the test
//! mounts (this needs root, as CI runs), filled with ballast. Ingest answers 503 with
//! `Retry-After`, the collector keeps running, the agent waits with its lines safe in the
//! log file, and once the ballast is removed everything loads by itself, exactly once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tollstream_tests::harness::{http_get, wait_for};

use crate::fixture::{EXIT_TIMEOUT, Pipeline, append, line};

/// A tmpfs of a fixed size mounted for the length of a test.
struct SmallFs {
    mount: PathBuf,
}

impl SmallFs {
    fn mount(at: &Path, size_mib: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .context("running mount")?;
        anyhow::ensure!(
            status.success(),
            "mounting a {size_mib} MiB tmpfs at {} failed ({status}): this test needs root \
             (or CAP_SYS_ADMIN), as CI has",
            at.display()
        );
        Ok(Self {
            mount: at.to_path_buf(),
        })
    }

    /// Bytes free, as the collector sees them.
    fn free(&self) -> anyhow::Result<u64> {
        let stat = rustix::fs::statvfs(&self.mount)?;
        Ok(stat.f_bavail * stat.f_frsize)
    }

    /// Writes a ballast file that leaves about `leave` bytes free.
    fn fill(&self, leave: u64) -> anyhow::Result<PathBuf> {
        let path = self.mount.join("ballast");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let chunk = vec![0u8; 64 * 1024];
        while self.free()? > leave + chunk.len() as u64 {
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
        Ok(path)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy, so a daemon still holding files cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn disk_full_refusals(pipeline: &Pipeline) -> f64 {
    pipeline
        .collector_metric(
            "tollstream_collector_ingest_errors_total",
            "reason=\"disk_full\"",
        )
        .unwrap_or(0.0)
}

#[test]
fn a_full_disk_refuses_batches_with_503_and_everything_loads_once_space_returns()
-> anyhow::Result<()> {
    let mut small = None;
    let mut pipeline = Pipeline::start_full(
        |dir, setup| {
            let fs = SmallFs::mount(&dir.join("small"), 40)?;
            setup.data_dir = Some(fs.mount.join("data"));
            // First without the reserve: the WAL, archive and warehouse writes themselves
            // run into ENOSPC.
            setup.extra = "disk:\n  min_free_bytes: 0\nwal:\n  segment_bytes: 256KiB\n".into();
            small = Some(fs);
            Ok(())
        },
        Ok,
        |_| (),
        |_| Ok(()),
    )?;
    let fs = small.context("the small file system was not mounted")?;
    let log = pipeline.dir.path().join("logs").join("booth.log");
    append(&log, &(0..1000).map(line).collect::<Vec<_>>())?;
    pipeline.wait_loaded(1000, 0)?;

    let ballast = fs.fill(1 << 20)?;
    append(&log, &(1000..40_000).map(line).collect::<Vec<_>>())?;
    wait_for(
        "the collector to refuse a batch for lack of space",
        Duration::from_secs(120),
        || disk_full_refusals(&pipeline) >= 1.0,
    )?;
    let collector_log = std::fs::read_to_string(pipeline.dir.path().join("collector.log"))?;
    assert!(
        collector_log.contains("No space left on device"),
        "the refusal came from a real ENOSPC"
    );
    assert!(
        pipeline.collector.is_running(),
        "the collector kept running"
    );
    let health = http_get(([127, 0, 0, 1], pipeline.collector_port).into(), "/healthz");
    assert_eq!(health.map(|(s, _)| s), Some(200));
    std::fs::remove_file(&ballast)?;
    pipeline.wait_loaded(40_000, 0)?;

    // Then with the reserve (the recommended setting): ingest stops before the disk is full,
    // /readyz says why, and the pipeline behind the WAL still has room to drain.
    pipeline.collector.terminate(EXIT_TIMEOUT)?;
    let config = pipeline.dir.path().join("collector.yaml");
    let text =
        std::fs::read_to_string(&config)?.replace("min_free_bytes: 0", "min_free_bytes: 8MiB");
    std::fs::write(&config, text)?;
    pipeline.collector.start()?;
    pipeline.wait_collector_ready()?;
    let before = disk_full_refusals(&pipeline);
    let ballast = fs.fill(9 << 20)?;
    // Lines in steps until the reserve refuses one: ~1 MiB of WAL is room for ~10,000.
    let mut written = 40_000;
    while disk_full_refusals(&pipeline) <= before && written < 90_000 {
        append(
            &log,
            &(written..written + 5_000).map(line).collect::<Vec<_>>(),
        )?;
        written += 5_000;
        wait_for(
            "the agent to send what was written",
            Duration::from_secs(60),
            || {
                disk_full_refusals(&pipeline) > before
                    || pipeline
                        .agent_metric("tollstream_agent_lag_bytes", "")
                        .is_some_and(|lag| lag == 0.0)
            },
        )?;
    }
    let readyz = ([127, 0, 0, 1], pipeline.collector_port).into();
    let mut body = String::new();
    wait_for(
        "/readyz to report the disk below its reserve",
        Duration::from_secs(120),
        || match http_get(readyz, "/readyz") {
            Some((503, text)) if text.contains("disk.min_free_bytes") => {
                body = text;
                true
            }
            _ => false,
        },
    )?;
    // The agent's next retry (after Retry-After) is refused for the same reason.
    wait_for(
        "a batch refused for the reserve",
        Duration::from_secs(60),
        || disk_full_refusals(&pipeline) > before,
    )
    .with_context(|| body.clone())?;
    assert!(
        fs.free()? > 2 << 20,
        "the reserve held: {} bytes free",
        fs.free()?
    );
    std::fs::remove_file(&ballast)?;
    pipeline.wait_loaded(written as u64, 0)?;
    wait_for("/readyz to recover", Duration::from_secs(30), || {
        http_get(readyz, "/readyz").is_some_and(|(s, _)| s == 200)
    })?;
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(DISTINCT transaction_id) FROM toll_transactions")?,
        written as i64
    );
    assert_eq!(
        warehouse.count("SELECT COALESCE(SUM(duplicates), 0) FROM loads")?,
        0
    );
    drop(fs);
    drop(pipeline);
    Ok(())
}
