//! CUDA kernels of the fused retrieval (feature `cuda`): `kernels/retrieval.cu`, compiled to PTX by
//! `build.rs` and launched through candle's re-exported cudarc. f32, f16 and bf16, computed in f32.
//! Same semantics as the CPU kernels; the flat `[out | lse]` forward result and the
//! `[dq | dk | dv]` backward result have the same layouts.

use super::op::{RetrievalBwd, RetrievalFwd, View as HostView};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// Largest head size the kernels take (`MAX_D` in retrieval.cu): per-thread rows live in
/// registers and local memory. Larger heads take the composed path.
const MAX_D: usize = 128;
const MODULE: &str = "hopfield_retrieval";
/// Threads (rows) per block.
const THREADS: u32 = 64;

/// `View` of retrieval.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct View {
    off: i64,
    s0: i64,
    s1: i64,
    s2: i64,
    s3: i64,
}

// SAFETY: plain `repr(C)` integers, the layout of the kernel's struct.
unsafe impl DeviceRepr for View {}

impl From<HostView> for View {
    fn from(v: HostView) -> Self {
        Self {
            off: v.offset as i64,
            s0: v.strides[0] as i64,
            s1: v.strides[1] as i64,
            s2: v.strides[2] as i64,
            s3: v.strides[3] as i64,
        }
    }
}

/// `Geometry` of retrieval.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: i32,
    l: i32,
    s: i32,
    h: i32,
    hd: i32,
    pd: i32,
    zero_association: i32,
    has_mask: i32,
    has_d_lse: i32,
}

// SAFETY: plain `repr(C)` integers, the layout of the kernel's struct.
unsafe impl DeviceRepr for Geometry {}

impl Geometry {
    fn new(g: &super::Geometry, zero_association: bool, has_mask: bool, has_d_lse: bool) -> Self {
        Self {
            n: g.n as i32,
            l: g.l as i32,
            s: g.s as i32,
            h: g.h as i32,
            hd: g.hd as i32,
            pd: g.pd as i32,
            zero_association: zero_association.into(),
            has_mask: has_mask.into(),
            has_d_lse: has_d_lse.into(),
        }
    }
}

pub(crate) fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Whether the kernels take these sizes: head sizes up to `MAX_D`, grid limits, and no empty
/// dimension (an empty grid is an invalid launch; the composed path handles empty inputs).
pub(crate) fn geometry_supported(g: &super::Geometry) -> bool {
    [g.n, g.l, g.s, g.h, g.hd, g.pd].iter().all(|d| *d > 0)
        && g.hd <= MAX_D
        && g.pd <= MAX_D
        && g.l.max(g.s).div_ceil(THREADS as usize) <= 65_535
        && g.n * g.h <= i32::MAX as usize
}

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => {
            candle_core::bail!("retrieval: the CUDA kernels take f32, f16 and bf16, got {other:?}")
        }
    }
}

fn config(nh: usize, rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (nh as u32, rows.div_ceil(THREADS as usize) as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The contiguous data of a saved CUDA tensor.
fn saved<'a, T: CudaDType>(s: &'a Storage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(c) = s else {
        candle_core::bail!("retrieval: saved tensor not on the GPU")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(c.as_cuda_slice::<T>()?.slice(a..b)),
        None => candle_core::bail!("retrieval: saved tensor not contiguous"),
    }
}

fn betas(dev: &CudaDevice, betas: &[f64]) -> Result<CudaSlice<f32>> {
    let b: Vec<f32> = betas.iter().map(|b| *b as f32).collect();
    dev.clone_htod(&b)
}

/// The three inputs and the mask as kernel arguments: data and view of each, in the order every
/// kernel of retrieval.cu takes them first.
struct Args<'a, T> {
    q: &'a CudaSlice<T>,
    k: &'a CudaSlice<T>,
    v: &'a CudaSlice<T>,
    mask: &'a CudaSlice<T>,
    views: [View; 4],
    has_mask: bool,
}

