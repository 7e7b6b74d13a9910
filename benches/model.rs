//! One payment through a gradient-boosted model: 300 trees of depth 6 (63
//! splits each, full; thresholds on at most 255 bin boundaries per feature,
//! as LightGBM's max_bin gives), LightGBM's text format parsed by
//! fraudline, over feature vectors of the catalogue's size with 10 % of the
//! values missing. The floors beside it: the same number of node visits as
//! plain array reads and compares with no missing-value handling, one tree
//! after another and eight trees interleaved (fraudline's own technique).
//!
//! Anchors from the issue (single row, other runtimes): lleaves 9.6 µs,
//! ONNX Runtime 11 µs, Treelite 28 µs; goal ≤ 2 µs.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fraudline::engine::features::catalogue::CATALOGUE;
use fraudline::engine::model::Model;
use fraudline::engine::FeatureVector;
use rand::{Rng, SeedableRng};

const TREES: usize = 300;
const DEPTH: u32 = 6;

/// A LightGBM text model of `TREES` full trees of depth `DEPTH`.
fn synthetic_model(rng: &mut rand::rngs::StdRng) -> String {
    let names: Vec<String> = CATALOGUE
        .iter()
        .map(|f| f.name.replace('.', "_"))
        .filter(|n| n != "model_score")
        .collect();
    let mut s = format!(
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx={}\nobjective=binary sigmoid:1\nfeature_names={}\n\n",
        names.len() - 1,
        names.join(" ")
    );
    let inner = (1usize << DEPTH) - 1;
    let leaves = inner + 1;
    for t in 0..TREES {
        // Heap layout: node i has children 2i+1 and 2i+2; the last level
        // points to leaves.
        let (mut feat, mut thr, mut dec, mut left, mut right) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..inner {
            feat.push(rng.gen_range(0..names.len()).to_string());
            // LightGBM splits on bin boundaries: at most max_bin (255)
            // distinct thresholds per feature.
            thr.push(format!("{}", rng.gen_range(0..255) as f64 * 10.0 / 255.0));
            dec.push(if rng.gen_bool(0.5) { "10" } else { "2" }.to_string());
            let child = |c: usize| {
                if c < inner {
                    c as i64
                } else {
                    -((c - inner) as i64) - 1
                }
            };
            left.push(child(2 * i + 1).to_string());
            right.push(child(2 * i + 2).to_string());
        }
        let values: Vec<String> = (0..leaves)
            .map(|_| format!("{}", rng.gen_range(-0.1..0.1f64)))
            .collect();
        s.push_str(&format!(
            "Tree={t}\nnum_leaves={leaves}\nnum_cat=0\nsplit_feature={}\nthreshold={}\ndecision_type={}\nleft_child={}\nright_child={}\nleaf_value={}\nis_linear=0\nshrinkage=1\n\n\n",
            feat.join(" "), thr.join(" "), dec.join(" "), left.join(" "), right.join(" "), values.join(" ")
        ));
    }
    s.push_str("end of trees\n");
    s
}

fn bench(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let model = Model::parse("synthetic", &synthetic_model(&mut rng)).expect("parses");
    assert_eq!(model.trees(), TREES);
    let rows: Vec<FeatureVector> = (0..1024)
        .map(|_| {
            let mut fv = FeatureVector::default();
            for v in fv.0.iter_mut() {
                if rng.gen_bool(0.9) {
                    *v = rng.gen_range(0.0..10.0);
                }
            }
            fv
        })
        .collect();
    // The floor: TREES x DEPTH dependent array reads and compares.
    let flat: Vec<(usize, f64)> = (0..TREES * 64)
        .map(|_| (rng.gen_range(0..rows[0].0.len()), rng.gen_range(0.0..10.0)))
        .collect();

    let mut g = c.benchmark_group("model");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("fraudline_300_trees_depth_6", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(model.score(black_box(&rows[i])))
        })
    });
    let mut j = 0;
    g.bench_function("floor_array_walk_300x6", |b| {
        b.iter(|| {
            j = (j + 1) & 1023;
            let fv = black_box(&rows[j]);
            let mut sum = 0.0;
            for t in 0..TREES {
                let mut at = 0usize;
                for _ in 0..DEPTH {
                    let (f, thr) = flat[t * 64 + at];
                    at = 2 * at + if fv.0[f] <= thr { 1 } else { 2 };
                }
                sum += at as f64;
            }
            black_box(sum)
        })
    });
    // The same walk, eight trees interleaved as fraudline walks them: the
    // floor of the technique (no binning, no missing values).
    let mut k = 0;
    g.bench_function("floor_array_walk_300x6_interleaved_8", |b| {
        b.iter(|| {
            k = (k + 1) & 1023;
            let fv = black_box(&rows[k]);
            let mut sum = 0.0;
            for t in (0..TREES).step_by(8) {
                let mut at = [0usize; 8];
                for _ in 0..DEPTH {
                    for (w, i) in at.iter_mut().enumerate() {
                        let (f, thr) = flat[((t + w) % TREES) * 64 + *i];
                        *i = 2 * *i + 1 + usize::from(fv.0[f] > thr);
                    }
                }
                for i in at {
                    sum += i as f64;
                }
            }
            black_box(sum)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
