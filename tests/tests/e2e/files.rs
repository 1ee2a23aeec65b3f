//! What happens to the files under the agent: rotation by rename, truncation in place,
//! where reading starts in files the agent has never seen, and which files its globs (`**`
//! included) and excludes pick.

use std::time::Duration;

use anyhow::Context;

use tollstream_tests::harness::wait_for;

use crate::fixture::{EXIT_TIMEOUT, Pipeline};
use crate::fixture::{append, line};

#[test]
fn rename_rotation_with_late_writes_to_the_old_file_loses_and_duplicates_nothing()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(60_000, 0)?;
    for round in 1..=2 {
        writer.write(15_000)?;
        // logrotate's default: rename, then the writer keeps appending to the renamed file
        // until it reopens its log.
        for path in pipeline.log_files(3) {
            std::fs::rename(&path, path.with_extension(format!("log.{round}")))?;
        }
        writer.write(5_000)?;
        writer.reopen()?;
        writer.write(5_000)?;
        // The agent must have seen the new files before they are rotated out of its globs
        // in turn: a file that matched for a moment and was never opened cannot be followed
        // (on a loaded CI machine the second rotation once came first).
        pipeline.wait_rows_at_least(25_000 * round)?;
    }
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)
}

#[test]
fn a_file_truncated_in_place_is_read_again_from_the_start() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let path = pipeline.dir.path().join("logs").join("booth.log");
    let lines: Vec<String> = (0..3000).map(line).collect();
    std::fs::write(&path, lines[..1000].concat())?;
    pipeline.wait_loaded(1000, 0)?;
    // Truncated and written again with more than before, as between two reads.
    std::fs::write(&path, lines[1000..2500].concat())?;
    pipeline.wait_loaded(2500, 0)?;
    // Truncated to nothing, then written.
    std::fs::write(&path, "")?;
    std::fs::write(&path, lines[2500..].concat())?;
    pipeline.wait_loaded(3000, 0)?;
    // The operator is told: a WARN naming the file, and the truncations counted.
    let truncations = pipeline
        .agent_metric("tollstream_agent_truncations_total", "")
        .context("agent metrics")?;
    assert!(
        truncations >= 1.0,
        "tollstream_agent_truncations_total is {truncations}"
    );
    let log = pipeline.agent.log_since_start();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("truncated or rewritten"))
        .collect();
    assert!(
        !warnings.is_empty() && warnings.iter().all(|l| l.contains("booth.log")),
        "a WARN naming the truncated file; the agent's warnings: {warnings:?}"
    );
    eprintln!(
        "truncation: 2 truncations, counted {truncations}, {} WARN lines",
        warnings.len()
    );
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        3000
    );
    assert_eq!(warehouse.count("SELECT SUM(duplicates) FROM loads")?, 0);
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM rejected_records")?,
        0,
        "no fragment of a rewritten file was shipped"
    );
    Ok(())
}

#[test]
fn start_at_end_skips_only_what_existed_before_the_first_start() -> anyhow::Result<()> {
    let old: Vec<String> = (0..500).map(line).collect();
    let mut pipeline = Pipeline::start_prepared(
        |setup| setup.start_at = "end",
        |dir| {
            Ok(std::fs::write(
                dir.join("logs").join("a.log"),
                old.concat(),
            )?)
        },
    )?;
    let a = pipeline.dir.path().join("logs").join("a.log");
    let b = pipeline.dir.path().join("logs").join("b.log");
    let new: Vec<String> = (500..1500).map(line).collect();
    // Appending is only seen once the agent follows the file: wait for it to say so.
    let agent_log = pipeline.dir.path().join("agent.log");
    wait_for("the agent to follow a.log", Duration::from_secs(30), || {
        std::fs::read_to_string(&agent_log).is_ok_and(|log| log.contains("Following file"))
    })?;
    append(&a, &new[..300])?;
    pipeline.wait_loaded(300, 0)?;
    // A file created while the agent is down (a rotation) is read from its start after the
    // restart: `start_at: end` was about the first start only.
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    append(&a, &new[300..400])?;
    std::fs::write(&b, new[400..].concat())?;
    pipeline.agent.start()?;
    pipeline.wait_loaded(1000, 0)?;
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        1000,
        "none of the 500 old lines, all 1000 new ones"
    );
    Ok(())
}