impl<'a, T: CudaDType + DeviceRepr> Args<'a, T> {
    /// `mask` is the op's mask storage, kept borrowed by the caller.
    fn new(
        q: (&'a CudaStorage, &Layout),
        k: (&'a CudaStorage, &Layout),
        v: (&'a CudaStorage, &Layout),
        mask: Option<(&'a Storage, &Layout)>,
    ) -> Result<Self> {
        let qs = q.0.as_cuda_slice::<T>()?;
        let (ms, vm) = match mask {
            Some((s, l)) => {
                let Storage::Cuda(c) = s else {
                    candle_core::bail!("retrieval: the mask is not on the GPU")
                };
                (c.as_cuda_slice::<T>()?, View::from(HostView::of(l)?))
            }
            // Never read (has_mask = 0); any buffer of the right type will do.
            None => (qs, View::default()),
        };
        Ok(Self {
            q: qs,
            k: k.0.as_cuda_slice::<T>()?,
            v: v.0.as_cuda_slice::<T>()?,
            mask: ms,
            views: [
                HostView::of(q.1)?.into(),
                HostView::of(k.1)?.into(),
                HostView::of(v.1)?.into(),
                vm,
            ],
            has_mask: mask.is_some(),
        })
    }

    /// Pushes `q, vq, k, vk, v, vv, mask, vm`.
    fn push<'b>(&'b self, b: &mut LaunchArgs<'b>) {
        b.arg(self.q).arg(&self.views[0]);
        b.arg(self.k).arg(&self.views[1]);
        b.arg(self.v).arg(&self.views[2]);
        b.arg(self.mask).arg(&self.views[3]);
    }
}

pub(crate) fn forward(
    op: &RetrievalFwd,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    match q.0.dtype() {
        DType::F32 => forward_typed::<f32>(op, q, k, v),
        DType::F16 => forward_typed::<half::f16>(op, q, k, v),
        DType::BF16 => forward_typed::<half::bf16>(op, q, k, v),
        other => {
            candle_core::bail!("retrieval: the CUDA kernels take f32, f16 and bf16, got {other:?}")
        }
    }
}

fn forward_typed<T: CudaDType + DeviceRepr>(
    op: &RetrievalFwd,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    if !op.flat_result() {
        candle_core::bail!("retrieval: the CUDA forward returns the flat [out | lse] result only");
    }
    let g = op.p.g;
    let dev = q.0.device().clone();
    let mask = op.mask.as_ref().map(Tensor::storage_and_layout);
    let x = Args::<T>::new(q, k, v, mask.as_ref().map(|(s, l)| (&**s, *l)))?;
    let geo = Geometry::new(&g, op.p.zero_association, x.has_mask, false);
    let betas = betas(&dev, &op.p.betas)?;
    let len = g.n * g.l * g.h * g.pd + g.n * g.h * g.l;
    // SAFETY: the kernel writes every element (outputs of all rows and all lse entries).
    let res = unsafe { dev.alloc::<T>(len) }?;
    let name = format!("retrieval_fwd_{}", suffix(q.0.dtype())?);
    let func = dev.get_or_load_custom_func(&name, MODULE, ptx::RETRIEVAL)?;
    let mut b = func.builder();
    x.push(&mut b);
    b.arg(&betas).arg(&geo).arg(&res);
    // SAFETY: argument types and order match retrieval_fwd_* in retrieval.cu.
    unsafe { b.launch(config(g.n * g.h, g.l)) }.w()?;
    Ok((CudaStorage::wrap_cuda_slice(res, dev), Shape::from(len)))
}

pub(crate) fn backward(
    op: &RetrievalBwd,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    match q.0.dtype() {
        DType::F32 => backward_typed::<f32>(op, q, k, v),
        DType::F16 => backward_typed::<half::f16>(op, q, k, v),
        DType::BF16 => backward_typed::<half::bf16>(op, q, k, v),
        other => {
            candle_core::bail!("retrieval: the CUDA kernels take f32, f16 and bf16, got {other:?}")
        }
    }
}

fn backward_typed<T: CudaDType + DeviceRepr>(
    op: &RetrievalBwd,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let g = op.p.g;
    let dev = q.0.device().clone();
    let sfx = suffix(q.0.dtype())?;
    let mask = op.mask.as_ref().map(Tensor::storage_and_layout);
    let x = Args::<T>::new(q, k, v, mask.as_ref().map(|(s, l)| (&**s, *l)))?;
    let (out_g, lse_g, dout_g) = (
        op.out.storage_and_layout(),
        op.lse.storage_and_layout(),
        op.d_out.storage_and_layout(),
    );
    let out = saved::<T>(&out_g.0, out_g.1)?;
    let lse = saved::<T>(&lse_g.0, lse_g.1)?;
    let d_out = saved::<T>(&dout_g.0, dout_g.1)?;
    let dlse_g = op.d_lse.as_ref().map(Tensor::storage_and_layout);
    let d_lse = match &dlse_g {
        Some((s, l)) => saved::<T>(s, l)?,
        // Never read (has_d_lse = 0).
        None => saved::<T>(&lse_g.0, lse_g.1)?,
    };
    let geo = Geometry::new(&g, op.p.zero_association, x.has_mask, dlse_g.is_some());
    let betas = betas(&dev, &op.p.betas)?;

    // D = dO . O per query row.
    let rows = g.n * g.h * g.l;
    // SAFETY: the delta kernel writes every row.
    let delta = unsafe { dev.alloc::<f32>(rows.max(1)) }?;
    let func =
        dev.get_or_load_custom_func(&format!("retrieval_delta_{sfx}"), MODULE, ptx::RETRIEVAL)?;
    let mut b = func.builder();
    b.arg(&out).arg(&d_out).arg(&geo).arg(&delta);
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match retrieval_delta_* in retrieval.cu.
    unsafe { b.launch(cfg) }.w()?;

    let (nq, nk, nv) = (
        g.n * g.l * g.h * g.hd,
        g.n * g.s * g.h * g.hd,
        g.n * g.s * g.h * g.pd,
    );
    // SAFETY: the dq and dk/dv kernels write every element of their parts.
    let mut grads = unsafe { dev.alloc::<T>(nq + nk + nv) }?;
    {
        let (mut dq, mut rest) = grads.split_at_mut(nq);
        let (mut dk, mut dv) = rest.split_at_mut(nk);
        let func =
            dev.get_or_load_custom_func(&format!("retrieval_dq_{sfx}"), MODULE, ptx::RETRIEVAL)?;
        let mut b = func.builder();
        x.push(&mut b);
        b.arg(&betas).arg(&geo).arg(&lse).arg(&d_out).arg(&d_lse);
        b.arg(&delta).arg(&mut dq);
        // SAFETY: argument types and order match retrieval_dq_* in retrieval.cu.
        unsafe { b.launch(config(g.n * g.h, g.l)) }.w()?;
        let func =
            dev.get_or_load_custom_func(&format!("retrieval_dkv_{sfx}"), MODULE, ptx::RETRIEVAL)?;
        let mut b = func.builder();
        x.push(&mut b);
        b.arg(&betas).arg(&geo).arg(&lse).arg(&d_out).arg(&d_lse);
        b.arg(&delta).arg(&mut dk).arg(&mut dv);
        // SAFETY: argument types and order match retrieval_dkv_* in retrieval.cu.
        unsafe { b.launch(config(g.n * g.h, g.s)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(grads, dev),
        Shape::from(nq + nk + nv),
    ))
}
