//! The modern Hopfield energy of a module's association ([`hopfield_core::energy`]), in the
//! space the module actually associates in: its state and stored patterns after the input
//! LayerNorms, the projections, the head split and the Hopfield-space LayerNorm, with its
//! per-head beta, its zero pattern and its association function (softmax or entmax).
//! hflayers has no such method.

use crate::hopfield::{Hopfield, HopfieldInput};
use crate::layer::HopfieldLayer;
use crate::pooling::HopfieldPooling;
use candle_core::{Result, Tensor};
use hopfield_core::energy::{hopfield_energy, EnergySpec};
use hopfield_core::forward::projected_state_and_stored;
use hopfield_core::Masks;

impl Hopfield {
    /// The projected state and stored patterns the association core compares, heads-major:
    /// `(N, H, L, hd)` and `(N, H, S, hd)` (batch-major whatever `batch_first`). Feed them to
    /// [`hopfield_core::energy`]'s functions (energy, gradient, update) to follow the
    /// module's dynamics step by step.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_core::energy::{hopfield_energy, hopfield_update, EnergySpec};
    /// use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
    /// let map = VarMap::new();
    /// let hopfield = Hopfield::new(HopfieldConfig::new(16).with_num_heads(2),
    ///     VarBuilder::from_varmap(&map, DType::F64, &Device::Cpu))?;
    /// let x = Tensor::randn(0f64, 1., (2, 6, 16), &Device::Cpu)?;
    /// let (q, k) = hopfield.projected_state_and_stored(HopfieldInput::Single(&x))?;
    /// let spec = hopfield.energy_spec()?;
    /// let e0 = hopfield_energy(&q, &k, &spec, Masks::default())?;
    /// let q1 = hopfield_update(&q, &k, &spec, Masks::default())?; // one update step
    /// let e1 = hopfield_energy(&q1, &k, &spec, Masks::default())?;
    /// assert!((e1 - e0)?.max_all()?.to_scalar::<f64>()? <= 1e-12);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn projected_state_and_stored(&self, input: HopfieldInput) -> Result<(Tensor, Tensor)> {
        let p = self.normalized_inputs(input)?;
        let core = self.association_core();
        projected_state_and_stored(
            &p.state,
            &p.stored,
            &p.projection,
            core.weights(),
            core.config(),
        )
    }

    /// The energy's parameters for this module: its per-head beta (hflayers' `scaling`), its
    /// zero pattern and its association function.
    pub fn energy_spec(&self) -> Result<EnergySpec> {
        let core = self.association_core();
        Ok(EnergySpec::from_config(
            core.config(),
            core.weights().layout.num_heads,
        )?)
    }

    /// The modern Hopfield energy of each state pattern against the stored patterns, per
    /// (sample, head, state pattern), `(N, H, L)`, in the projected space the module uses (see
    /// [`hopfield_core::energy`] for the terms). Differentiable with respect to the inputs and
    /// the module's weights; the masks are the forward pass's.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::{Hopfield, HopfieldConfig, HopfieldInput, Masks};
    /// let map = VarMap::new();
    /// let hopfield = Hopfield::new(HopfieldConfig::new(16).with_num_heads(4),
    ///     VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
    /// let x = Tensor::randn(0f32, 1., (2, 10, 16), &Device::Cpu)?;
    /// let e = hopfield.energy(HopfieldInput::Single(&x), Masks::default())?;
    /// assert_eq!(e.dims(), &[2, 4, 10]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn energy(&self, input: HopfieldInput, masks: Masks) -> Result<Tensor> {
        let (q, k) = self.projected_state_and_stored(input)?;
        hopfield_energy(&q, &k, &self.energy_spec()?, masks)
    }
}

impl HopfieldPooling {
    /// The energy of each pooling (state) pattern against the stored patterns `stored`,
    /// `(N, H, quantity)`, in the projected space of the pooling's Hopfield module (see
    /// [`Hopfield::energy`]).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::{HopfieldConfig, HopfieldPooling, HopfieldPoolingConfig, Masks};
    /// let map = VarMap::new();
    /// let cfg = HopfieldPoolingConfig::new(HopfieldConfig::new(8).with_num_heads(2)).with_quantity(3);
    /// let pooling = HopfieldPooling::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
    /// let x = Tensor::randn(0f32, 1., (4, 7, 8), &Device::Cpu)?;
    /// assert_eq!(pooling.energy(&x, Masks::default())?.dims(), &[4, 2, 3]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn energy(&self, stored: &Tensor, masks: Masks) -> Result<Tensor> {
        let state = self.queries(stored)?;
        let input = HopfieldInput::Triple {
            stored,
            state: &state,
            projection: stored,
        };
        self.hopfield().energy(input, masks)
    }
}