#[test]
fn status_commands_report_where_each_file_and_stage_stands() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let mut writer = pipeline.writer(3_000, 3)?;
    writer.write_all()?;
    let written = writer.into_summary();
    pipeline.wait_loaded(written.valid_lines, 3)?;
    let run = |bin: &str, config: &str| -> anyhow::Result<String> {
        let output = std::process::Command::new(tollstream_tests::harness::binary(bin)?)
            .args(["status", "--config"])
            .arg(pipeline.dir.path().join(config))
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "{bin} status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    // The checkpoint is written every second: wait until it shows everything acknowledged.
    let mut agent_status = String::new();
    wait_for(
        "agent status to show nothing left to acknowledge",
        Duration::from_secs(30),
        || {
            agent_status = run("tollstream-agent", "agent.yaml").unwrap_or_default();
            agent_status.contains("3 files, 0 bytes not yet acknowledged")
        },
    )
    .map_err(|e| e.context(agent_status.clone()))?;
    assert_eq!(agent_status.matches("booths-").count(), 3, "{agent_status}");
    let collector_status = run("tollstream-collector", "collector.yaml")?;
    for expected in [
        "stream toll-transactions → table toll_transactions".to_string(),
        "buffer     0 records (0 lines, 0 bytes) in the WAL not yet archived".into(),
        "backlog    0 archive objects not yet loaded".into(),
        format!(", {} rows, 0 duplicate keys", written.valid_lines),
        "rejected   3 lines in ".into(),
        "freshness  newest loaded record received ".into(),
    ] {
        assert!(
            collector_status.contains(&expected),
            "{expected:?} in\n{collector_status}"
        );
    }
    let numbers = |json: &serde_json::Value| -> anyhow::Result<()> {
        let stream = &json["streams"][0];
        let text = stream.to_string();
        let at = |path: &[&str]| -> u64 {
            path.iter()
                .fold(stream, |v, key| &v[*key])
                .as_u64()
                .unwrap_or(u64::MAX)
        };
        anyhow::ensure!(
            at(&["warehouse", "rows"]) == written.valid_lines,
            "rows: {text}"
        );
        anyhow::ensure!(at(&["warehouse", "duplicates"]) == 0, "duplicates: {text}");
        anyhow::ensure!(at(&["rejected", "lines"]) == 3, "rejected: {text}");
        let loads_with_rejects = at(&["rejected", "loads"]);
        anyhow::ensure!(
            (1..=3).contains(&loads_with_rejects)
                && at(&["rejected", "errors_objects"]) == loads_with_rejects,
            "one errors object per load with rejected lines: {text}"
        );
        // Everything received is archived and loaded: the stages agree on the last record.
        let last = at(&["wal", "last_seq"]);
        anyhow::ensure!(last > 0 && last != u64::MAX, "wal: {text}");
        anyhow::ensure!(
            at(&["archive", "archived_through"]) == last,
            "archive: {text}"
        );
        anyhow::ensure!(
            at(&["archive", "last_object", "last_seq"]) == last,
            "object: {text}"
        );
        anyhow::ensure!(
            at(&["warehouse", "loaded_through"]) == last,
            "loaded: {text}"
        );
        anyhow::ensure!(
            at(&["warehouse", "last_load", "last_seq"]) == last,
            "last load: {text}"
        );
        anyhow::ensure!(at(&["archive", "not_loaded"]) == 0, "backlog: {text}");
        anyhow::ensure!(at(&["buffer", "records"]) == 0, "buffer: {text}");
        anyhow::ensure!(at(&["wal", "tail_bytes"]) == 0, "tail: {text}");
        let freshness = stream["warehouse"]["freshness_seconds"].as_f64();
        anyhow::ensure!(
            freshness.is_some_and(|age| (0.0..600.0).contains(&age)),
            "freshness: {text}"
        );
        anyhow::ensure!(
            stream["problems"].as_array().is_some_and(Vec::is_empty),
            "problems: {text}"
        );
        Ok(())
    };
    let config = pipeline.dir.path().join("collector.yaml");
    let json = |command: &str| -> anyhow::Result<serde_json::Value> {
        let output = std::process::Command::new(tollstream_tests::harness::binary(command)?)
            .args(["status", "--json", "--config"])
            .arg(&config)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    numbers(&json("tollstream-collector")?)?;
    pipeline.stop()?;
    // With the collector stopped: the same numbers, and nothing created or changed.
    let data = pipeline.dir.path().join("collector-data");
    let listing = || -> anyhow::Result<Vec<(String, u64)>> {
        let mut files = Vec::new();
        let mut stack = vec![data.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    files.push((entry.path().display().to_string(), meta.len()));
                }
            }
        }
        files.sort();
        Ok(files)
    };
    let before = listing()?;
    numbers(&json("tollstream-collector")?)?;
    assert_eq!(
        listing()?,
        before,
        "status changed nothing in the data directory"
    );
    Ok(())
}

