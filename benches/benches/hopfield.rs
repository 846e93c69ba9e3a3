//! Criterion bench of `Hopfield` forward and forward+backward (f32, CPU, eval mode,
//! self-association) at the shapes of `hopfield_benches::SHAPES`.
//!
//! ```text
//! cargo bench -p hopfield-benches --bench hopfield
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use hopfield_benches::{Case, SHAPES};
use std::hint::black_box;
use std::time::Duration;

fn hopfield(c: &mut Criterion) {
    // `--device`/`HOPFIELD_DEVICE` as for the timing binaries (default: auto).
    let dev = hopfield_benches::device_from_args().expect("device");
    for shape in SHAPES {
        let case = Case::new(shape, &dev).expect("build case");
        let mut group = c.benchmark_group(format!("hopfield/{}", shape.id()));
        group.bench_function("forward", |b| {
            b.iter(|| black_box(case.forward().expect("forward")))
        });
        group.bench_function("forward_backward", |b| {
            b.iter(|| black_box(case.forward_backward().expect("backward")))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Short runs: the whole bench must finish in a few minutes on a 2-core machine.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hopfield
}
criterion_main!(benches);