impl HopfieldLayer {
    /// The energy of each state pattern against the lookup table (the stored patterns),
    /// `(N, H, L)`, in the projected space of the layer's Hopfield module (see
    /// [`Hopfield::energy`]): the energy the layer's update lowers.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use hopfield_nn::{HopfieldConfig, HopfieldLayer, HopfieldLayerConfig, Masks};
    /// let map = VarMap::new();
    /// let cfg = HopfieldLayerConfig::new(HopfieldConfig::new(8).with_num_heads(2)).with_quantity(5);
    /// let layer = HopfieldLayer::new(cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu))?;
    /// let x = Tensor::randn(0f32, 1., (3, 4, 8), &Device::Cpu)?;
    /// assert_eq!(layer.energy(&x, Masks::default())?.dims(), &[3, 2, 4]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn energy(&self, state: &Tensor, masks: Masks) -> Result<Tensor> {
        let (stored, projection) = self.patterns(state)?;
        let input = HopfieldInput::Triple {
            stored: &stored,
            state,
            projection: &projection,
        };
        self.hopfield().energy(input, masks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HopfieldConfig;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use hopfield_core::energy::hopfield_update;
    use hopfield_core::Association;
    use rstest::rstest;

    fn max_abs(t: &Tensor) -> Result<f64> {
        t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    /// The energy's space is the module's: one update of the projected state is the module's
    /// association times the projected stored patterns, and it lowers every energy (masks,
    /// sequence-first layout, zero pattern and sparse associations included).
    #[rstest]
    #[case(Association::Softmax, true, false)]
    #[case(Association::Softmax, false, true)]
    #[case(Association::Sparsemax, true, true)]
    #[case(Association::Entmax15, false, false)]
    fn energy_lives_in_the_association_space(
        #[case] association: Association,
        #[case] batch_first: bool,
        #[case] zero: bool,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let mut cfg = HopfieldConfig::new(12).with_num_heads(3).with_scaling(0.7);
        cfg.batch_first = batch_first;
        cfg.add_zero_association = zero;
        cfg.association = association;
        let hopfield = Hopfield::new(cfg, VarBuilder::from_varmap(&map, DType::F64, &dev))?;
        let (n, s, l) = (2, 7, 4);
        let dims = |t: usize| if batch_first { (n, t, 12) } else { (t, n, 12) };
        let stored = Tensor::randn(0f64, 1., dims(s), &dev)?;
        let state = Tensor::randn(0f64, 1., dims(l), &dev)?;
        let pad = Tensor::new(&[[0u8, 0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0]], &dev)?;
        let masks = Masks {
            stored_pattern_padding_mask: Some(&pad),
            association_mask: None,
        };
        let input = HopfieldInput::Triple {
            stored: &stored,
            state: &state,
            projection: &stored,
        };
        let (q, k) = hopfield.projected_state_and_stored(input)?;
        assert_eq!((q.dims(), k.dims()), (&[n, 3, l, 4][..], &[n, 3, s, 4][..]));
        let spec = hopfield.energy_spec()?;
        let a = hopfield.association_matrix(input, masks)?; // (N, H, L, S[+1])
        let a = a.narrow(3, 0, s)?.contiguous()?;
        let update = hopfield_update(&q, &k, &spec, masks)?;
        assert!(max_abs(&(a.matmul(&k.contiguous()?)? - &update)?)? < 1e-12);
        let e0 = hopfield.energy(input, masks)?;
        assert_eq!(e0.dims(), &[n, 3, l]);
        let e1 = hopfield_energy(&update, &k, &spec, masks)?;
        let rise = (e1 - &e0)?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        assert!(rise <= 1e-12, "{rise}");
        // Differentiable down to the projection weights.
        let grads = e0.sum_all()?.backward()?;
        let w = map.data().lock().unwrap().clone();
        assert!(w.values().any(|v| grads.get(v).is_some()));
        Ok(())
    }

    #[test]
    fn pooling_energy_is_its_hopfield_energy_of_the_pooling_weights() -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let cfg = crate::HopfieldPoolingConfig::new(HopfieldConfig::new(8).with_num_heads(2))
            .with_quantity(3);
        let pooling = HopfieldPooling::new(cfg, VarBuilder::from_varmap(&map, DType::F64, &dev))?;
        let x = Tensor::randn(0f64, 1., (4, 7, 8), &dev)?;
        let e = pooling.energy(&x, Masks::default())?;
        let state = pooling.pooling_weights().broadcast_as((4, 3, 8))?;
        let direct = pooling
            .hopfield()
            .energy((&x, &state, &x).into(), Masks::default())?;
        assert_eq!(e.dims(), &[4, 2, 3]);
        assert!(max_abs(&(e - direct)?)? < 1e-14);
        Ok(())
    }

    #[test]
    fn bad_input_is_a_typed_error() -> Result<()> {
        let map = VarMap::new();
        let hopfield = Hopfield::new(
            HopfieldConfig::new(8),
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        )?;
        let x = Tensor::zeros((2, 5, 7), DType::F32, &Device::Cpu)?;
        let e = hopfield.energy(HopfieldInput::Single(&x), Masks::default());
        assert!(e.unwrap_err().to_string().contains("[2, 5, 7]"));
        Ok(())
    }

    /// The layer's energy is its Hopfield module's on the lookup table, and one update of the
    /// projected state against the projected lookup table lowers it.
    #[test]
    fn layer_energy_is_the_lookup_tables() -> Result<()> {
        use crate::{HopfieldLayer, HopfieldLayerConfig};
        let dev = Device::Cpu;
        let map = VarMap::new();
        let cfg =
            HopfieldLayerConfig::new(HopfieldConfig::new(6).with_num_heads(2)).with_quantity(5);
        let layer = HopfieldLayer::new(cfg, VarBuilder::from_varmap(&map, DType::F64, &dev))?;
        let x = Tensor::randn(0f64, 1., (2, 3, 6), &dev)?;
        let e = layer.energy(&x, Masks::default())?;
        assert_eq!(e.dims(), &[2, 2, 3]);
        let (stored, projection) = layer.patterns(&x)?;
        let input = HopfieldInput::Triple {
            stored: &stored,
            state: &x,
            projection: &projection,
        };
        let (q, k) = layer.hopfield().projected_state_and_stored(input)?;
        let spec = layer.hopfield().energy_spec()?;
        assert!(max_abs(&(hopfield_energy(&q, &k, &spec, Masks::default())? - &e)?)? < 1e-12);
        let q1 = hopfield_update(&q, &k, &spec, Masks::default())?;
        let e1 = hopfield_energy(&q1, &k, &spec, Masks::default())?;
        assert!((e1 - &e)?.flatten_all()?.max(0)?.to_scalar::<f64>()? <= 1e-12);
        Ok(())
    }
}