#[test]
fn a_file_rewritten_with_the_same_first_line_is_noticed_by_the_bytes_before_the_offset()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let path = pipeline.dir.path().join("logs").join("booth.log");
    let lines: Vec<String> = (0..2000).map(line).collect();
    std::fs::write(&path, lines[..1000].concat())?;
    pipeline.wait_loaded(1000, 0)?;
    // Rewritten in place: same first line, then other lines, longer than before. Only the
    // check of the bytes before the offset tells this from an append.
    let rewritten = [&lines[..1], &lines[1000..]].concat().concat();
    std::fs::write(&path, rewritten)?;
    pipeline.wait_loaded(2000, 0)?;
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        2000
    );
    assert_eq!(
        warehouse.count("SELECT SUM(duplicates) FROM loads")?,
        1,
        "only the shared first line reached the loader twice (the natural key dropped it)"
    );
    assert_eq!(warehouse.count("SELECT COUNT(*) FROM rejected_records")?, 0);
    Ok(())
}

/// A rewritten file's new generation must not give way to its first one when the agent
/// loses its checkpoint: the collector still holds generation 0's byte ranges, so lines
/// sent under that name again would be taken for ones it already has, and dropped.
#[test]
fn after_a_damaged_checkpoint_a_rewritten_file_loses_no_line_to_its_old_source_name()
-> anyhow::Result<()> {
    let mut pipeline =
        Pipeline::start_with(|agent| agent.flow_extra = "    skip_header_lines: 1\n")?;
    let path = pipeline.dir.path().join("logs").join("booth.csv.log");
    let header = "event_time,transaction_id,plaza,lane,card,tag,class,amount\n";
    let lines: Vec<String> = (0..130).map(line).collect();
    std::fs::write(&path, format!("{header}{}", lines[..40].concat()))?;
    pipeline.wait_loaded(40, 0)?;
    // Rewritten in place (same inode, birth time and header), shorter than before: a new
    // generation, read from its header on.
    std::fs::write(&path, format!("{header}{}", lines[100..110].concat()))?;
    pipeline.wait_loaded(50, 0)?;
    // The checkpoint is damaged while the agent is down.
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    let checkpoint = pipeline
        .dir
        .path()
        .join("agent-state")
        .join("checkpoints.json");
    anyhow::ensure!(checkpoint.exists(), "the agent wrote its checkpoint");
    std::fs::write(&checkpoint, "{\"version\":2,\"crc\":1,\"files\":{\"garbled")?;
    pipeline.agent.start()?;
    pipeline
        .agent
        .wait_started("Checkpoint file is damaged", Duration::from_secs(30))?;
    // Still below where generation 0 ended (40 lines): every line here would be taken
    // for one of generation 0's if the file were named by it again.
    append(&path, &lines[110..130])?;
    pipeline.wait_loaded(70, 0)?;
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        70
    );
    for n in (0..40).chain(100..130) {
        let id = format!("00000000-0000-4000-8000-{n:012}");
        assert_eq!(
            warehouse.count(&format!(
                "SELECT COUNT(*) FROM toll_transactions WHERE transaction_id = '{id}'"
            ))?,
            1,
            "line {n} arrived exactly once"
        );
    }
    assert_eq!(
        warehouse.count("SELECT SUM(duplicates) FROM loads")?,
        10,
        "the rewritten file was sent again under a new name after the damage: its 10 lines \
         from before reached the loader twice and the natural key dropped them"
    );
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM rejected_records")?,
        0,
        "no header sent"
    );
    // Three sources for the file (first content, rewrite, after the damage), all different.
    let agent_log = std::fs::read_to_string(pipeline.dir.path().join("agent.log"))?;
    let mut sources: Vec<&str> = agent_log
        .lines()
        .filter(|l| l.contains("Following file") && l.contains("booth.csv.log"))
        .filter_map(|l| l.split("source=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(sources.len(), 3, "{sources:?}");
    let latest = sources.last().copied().unwrap_or_default();
    sources.sort_unstable();
    sources.dedup();
    assert_eq!(sources.len(), 3, "no source name used twice: {sources:?}");
    // `agent status` shows the source in use now, and that state was forgotten.
    let status = std::process::Command::new(tollstream_tests::harness::binary("tollstream-agent")?)
        .args(["status", "--config"])
        .arg(pipeline.dir.path().join("agent.yaml"))
        .output()?;
    let status = String::from_utf8_lossy(&status.stdout);
    let key = latest.rsplit('/').next().unwrap_or_default();
    assert!(
        status.contains("state of some sources forgotten at") && status.contains(key),
        "{key} in\n{status}"
    );
    Ok(())
}

#[test]
fn long_lines_are_cut_and_counted_crlf_loads_and_invalid_utf8_is_rejected_not_lost()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let path = pipeline.dir.path().join("logs").join("booth.log");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(line(0).as_bytes());
    // 3 MiB without a newline, written in pieces, then its end: over max_line_bytes (1 MiB).
    let long = vec![b'x'; 3 << 20];
    bytes.extend_from_slice(&long[..1 << 20]);
    std::fs::write(&path, &bytes)?;
    let mut rest = long[1 << 20..].to_vec();
    rest.push(b'\n');
    rest.extend_from_slice(line(1).trim_end().as_bytes());
    rest.extend_from_slice(b"\r\n"); // CRLF
    rest.extend_from_slice(b"2026-11-25T14:03:27.512-03:00,\xff\xfe-not-utf8,PLZ-001\n");
    rest.extend_from_slice(line(2).as_bytes());
    append_bytes(&path, &rest)?;
    pipeline.wait_loaded(3, 2)?;
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        3
    );
    let rejected =
        warehouse.pairs("SELECT reason, line FROM rejected_records ORDER BY source_offset")?;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    let (_, cut) = &rejected[0];
    assert!(
        cut.len() < (1 << 20) + 200
            && cut.ends_with(
                "[cut by tollstream-agent: line of 3145729 bytes, max_line_bytes is 1048576]"
            ),
        "cut line ends with its marker: …{}",
        &cut[cut.len().saturating_sub(100)..]
    );
    assert!(rejected[1].0.contains("UTF-8"), "{:?}", rejected[1].0);
    Ok(())
}

