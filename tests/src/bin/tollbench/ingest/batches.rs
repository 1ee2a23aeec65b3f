//! The batches the synthetic agents send: toll lines from the simulator, cut into batches of
//! whole lines and gzip-compressed the way the agent does (`Batch::encode`: level 2 by
//! default), all before any timing starts, so the client side costs almost nothing.

use std::io::Write;
use std::time::Instant;

use axum::body::Bytes;
use tollstream_tests::sim::{Mode, SimConfig, Simulator};

/// One pre-compressed batch.
pub struct Batch {
    /// The gzip body, as sent.
    pub body: Bytes,
    /// Length of the lines before compression: the span of its byte range.
    pub raw_len: u64,
    /// Lines in it.
    pub records: u64,
}

/// `lines` toll lines (the simulator's default traffic, as `prewrite` writes it) in batches
/// of `batch_records` lines, each compressed at `gzip_level`; compression runs on every core.
///
/// # Errors
/// A simulator that cannot be built.
pub fn prepare(lines: u64, batch_records: u64, gzip_level: u32) -> anyhow::Result<Vec<Batch>> {
    let started = Instant::now();
    let mut simulator = Simulator::new(&SimConfig::default(), Mode::Count { lines })?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut batches = Vec::new();
    loop {
        // A few batches per core at a time: never all the lines uncompressed in memory.
        let raw = next_lines(&mut simulator, batch_records, threads * 16);
        if raw.is_empty() {
            break;
        }
        let chunk = raw.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = raw
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(data, records)| Batch {
                                body: gzip(data, gzip_level),
                                raw_len: data.len() as u64,
                                records: *records,
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for worker in workers {
                batches.extend(
                    worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                );
            }
        });
    }
    let raw_bytes: u64 = batches.iter().map(|b| b.raw_len).sum();
    let sent_bytes: u64 = batches.iter().map(|b| b.body.len() as u64).sum();
    println!(
        "prepared {} batches of up to {batch_records} lines ({:.1} MB, {:.1} MB as gzip level {gzip_level}) in {:.1} s",
        batches.len(),
        raw_bytes as f64 / 1e6,
        sent_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(batches)
}

/// Up to `count` batches of `batch_records` lines (the last one may be shorter), fewer at
/// the end of the simulator's lines.
fn next_lines(simulator: &mut Simulator, batch_records: u64, count: usize) -> Vec<(Vec<u8>, u64)> {
    let mut raw = Vec::with_capacity(count);
    while raw.len() < count {
        let mut data = Vec::with_capacity(usize::try_from(batch_records).unwrap_or(0) * 110);
        let mut records = 0;
        while records < batch_records && simulator.next_into(&mut data).is_some() {
            records += 1;
        }
        if records == 0 {
            break;
        }
        raw.push((data, records));
    }
    raw
}

/// What the agent's `Batch::encode` does: one gzip member at `level`.
fn gzip(data: &[u8], level: u32) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 3),
        flate2::Compression::new(level),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    Bytes::from(encoder.finish().unwrap_or_default())
}
