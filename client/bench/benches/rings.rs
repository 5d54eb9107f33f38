//! Criterion micro-benchmarks of the datapath's ring and pool operations,
//! over heap memory (no kernel): the per-batch cost the client adds on top of
//! the kernel's. For finding regressions, not for the headline figures
//! (`scripts/bench` makes those). Run: `cargo bench -p xsk-bench`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use xsk_client::bench_internals::{FillRing, Pool, RxRing};

const BATCHES: [u32; 3] = [16, 64, 256];

/// rx: the kernel publishes a batch, the client consumes it (available,
/// read each descriptor, release).
fn rx_consume(c: &mut Criterion) {
    let mut g = c.benchmark_group("rx_consume");
    for batch in BATCHES {
        g.throughput(Throughput::Elements(u64::from(batch)));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut r = RxRing::new(512);
            b.iter(|| {
                r.kernel_produce(batch);
                black_box(r.consume(black_box(batch)))
            })
        });
    }
    g.finish();
}

/// fill: the client publishes a batch of frame addresses (free, write,
/// submit), the kernel consumes them.
fn fill_produce(c: &mut Criterion) {
    let mut g = c.benchmark_group("fill_produce");
    for batch in BATCHES {
        g.throughput(Throughput::Elements(u64::from(batch)));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut r = FillRing::new(512);
            b.iter(|| {
                let n = r.produce(black_box(batch));
                r.kernel_consume();
                black_box(n)
            })
        });
    }
    g.finish();
}

/// The LIFO pool: take a batch for the fill ring, recycle it frame by frame.
fn pool_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_cycle");
    for batch in BATCHES {
        g.throughput(Throughput::Elements(u64::from(batch)));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut p = Pool::new(2048);
            b.iter(|| black_box(p.cycle(black_box(batch as usize))))
        });
    }
    g.finish();
}

criterion_group!(benches, rx_consume, fill_produce, pool_cycle);
criterion_main!(benches);