fn append_bytes(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

#[test]
fn directories_created_later_and_symlinked_files_are_followed() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_with(|agent| {
        agent.paths = vec!["logs/late/*/*.log".into(), "logs/link.log".into()];
    })?;
    let logs = pipeline.dir.path().join("logs");
    let lines: Vec<String> = (0..600).map(line).collect();
    // A directory tree that did not exist when the agent started.
    std::fs::create_dir_all(logs.join("late").join("booth-7"))?;
    append(
        &logs.join("late").join("booth-7").join("a.log"),
        &lines[..200],
    )?;
    // A symlink to a file elsewhere.
    let target = pipeline.dir.path().join("elsewhere.log");
    append(&target, &lines[200..400])?;
    std::os::unix::fs::symlink(&target, logs.join("link.log"))?;
    pipeline.wait_loaded(400, 0)?;
    append(
        &logs.join("late").join("booth-7").join("a.log"),
        &lines[400..500],
    )?;
    append(&target, &lines[500..])?;
    pipeline.wait_loaded(600, 0)?;
    pipeline.stop()?;
    assert_eq!(
        pipeline
            .warehouse()?
            .count("SELECT SUM(duplicates) FROM loads")?,
        0
    );
    Ok(())
}

/// Writes `lines` gzip-compressed to `path`, as logrotate's `compress` leaves them.
fn write_gzip(path: &std::path::Path, lines: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(path)?, flate2::Compression::default());
    encoder.write_all(lines.concat().as_bytes())?;
    encoder.finish()?;
    Ok(())
}

