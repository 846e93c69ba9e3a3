//! Replays `hflayers/` cases: `Hopfield`, `HopfieldPooling`, `HopfieldLayer`,
//! `HopfieldEncoderLayer` and `HopfieldDecoderLayer`, built from the case's kwargs alone and
//! loaded strictly from its `params.*`.

use super::case::{backward_with, var_tensors, Case, Report};
use crate::checkpoint::load_strict_tensors;
use crate::{
    DecoderMasks, Hopfield, HopfieldConfig, HopfieldDecoderLayer, HopfieldEncoderLayer,
    HopfieldInput, HopfieldLayer, HopfieldLayerConfig, HopfieldPooling, HopfieldPoolingConfig,
    Masks, TransformerLayerConfig,
};
use candle_core::{Device, Error, Result, Tensor, Var};
use std::collections::HashMap;

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
    let forward = case.meta_json("forward")?;
    let dtype = case.precision().dtype();
    let dev = Device::Cpu;
    let params = case.vars("params.")?;
    let names = |key: &str| -> Vec<String> {
        forward[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let inputs: HashMap<String, Var> = names("inputs")
        .into_iter()
        .map(|n| Ok((n.clone(), Var::from_tensor(&case.get(&format!("input.{n}"))?)?)))
        .collect::<Result<_>>()?;
    let input = |n: &str| -> Result<Tensor> {
        inputs
            .get(n)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| Error::Msg(format!("case has no input {n:?}")))
    };
    let mask_names: Vec<String> = forward["masks"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let masks: HashMap<String, Tensor> = mask_names
        .iter()
        .map(|n| Ok((n.clone(), case.get(&format!("input.{n}"))?)))
        .collect::<Result<_>>()?;
    let m = |n: &str| masks.get(n);
    let hopfield_masks = Masks {
        stored_pattern_padding_mask: m("stored_pattern_padding_mask"),
        association_mask: m("association_mask"),
    };
    let form = forward["input_form"].as_str().unwrap_or("single");
    let tensors = var_tensors(&params);
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
            let o = h.forward_full(hi, hopfield_masks, false)?;
            Outputs {
                y: o.output,
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
                association: Some(h.association_matrix(&stored, projection.as_ref(), hopfield_masks)?),
                projected: Some(h.projected_pattern_matrix(&stored, projection.as_ref(), hopfield_masks)?),
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
            let h = load_strict_tensors(tensors, dtype, &dev, |vb| HopfieldEncoderLayer::new(cfg, vb))?;
            let y = h.forward_with(&input("x")?, m("src_mask"), m("src_key_padding_mask"), false)?;
            Outputs {
                y,
                association: None,
                projected: None,
                steps_per_head: None,
            }
        }
        "HopfieldDecoderLayer" => {
            let cfg = TransformerLayerConfig::from_kwargs(&kwargs)?;
            let h = load_strict_tensors(tensors, dtype, &dev, |vb| HopfieldDecoderLayer::new(cfg, vb))?;
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
    if let (Some(steps), Some(want)) = (&out.steps_per_head, forward.get("update_steps_run")) {
        let want: Vec<usize> = want[""]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64().map(|x| x as usize)).collect())
            .unwrap_or_default();
        if !want.is_empty() && &want != steps {
            report.fail(format!("update steps run per head {steps:?}, expected {want:?}"));
        }
    }
    if report.forward_only() || forward["grad"].as_bool() != Some(true) {
        return Ok(());
    }
    let grads = backward_with(&out.y, &case.get("grad_seed.cotangent")?)?;
    for (name, var) in &inputs {
        if let Some(want) = case.opt(&format!("grad.input.{name}")) {
            report.check_grad(&format!("grad.input.{name}"), grads.get(var.as_tensor()), &want)?;
        }
    }
    let frozen: Vec<String> = serde_json::from_str(&case.meta("frozen_params").unwrap_or("[]".into()))
        .unwrap_or_default();
    for (name, var) in &params {
        let key = format!("grad.params.{name}");
        match case.opt(&key) {
            Some(want) => report.check_grad(&key, grads.get(var.as_tensor()), &want)?,
            None if frozen.contains(name) => {
                if grads.get(var.as_tensor()).is_some() {
                    report.fail(format!("{name} is frozen but received a gradient"));
                }
            }
            None => report.fail(format!("case has no {key}")),
        }
    }
    Ok(())
}
