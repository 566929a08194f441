//! Criterion micro-benchmark of the executor's output log: `push` runs for
//! every chunk a child writes (under the log's lock, so its cost is also how
//! long the child's reader holds that lock), and `read` for every
//! `process/read`. The log is reached through the hidden
//! `execgate_executor::bench_api` wrapper (the log itself is crate-private).
//!
//! `cargo bench -p execgate-executor --bench output_log`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use execgate_executor::bench_api::OutputLog;

const CAP: usize = 1 << 20;

fn output_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("output_log");
    for n in [64usize, 8 << 10] {
        let chunk = Bytes::from(vec![b'x'; n]);
        g.throughput(Throughput::Bytes(n as u64));
        // A full log, so every push also evicts: the steady state of a
        // process that writes more than the 1 MiB retention.
        let log = OutputLog::new(CAP);
        while log.push_stdout(chunk.clone()) * (n as u64) < 2 * CAP as u64 {}
        g.bench_function(format!("push_full/{n}"), |b| {
            b.iter(|| log.push_stdout(black_box(chunk.clone())))
        });
        g.bench_function(format!("push_fresh/{n}"), |b| {
            b.iter_batched_ref(
                || OutputLog::new(CAP),
                |log| log.push_stdout(black_box(chunk.clone())),
                BatchSize::SmallInput,
            )
        });
    }
    // Reads of the whole retained MiB, and of just the newest chunk (a
    // follower that keeps up).
    let log = OutputLog::new(CAP);
    let chunk = Bytes::from(vec![b'x'; 8 << 10]);
    let mut last = 0;
    for _ in 0..256 {
        last = log.push_stdout(chunk.clone());
    }
    g.throughput(Throughput::Bytes(CAP as u64));
    g.bench_function("read/all_1MiB", |b| {
        b.iter(|| log.read(black_box(0), usize::MAX))
    });
    g.throughput(Throughput::Bytes(8 << 10));
    g.bench_function("read/newest_chunk", |b| {
        b.iter(|| log.read(black_box(last - 1), usize::MAX))
    });
    g.finish();
}

criterion_group!(benches, output_log);
criterion_main!(benches);