#[test]
fn a_double_star_glob_follows_nested_directories_made_before_and_after_start_but_no_gz()
-> anyhow::Result<()> {
    let lines: Vec<String> = (0..700).map(line).collect();
    // Lines of the compressed files: other transaction ids, so any that arrived would show.
    let compressed: Vec<String> = (10_000..10_200).map(line).collect();
    let mut pipeline = Pipeline::start_prepared(
        |agent| {
            // `*.log*` also matches rotated copies such as `a.log.1.gz`: the exclude is
            // what keeps the agent out of the compressed ones.
            agent.paths = vec!["logs/**/*.log*".into()];
            agent.exclude = vec!["*.gz".into()];
        },
        |dir| {
            let lane = dir.join("logs").join("lane-1");
            std::fs::create_dir_all(lane.join("cam"))?;
            append(&dir.join("logs").join("top.log"), &lines[..100])?;
            append(&lane.join("a.log"), &lines[100..200])?;
            append(&lane.join("cam").join("b.log"), &lines[200..300])?;
            write_gzip(&lane.join("a.log.1.gz"), &compressed[..100])?;
            Ok(())
        },
    )?;
    let logs = pipeline.dir.path().join("logs");
    pipeline.wait_loaded(300, 0)?;
    // Two directory levels made after the start: a compressed file, then a log in them.
    let late = logs.join("late").join("deeper");
    std::fs::create_dir_all(&late)?;
    write_gzip(&late.join("c.log.gz"), &compressed[100..])?;
    append(&late.join("c.log"), &lines[300..400])?;
    // The files found at the start keep being followed.
    append(&logs.join("top.log"), &lines[400..500])?;
    append(
        &logs.join("lane-1").join("cam").join("b.log"),
        &lines[500..600],
    )?;
    pipeline.wait_loaded(600, 0)?;
    // So is the late one, after its first read.
    append(&late.join("c.log"), &lines[600..])?;
    pipeline.wait_loaded(700, 0)?;
    let mut followed: Vec<String> = pipeline
        .agent
        .log_since_start()
        .lines()
        .filter(|l| l.contains("Following file."))
        .filter_map(|l| l.split("path=").nth(1)?.split(' ').next())
        .filter_map(|p| Some(p.strip_prefix(logs.to_str()?)?.to_owned()))
        .collect();
    followed.sort();
    pipeline.stop()?;
    assert_eq!(
        followed,
        [
            "/lane-1/a.log",
            "/lane-1/cam/b.log",
            "/late/deeper/c.log",
            "/top.log"
        ],
        "the files followed, each once; no .gz among them"
    );
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        700
    );
    assert_eq!(
        warehouse.count("SELECT COUNT(DISTINCT transaction_id) FROM toll_transactions")?,
        700
    );
    assert_eq!(
        warehouse.count(
            "SELECT COUNT(*) FROM toll_transactions WHERE transaction_id >= '00000000-0000-4000-8000-000000010000'"
        )?,
        0,
        "no line of a compressed file"
    );
    assert_eq!(warehouse.count("SELECT SUM(duplicates) FROM loads")?, 0);
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM rejected_records")?,
        0,
        "no compressed bytes were read as lines"
    );
    assert_eq!(
        crate::fixture::archive_lines(&pipeline.data_dir.join("archive"))?,
        700,
        "every line in the archive exactly once"
    );
    Ok(())
}

