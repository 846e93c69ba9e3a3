//! Times pure static retrieval `softmax(beta Q Y^T) Y` through the public `Hopfield` API
//! (`HopfieldConfig::pure_static()`, beta = 8, batch 1, d = 64, L = 1024 queries) at S = 65,536 and
//! 262,144 stored patterns, and prints one JSON object per line (`{"shape": .., "forward_ms": ..}`),
//! the median of repeated runs. `hflayers_compare.py --retrieval` runs it next to hflayers.
//!
//! ```text
//! cargo run --release -p hopfield-benches --bin retrieval_timing
//! ```

use candle_core::{DType, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};

/// (S, L, d), the same list as `RETRIEVAL_SHAPES` in hflayers_compare.py.
const SHAPES: [(usize, usize, usize); 2] = [(65_536, 1024, 64), (262_144, 1024, 64)];

fn main() -> Result<()> {
    let dev = hopfield_benches::device_from_args()?;
    for (s, l, d) in SHAPES {
        let stored = Tensor::randn(0f32, 1., (1, s, d), &dev)?;
        let queries = Tensor::randn(0f32, 1., (1, l, d), &dev)?;
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let hopfield = Hopfield::new(HopfieldConfig::pure_static().with_scaling(8.0), vb)?;
        let run = || {
            hopfield.forward_with(
                HopfieldInput::Triple {
                    stored: &stored,
                    state: &queries,
                    projection: &stored,
                },
                Masks::default(),
                false,
            )
        };
        let ms = hopfield_benches::median_ms(1, 5, 3.0, run)?;
        println!("{{\"shape\": \"S{s}_L{l}_d{d}\", \"forward_ms\": {ms:.3}}}");
    }
    Ok(())
}
