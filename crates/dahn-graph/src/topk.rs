//! The one top-k row selection used by every kNN path (dense S, blocked patterns, neighbour tables).

/// Appends to `out` the `k` largest entries of `row` as `(column, value)`, in descending order of
/// value; on ties the lower column wins (a deterministic stand-in for `torch.topk`'s unspecified
/// tie order). `skip` excludes one column (the node itself). Values must not be NaN (callers validate).
///
/// O(len * k) worst case, O(len) typical: a row only enters the buffer when it beats the current k-th.
// Negated comparisons are deliberate: they read as "not better than" and keep ties stable.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn top_k_into<T: Copy + PartialOrd>(
    row: &[T],
    k: usize,
    skip: Option<usize>,
    out: &mut Vec<(usize, T)>,
) {
    let start = out.len();
    if k == 0 {
        return;
    }
    for (j, &v) in row.iter().enumerate() {
        if Some(j) == skip {
            continue;
        }
        let len = out.len() - start;
        if len == k && !(v > out[out.len() - 1].1) {
            continue;
        }
        // Insertion point: after every entry >= v (keeps earlier columns first on ties).
        let mut pos = out.len();
        while pos > start && !(out[pos - 1].1 >= v) {
            pos -= 1;
        }
        if len == k {
            out.pop();
        }
        out.insert(pos, (j, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(&[0.1, 0.9, 0.5, 0.9, -1.0], 2, None, vec![(1, 0.9), (3, 0.9)])]
    #[case(&[0.1, 0.9, 0.5, 0.9, -1.0], 3, Some(1), vec![(3, 0.9), (2, 0.5), (0, 0.1)])]
    #[case(&[0.0, 0.0, 0.0], 2, Some(0), vec![(1, 0.0), (2, 0.0)])]
    #[case(&[3.0, 1.0], 5, None, vec![(0, 3.0), (1, 1.0)])]
    #[case(&[3.0, 1.0], 0, None, vec![])]
    fn selects_descending_with_low_index_ties(
        #[case] row: &[f64],
        #[case] k: usize,
        #[case] skip: Option<usize>,
        #[case] want: Vec<(usize, f64)>,
    ) {
        let mut out = vec![(99, 7.0)];
        top_k_into(row, k, skip, &mut out);
        assert_eq!(out[0], (99, 7.0), "existing entries are kept");
        assert_eq!(&out[1..], &want[..]);
    }
}