#[test]
fn files_that_cannot_be_opened_make_the_agent_unready_and_are_read_once_they_can()
-> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_with(|agent| agent.rescan_interval = Some("300ms"))?;
    let pid = pipeline.agent.pid().context("agent pid")?;
    let addr = ([127, 0, 0, 1], pipeline.agent_metrics_port).into();
    tollstream_tests::harness::wait_for("the agent's /readyz", Duration::from_secs(30), || {
        tollstream_tests::harness::http_get(addr, "/readyz").is_some_and(|(s, _)| s == 200)
    })?;
    let original = open_files_limit(pid)?;
    // Out of file descriptors, as with a low `ulimit -n`: 60 files, room for few of them.
    prlimit(pid, 48)?;
    let logs = pipeline.dir.path().join("logs");
    for i in 0..60 {
        append(&logs.join(format!("f{i:02}.log")), &[line(i)])?;
    }
    let mut body = String::new();
    wait_for(
        "/readyz to report unopenable files",
        Duration::from_secs(30),
        || match tollstream_tests::harness::http_get(addr, "/readyz") {
            // How many of the 60 still got a descriptor depends on how many the agent
            // already holds (runtime threads, sockets): some, never all of them.
            Some((503, text)) if unopenable_count(&text).is_some_and(|n| n > 0) => {
                body = text;
                true
            }
            _ => false,
        },
    )?;
    assert!(body.contains("open-files limit"), "{body}");
    // The operator raises the limit: the next rescans open every file.
    prlimit(pid, original)?;
    pipeline.wait_loaded(60, 0)?;
    wait_for("/readyz to recover", Duration::from_secs(30), || {
        tollstream_tests::harness::http_get(addr, "/readyz").is_some_and(|(s, _)| s == 200)
    })?;
    pipeline.stop()?;
    assert_eq!(
        pipeline
            .warehouse()?
            .count("SELECT SUM(duplicates) FROM loads")?,
        0
    );
    Ok(())
}

/// The number in /readyz's "N matched files cannot be opened".
fn unopenable_count(body: &str) -> Option<u32> {
    let (before, _) = body.split_once(" matched files cannot be opened")?;
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A process's soft open-files limit, from `/proc/<pid>/limits`.
fn open_files_limit(pid: u32) -> anyhow::Result<u32> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-files line in /proc/<pid>/limits")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .context("no soft limit on the open-files line")?;
    Ok(soft.parse()?)
}

/// Sets a running process's soft open-files limit with util-linux `prlimit` (the hard limit
/// stays, so raising it again needs no privilege).
fn prlimit(pid: u32, files: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={files}:"))
        .status()
        .context("running prlimit")?;
    anyhow::ensure!(status.success(), "prlimit exited with {status}");
    Ok(())
}

#[test]
fn continuation_lines_travel_with_the_line_that_starts_their_record() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_with(|agent| agent.multiline_start = Some(r"^\d{4}-"))?;
    let path = pipeline.dir.path().join("logs").join("booth.log");
    let mut text = String::new();
    for n in 0..300 {
        text.push_str(&line(n));
        if n % 100 == 7 {
            // A note wrapped over two more lines: one record with its first line.
            text.push_str("  note: lane camera restarted\n  by operator 42\n");
        }
    }
    std::fs::write(&path, &text)?;
    // The last record has no next start line: it goes after flush_after (300 ms).
    pipeline.wait_loaded(297, 3)?;
    // A restart resumes where it was: the check of the bytes before the offset is of the
    // file's bytes, not of the joined record that was sent.
    pipeline
        .agent
        .wait_started("Agent started.", Duration::from_secs(30))?;
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    pipeline.agent.start()?;
    append(&path, &[line(300)])?;
    pipeline.wait_loaded(298, 3)?;
    let agent_log = std::fs::read_to_string(pipeline.dir.path().join("agent.log"))?;
    assert!(
        !agent_log.contains("truncated or rewritten"),
        "resumed, not read again as a new source"
    );
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        298
    );
    let rejected = warehouse.pairs("SELECT reason, line FROM rejected_records")?;
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    for (_, record) in &rejected {
        assert!(
            record.ends_with("\u{1e}  note: lane camera restarted\u{1e}  by operator 42"),
            "the wrapped lines are part of their record: {record:?}"
        );
    }
    assert_eq!(warehouse.count("SELECT SUM(duplicates) FROM loads")?, 0);
    Ok(())
}

