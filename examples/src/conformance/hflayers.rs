//! Replays `hflayers/` cases: `Hopfield`, `HopfieldPooling`, `HopfieldLayer`,
//! `HopfieldEncoderLayer` and `HopfieldDecoderLayer`, built from the case's kwargs alone and
//! loaded strictly from its `params.*`.

use super::case::{var_tensors, Case, Report};
use super::module_case::ModuleCase;
use candle_core::{Device, Error, Result, Tensor};
use hopfield_nn::checkpoint::load_strict_tensors;
use hopfield_nn::{
    DecoderMasks, Hopfield, HopfieldConfig, HopfieldDecoderLayer, HopfieldEncoderLayer,
    HopfieldInput, HopfieldLayer, HopfieldLayerConfig, HopfieldPooling, HopfieldPoolingConfig,
    TransformerLayerConfig,
};

struct Outputs {
    y: Tensor,
    association: Option<Tensor>,
    projected: Option<Tensor>,
    /// Steps run per head (max over the batch), for the module's own Hopfield.
    steps_per_head: Option<Vec<usize>>,
}

fn steps_per_head(steps: &[usize], heads: usize) -> Vec<usize> {
    let mut out = vec![0; heads];
    for (i, s) in steps.iter().enumerate() {
        out[i % heads] = out[i % heads].max(*s);
    }
    out
}

/// Runs one hflayers case.
pub fn run(case: &Case, report: &mut Report) -> Result<()> {
    let module = case.meta("module").unwrap_or_default();
    let kwargs = case.meta("kwargs").unwrap_or_else(|| "{}".into());
    let mc = ModuleCase::load(case)?;
    let (dtype, dev) = (case.precision().dtype(), Device::Cpu);
    let input = |n: &str| mc.input(n);
    let m = |n: &str| mc.mask(n);
    let hopfield_masks = mc.hopfield_masks();
    let form = mc.input_form();
    let tensors = var_tensors(&mc.params);
    let out = match module.as_str() {
        "Hopfield" => {
            let cfg = HopfieldConfig::from_kwargs(&kwargs)?;
            let heads = cfg.num_heads;
            let h = load_strict_tensors(tensors, dtype, &dev, |vb| Hopfield::new(cfg, vb))?;
            let (s, q, p);
            let hi = match form {
                "single" => {
                    s = input("x")?;
                    HopfieldInput::Single(&s)
                }
                "tuple3" => {
                    (s, q, p) = (input("stored")?, input("state")?, input("projection")?);
                    HopfieldInput::Triple {
                        stored: &s,
                        state: &q,
                        projection: &p,
                    }
                }
                other => return Err(Error::Msg(format!("unsupported input_form {other:?}"))),
            };
            // The output (and so every gradient) through `forward_with`, which runs the fused
            // retrieval where it applies; association and projections from `forward_full`.
            let o = h.forward_full(hi, hopfield_masks, false)?;
            Outputs {
                y: h.forward_with(hi, hopfield_masks, false)?,
                association: Some(o.association),
                projected: Some(o.projected),
                steps_per_head: Some(steps_per_head(&o.steps_run, heads)),
            }
        }
        "HopfieldPooling" => {
            let cfg = HopfieldPoolingConfig::from_kwargs(&kwargs)?;
            let h = load_strict_tensors(tensors, dtype, &dev, |vb| HopfieldPooling::new(cfg, vb))?;
            let (stored, projection) = match form {
                "single" => (input("x")?, None),
                "tuple2" => (input("stored")?, Some(input("projection")?)),
                other => return Err(Error::Msg(format!("unsupported input_form {other:?}"))),
            };
            let y = h.forward_with(&stored, projection.as_ref(), hopfield_masks, false)?;
            Outputs {
                y,
                association: Some(h.association_matrix(
                    &stored,
                    projection.as_ref(),
                    hopfield_masks,
                )?),
                projected: Some(h.projected_pattern_matrix(
                    &stored,
                    projection.as_ref(),
                    hopfield_masks,
                )?),
                steps_per_head: None,
            }
        }
        "HopfieldLayer" => {
            let cfg = HopfieldLayerConfig::from_kwargs(&kwargs)?;
            let h = load_strict_tensors(tensors, dtype, &dev, |vb| HopfieldLayer::new(cfg, vb))?;
            let x = input("x")?;
            Outputs {
                y: h.forward_with(&x, hopfield_masks, false)?,
                association: Some(h.association_matrix(&x, hopfield_masks)?),
                projected: Some(h.projected_pattern_matrix(&x, hopfield_masks)?),
                steps_per_head: None,
            }
        }
        "HopfieldEncoderLayer" => {
            let cfg = TransformerLayerConfig::from_kwargs(&kwargs)?;
            let h = load_strict_tensors(tensors, dtype, &dev, |vb| {
                HopfieldEncoderLayer::new(cfg, vb)
            })?;
            let y = h.forward_with(
                &input("x")?,
                m("src_mask"),
                m("src_key_padding_mask"),
                false,
            )?;
            Outputs {
                y,
                association: None,
                projected: None,
                steps_per_head: None,
            }
        }
        "HopfieldDecoderLayer" => {
            let cfg = TransformerLayerConfig::from_kwargs(&kwargs)?;
            let h = load_strict_tensors(tensors, dtype, &dev, |vb| {
                HopfieldDecoderLayer::new(cfg, vb)
            })?;
            let dm = DecoderMasks {
                tgt_mask: m("tgt_mask"),
                memory_mask: m("memory_mask"),
                tgt_key_padding_mask: m("tgt_key_padding_mask"),
                memory_key_padding_mask: m("memory_key_padding_mask"),
            };
            Outputs {
                y: h.forward_with(&input("tgt")?, &input("memory")?, dm, false)?,
                association: None,
                projected: None,
                steps_per_head: None,
            }
        }
        other => return Err(Error::Msg(format!("unsupported module {other:?}"))),
    };

    report.check("output.y", &out.y, &case.get("output.y")?)?;
    for (key, got) in [
        ("output.association", &out.association),
        ("output.projected", &out.projected),
    ] {
        if let Some(want) = case.opt(key) {
            match got {
                Some(g) => report.check(key, g, &want)?,
                None => report.fail(format!("{key}: not computed for {module}")),
            }
        }
    }
    if let (Some(steps), Some(want)) = (&out.steps_per_head, mc.forward.get("update_steps_run")) {
        let want: Vec<usize> = want[""]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|x| x as usize))
                    .collect()
            })
            .unwrap_or_default();
        if !want.is_empty() && &want != steps {
            report.fail(format!(
                "update steps run per head {steps:?}, expected {want:?}"
            ));
        }
    }
    mc.check_gradients(case, report, &out.y)
}
