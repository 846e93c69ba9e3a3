//! All-points cosine kNN lists (k = 8) of N uniform random 64-d unit vectors (the data of
//! dahn-graph's `knn_approx` example: f32 in [-0.5, 0.5]^64, normalised) by an HNSW index: insert
//! every point, then search every point for k + 1 and drop itself. Prints the wall time (build +
//! all searches), recall@8 on 500 random rows against brute force, and the peak RSS (VmHWM).
//!
//! `dahn-hnsw-eval <hnsw_rs|instant-distance> N M ef_construction ef_search`
//! (M is ignored by instant-distance, whose M is fixed at 32.)

use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;
use std::time::Instant;

/// Eight accumulators, as dahn-graph's `dot_lanes` (vectorises without reassociation).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Cosine distance of unit rows; clamped because rounding can make `1 - a.a` slightly negative.
#[derive(Clone, Copy, Default)]
struct CosineUnit;
impl hnsw_rs::prelude::Distance<f32> for CosineUnit {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

#[derive(Clone, Copy)]
struct Row<'a>(&'a [f32]);
impl instant_distance::Point for Row<'_> {
    fn distance(&self, o: &Self) -> f32 {
        (1.0 - dot(self.0, o.0)).max(0.0)
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: dahn-hnsw-eval <hnsw_rs|instant-distance> N M ef_construction ef_search");
        std::process::exit(2);
    }
    let which = a[1].as_str();
    let num = |i: usize| -> usize { a[i].parse().expect("a number") };
    let (n, m, efc, efs) = (num(2), num(3), num(4), num(5));
    let (d, k) = (64, 8);
    let mut rng = StdRng::seed_from_u64(0);
    let mut v: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>() - 0.5).collect();
    for r in v.chunks_mut(d) {
        let s = dot(r, r).sqrt();
        r.iter_mut().for_each(|x| *x /= s);
    }
    let rows: Vec<&[f32]> = v.chunks(d).collect();
    let t = Instant::now();
    let lists: Vec<Vec<u32>> = match which {
        "hnsw_rs" => {
            let layers = 16.min((n as f64).ln().ceil() as usize);
            let h = hnsw_rs::hnsw::Hnsw::<f32, CosineUnit>::new(m, n, layers, efc, CosineUnit);
            let data: Vec<(&[f32], usize)> =
                rows.iter().enumerate().map(|(i, r)| (*r, i)).collect();
            h.parallel_insert_slice(&data);
            eprintln!("insert {:.1} s", t.elapsed().as_secs_f64());
            (0..n)
                .into_par_iter()
                .map(|i| {
                    let r = h.search(rows[i], k + 1, efs);
                    r.iter()
                        .filter(|x| x.d_id != i)
                        .take(k)
                        .map(|x| x.d_id as u32)
                        .collect()
                })
                .collect()
        }
        "instant-distance" => {
            let pts: Vec<Row> = rows.iter().map(|r| Row(r)).collect();
            let ids: Vec<usize> = (0..n).collect();
            let h = instant_distance::Builder::default()
                .ef_construction(efc)
                .ef_search(efs)
                .seed(1)
                .build(pts.clone(), ids);
            eprintln!("insert {:.1} s", t.elapsed().as_secs_f64());
            (0..n)
                .into_par_iter()
                .map_init(instant_distance::Search::default, |s, i| {
                    h.search(&pts[i], s)
                        .map(|it| *it.value as u32)
                        .filter(|&j| j as usize != i)
                        .take(k)
                        .collect()
                })
                .collect()
        }
        other => panic!("unknown crate {other}"),
    };
    let secs = t.elapsed().as_secs_f64();
    let sample: Vec<usize> = (0..500).map(|_| rng.random_range(0..n)).collect();
    let recall = sample
        .par_iter()
        .map(|&i| {
            let mut s: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (dot(rows[i], rows[j]), j))
                .collect();
            s.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
            let hit = s[..k]
                .iter()
                .filter(|(_, j)| lists[i].contains(&(*j as u32)))
                .count();
            hit as f64 / k as f64
        })
        .sum::<f64>()
        / sample.len() as f64;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    println!("{which} N={n} M={m} ef_construction={efc} ef_search={efs}: build + search {secs:.1} s, recall@8 {recall:.4} (500 rows), {hwm}");
}