#[test]
fn header_lines_are_skipped_old_files_ignored_until_written_and_deleted_files_let_go()
-> anyhow::Result<()> {
    let logs_dir = std::cell::OnceCell::new();
    let mut pipeline = Pipeline::start_prepared(
        |agent| agent.flow_extra = "    skip_header_lines: 1\n    ignore_older: 1d\n",
        |dir| {
            // Last written long ago (2020): not followed while it stays that way.
            let old = dir.join("logs").join("old.log");
            std::fs::write(&old, format!("header\n{}", line(900)))?;
            let long_ago = std::time::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
            std::fs::File::options()
                .append(true)
                .open(&old)?
                .set_modified(long_ago)?;
            let _ = logs_dir.set(dir.join("logs"));
            Ok(())
        },
    )?;
    let logs = logs_dir.get().context("logs dir")?.clone();
    let lines: Vec<String> = (0..200).map(line).collect();
    // A CSV-style header line first: never sent.
    std::fs::write(
        logs.join("a.log"),
        format!("event_time,transaction_id,...\n{}", lines[..100].concat()),
    )?;
    pipeline.wait_loaded(100, 0)?;
    // The scan that found a.log also saw old.log, and left it alone.
    let agent_log = std::fs::read_to_string(pipeline.dir.path().join("agent.log"))?;
    assert!(
        !agent_log.contains("old.log"),
        "a file untouched for longer than ignore_older is not followed"
    );
    assert_eq!(
        pipeline
            .warehouse()?
            .count("SELECT COUNT(*) FROM toll_transactions")?,
        100
    );
    // The old file is written again: now it is followed (header skipped, its line sent).
    append(&logs.join("old.log"), &lines[100..101])?;
    pipeline.wait_loaded(102, 0)?;
    // A deleted file is read to its end and its descriptor released.
    append(&logs.join("a.log"), &lines[101..])?;
    std::fs::remove_file(logs.join("a.log"))?;
    pipeline.wait_loaded(201, 0)?;
    let pid = pipeline.agent.pid().context("agent pid")?;
    wait_for(
        "the deleted file's descriptor to be closed",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                !fds.filter_map(Result::ok)
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .any(|target| target.to_string_lossy().ends_with("a.log (deleted)"))
            })
        },
    )?;
    pipeline.stop()?;
    let warehouse = pipeline.warehouse()?;
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM rejected_records")?,
        0,
        "no header sent"
    );
    assert_eq!(warehouse.count("SELECT SUM(duplicates) FROM loads")?, 0);
    Ok(())
}

/// `tollstream-agent status`: (lag in bytes, size) of the file whose path ends with `name`.
fn agent_file_lag(pipeline: &Pipeline, name: &str) -> anyhow::Result<Option<(u64, u64)>> {
    let output = std::process::Command::new(tollstream_tests::harness::binary("tollstream-agent")?)
        .args(["status", "--config"])
        .arg(pipeline.dir.path().join("agent.yaml"))
        .output()?;
    anyhow::ensure!(output.status.success(), "agent status failed");
    let text = String::from_utf8_lossy(&output.stdout);
    // PATH IDENTITY OFFSET SIZE LAG LAST-ACK
    Ok(text.lines().find_map(|row| {
        let columns: Vec<&str> = row.split_whitespace().collect();
        (columns.len() >= 5 && columns[0].ends_with(name))
            .then(|| Some((columns[4].parse().ok()?, columns[3].parse().ok()?)))
            .flatten()
    }))
}

#[test]
fn a_quiet_file_is_not_held_up_by_a_busy_files_backlog() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start()?;
    let logs = pipeline.dir.path().join("logs");
    let mut sim = tollstream_tests::sim::Simulator::new(
        &tollstream_tests::sim::SimConfig::default(),
        tollstream_tests::sim::Mode::Count { lines: 100_001 },
    )?;
    let mut written = tollstream_tests::sim::Summary::default();
    let mut next = |into: &mut Vec<u8>| -> anyhow::Result<()> {
        let meta = sim.next_into(into).context("the simulator ran out")?;
        written.add_meta(sim.booth_ids(), &meta);
        Ok(())
    };
    // A backlog of 100,000 lines (~10 MB) lands at once in one file…
    let mut busy = Vec::new();
    for _ in 0..100_000 {
        next(&mut busy)?;
    }
    std::fs::write(logs.join("busy.log"), &busy)?;
    // …then one line in another.
    let mut quiet = Vec::new();
    next(&mut quiet)?;
    std::fs::write(logs.join("quiet.log"), &quiet)?;
    // The quiet file's line is acknowledged while the busy file is still far behind: it
    // waits for neither the busy file's batches nor its turn in a queue behind them.
    let mut seen = None;
    wait_for(
        "the quiet file's line to be acknowledged",
        Duration::from_secs(60),
        || {
            seen = agent_file_lag(&pipeline, "quiet.log")
                .ok()
                .flatten()
                .zip(agent_file_lag(&pipeline, "busy.log").ok().flatten());
            seen.is_some_and(|(quiet, _)| quiet.0 == 0 && quiet.1 > 0)
        },
    )?;
    let (_, (busy_lag, busy_size)) = seen.context("status rows")?;
    eprintln!(
        "starvation: quiet file acknowledged while the busy file still had {busy_lag} of {busy_size} bytes to go"
    );
    assert!(
        busy_lag > busy_size / 2,
        "the busy file was mostly delivered ({busy_lag} of {busy_size} bytes left) before the \
         quiet file's line was: it waited behind the backlog"
    );
    pipeline.wait_loaded(written.valid_lines, 0)?;
    pipeline.stop()?;
    pipeline.assert_exactly_once(&written)?;
    Ok(())
}

