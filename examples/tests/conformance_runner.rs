//! The conformance runner itself: a perturbed reference fails (naming the tensor), an unknown
//! module is a failure rather than a skip, and the summary line is exactly `N passed, N failed`.

use hopfield_examples::conformance::{goldens_dir, run_case, run_dirs, Outcome, Precision};
use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The reference case every test here edits.
fn case() -> PathBuf {
    goldens_dir("hflayers").join("hopfield_heads2.safetensors")
}

/// Rewrites [`case`] into `dir/name` after `edit` changed its tensors (raw little-endian bytes) or
/// metadata.
fn rewrite(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>, &mut HashMap<String, String>),
) -> PathBuf {
    let bytes = std::fs::read(case()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors, &mut meta);
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = dir.join(name);
    serialize_to_file(&views, Some(meta), &path).unwrap();
    path
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hopfield-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_perturbed_reference_fails_and_names_the_tensor() {
    let dir = scratch();
    let path = rewrite(&dir, "perturbed.safetensors", |t, _| {
        let y = &mut t.get_mut("output.y").unwrap().2;
        let v = f64::from_le_bytes(y[..8].try_into().unwrap()) + 1e-6;
        y[..8].copy_from_slice(&v.to_le_bytes());
    });
    match run_case(&path, Precision::F64) {
        Outcome::Fail(why) => assert!(why.contains("output.y: max error 1.000e-6"), "{why}"),
        Outcome::Pass => panic!("a 1e-6 change must fail at tolerance 1e-9"),
    }
    let grad = rewrite(&dir, "grad.safetensors", |t, _| {
        let g = &mut t
            .get_mut("grad.params.association_core.in_proj_weight")
            .unwrap()
            .2;
        g[..8].copy_from_slice(&1.0f64.to_le_bytes());
    });
    match run_case(&grad, Precision::F64) {
        Outcome::Fail(why) => assert!(
            why.contains("grad.params.association_core.in_proj_weight"),
            "{why}"
        ),
        Outcome::Pass => panic!("a wrong gradient must fail"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_modules_fail_and_the_summary_counts_them() {
    let dir = scratch().join("unknown");
    std::fs::create_dir_all(&dir).unwrap();
    rewrite(&dir, "a_unknown.safetensors", |_, m| {
        m.insert("module".into(), "HopfieldTransformerXL".into());
    });
    std::fs::copy(case(), dir.join("b_good.safetensors")).unwrap();
    let summary = run_dirs(&[&dir], Precision::F64).unwrap();
    let lines = summary.lines();
    assert!(
        lines[0].starts_with("FAIL a_unknown: error: unsupported module \"HopfieldTransformerXL\""),
        "{lines:?}"
    );
    assert_eq!(lines[1], "PASS b_good");
    assert_eq!(lines.last().unwrap(), "1 passed, 1 failed");
    std::fs::remove_dir_all(&dir).ok();
}
