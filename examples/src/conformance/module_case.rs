//! The parts shared by cases of whole modules (`hflayers/` and difflayers' `DiffusedHopfield`):
//! parameters and inputs as autograd variables, masks, and the gradient checks.

use super::case::{backward_with, Case, Report};
use candle_core::{Error, Result, Tensor, Var};
use hopfield_nn::Masks;
use std::collections::HashMap;

/// A module case's variables, masks and `forward` metadata.
pub struct ModuleCase {
    /// `params.*` as variables, keyed without the prefix.
    pub params: HashMap<String, Var>,
    /// Data inputs (`forward.inputs`) as variables.
    pub inputs: HashMap<String, Var>,
    /// Masks (`forward.masks`), as stored (uint8 boolean or float additive).
    pub masks: HashMap<String, Tensor>,
    /// The `forward` metadata.
    pub forward: serde_json::Value,
}

impl ModuleCase {
    /// Reads the variables and masks of a case.
    pub fn load(case: &Case) -> Result<Self> {
        let forward = case.meta_json("forward")?;
        let params = case.vars("params.")?;
        let inputs = forward["inputs"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|n| {
                Ok((
                    n.to_string(),
                    Var::from_tensor(&case.get(&format!("input.{n}"))?)?,
                ))
            })
            .collect::<Result<_>>()?;
        let masks = forward["masks"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|n| Ok((n.clone(), case.get(&format!("input.{n}"))?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            inputs,
            masks,
            forward,
        })
    }

    /// A data input.
    pub fn input(&self, name: &str) -> Result<Tensor> {
        self.inputs
            .get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| Error::Msg(format!("case has no input {name:?}")))
    }

    /// A mask, if the case has it.
    pub fn mask(&self, name: &str) -> Option<&Tensor> {
        self.masks.get(name)
    }

    /// The masks of a Hopfield-like module.
    pub fn hopfield_masks(&self) -> Masks<'_> {
        Masks {
            stored_pattern_padding_mask: self.mask("stored_pattern_padding_mask"),
            association_mask: self.mask("association_mask"),
        }
    }

    /// `forward.input_form` (default `single`).
    pub fn input_form(&self) -> &str {
        self.forward["input_form"].as_str().unwrap_or("single")
    }

    /// Checks `grad.input.*` and `grad.params.*` of `sum(y * cotangent)`, and that frozen
    /// parameters receive no gradient.
    pub fn check_gradients(&self, case: &Case, report: &mut Report, y: &Tensor) -> Result<()> {
        if report.forward_only() || self.forward["grad"].as_bool() != Some(true) {
            return Ok(());
        }
        let grads = backward_with(y, &case.get("grad_seed.cotangent")?)?;
        for (name, var) in &self.inputs {
            if let Some(want) = case.opt(&format!("grad.input.{name}")) {
                report.check_grad(
                    &format!("grad.input.{name}"),
                    grads.get(var.as_tensor()),
                    &want,
                )?;
            }
        }
        let frozen: Vec<String> =
            serde_json::from_str(&case.meta("frozen_params").unwrap_or_else(|| "[]".into()))
                .unwrap_or_default();
        for (name, var) in &self.params {
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
}