/// `copytruncate` of a file holding exactly one line, the copy within the globs: the copy
/// holds nothing but the line its original already delivered, so that line is not sent
/// again — whether the agent was running (it sees the truncation, then finds the copy) or
/// stopped (it finds the copy at its next start) — and what is written to the copy or the
/// original afterwards is sent once.
#[test]
fn a_copy_of_a_file_holding_one_line_does_not_send_that_line_again() -> anyhow::Result<()> {
    let mut pipeline = Pipeline::start_with(|agent| agent.paths = vec!["logs/*.log*".into()])?;
    let logs = pipeline.dir.path().join("logs");
    let copytruncate = |name: &str| -> anyhow::Result<()> {
        std::fs::copy(logs.join(name), logs.join(format!("{name}.1")))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(logs.join(name))?
            .set_len(0)?;
        Ok(())
    };
    let agent_log = pipeline.dir.path().join("agent.log");
    let following = |name: &str| {
        let name = format!("/{name} source=");
        std::fs::read_to_string(&agent_log).is_ok_and(|log| {
            log.lines()
                .any(|l| l.contains("Following file.") && l.contains(&name))
        })
    };
    // Under the running agent.
    append(&logs.join("live.log"), &[line(0)])?;
    pipeline.wait_loaded(1, 0)?;
    copytruncate("live.log")?;
    wait_for(
        "the agent to follow live.log.1",
        Duration::from_secs(60),
        || following("live.log.1"),
    )?;
    // While the agent is stopped.
    append(&logs.join("stopped.log"), &[line(1)])?;
    pipeline.wait_loaded(2, 0)?;
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    copytruncate("stopped.log")?;
    pipeline.agent.start()?;
    pipeline
        .agent
        .wait_started("First scan done", Duration::from_secs(30))?;
    anyhow::ensure!(
        following("stopped.log.1"),
        "the first scan follows the copy"
    );
    // Both copies and both originals are written to afterwards.
    append(&logs.join("live.log.1"), &[line(2)])?;
    append(&logs.join("stopped.log.1"), &[line(3)])?;
    append(&logs.join("live.log"), &[line(4)])?;
    append(&logs.join("stopped.log"), &[line(5)])?;
    pipeline.wait_loaded(6, 0)?;
    // Everything the agent sent is acknowledged once it stopped; then the collector has
    // every record it accepted loaded (or counted as a duplicate) before it is looked at.
    assert!(pipeline.agent.terminate(EXIT_TIMEOUT)?.success());
    let accepted = pipeline
        .collector_metric("tollstream_collector_ingest_records_total", "")
        .context("collector metrics")?;
    let warehouse = pipeline.warehouse()?;
    wait_for(
        "every accepted record to be loaded",
        Duration::from_secs(60),
        || {
            warehouse
                .count("SELECT SUM(inserted + duplicates + rejected) FROM loads")
                .is_ok_and(|n| n as f64 >= accepted)
        },
    )?;
    assert!(pipeline.collector.terminate(EXIT_TIMEOUT)?.success());
    pipeline.stopped = true;
    assert_eq!(
        accepted, 6.0,
        "each line reached the collector once (not the copies' first lines again)"
    );
    assert_eq!(
        warehouse.count("SELECT COUNT(*) FROM toll_transactions")?,
        6
    );
    assert_eq!(warehouse.count("SELECT SUM(duplicates) FROM loads")?, 0);
    Ok(())
}
