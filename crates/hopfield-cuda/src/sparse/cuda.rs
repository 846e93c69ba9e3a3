//! The CUDA kernels (feature `cuda`): `kernels/sparse.cu`, compiled to PTX by `build.rs`, f32 and
//! f64. The matrix's arrays are uploaded once per device and dtype and cached in the
//! [`CsrMatrix`].

use super::CsrMatrix;
use crate::cuda_view::contiguous_view;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Device, Layout, Result, Shape, Storage, WithDType};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx_sparse.rs"));
}

const MODULE: &str = "hopfield_sparse";
const THREADS: u32 = 256;

fn cached<'a, T: CudaDType>(
    t: &'a (impl std::ops::Deref<Target = Storage> + 'a),
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(c) = &**t else {
        candle_core::bail!("sparse: cached matrix not on the GPU")
    };
    contiguous_view::<T>("sparse", c, l)
}

/// `W x`, or the fused step when `step` holds `deg` and `eta`; `x` is (N, m) contiguous.
pub(crate) fn product(
    a: &CsrMatrix,
    x: (&CudaStorage, &Layout),
    step: Option<(&CudaStorage, &Layout, f64)>,
) -> Result<(CudaStorage, Shape)> {
    match x.0.dtype() {
        DType::F32 => typed::<f32>(a, x, step, "sparse_product_f32", |e| e as f32),
        DType::F64 => typed::<f64>(a, x, step, "sparse_product_f64", |e| e),
        other => candle_core::bail!("sparse: the CUDA kernels take f32 and f64, got {other:?}"),
    }
}

fn typed<T: CudaDType + DeviceRepr + WithDType>(
    a: &CsrMatrix,
    x: (&CudaStorage, &Layout),
    step: Option<(&CudaStorage, &Layout, f64)>,
    name: &str,
    cast: fn(f64) -> T,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.0.device().clone();
    let arrays = a.device_arrays(T::DTYPE, &Device::Cuda(dev.clone()))?;
    let Some(row_ptr) = &arrays.row_ptr else {
        candle_core::bail!("sparse: nnz beyond u32 for the CUDA kernel")
    };
    let (rp_s, rp_l) = row_ptr.storage_and_layout();
    let (c_s, c_l) = arrays.cols.storage_and_layout();
    let (v_s, v_l) = arrays.vals.storage_and_layout();
    let rp = cached::<u32>(&rp_s, rp_l)?;
    let cols = cached::<u32>(&c_s, c_l)?;
    let vals = cached::<T>(&v_s, v_l)?;
    let xs = contiguous_view::<T>("sparse", x.0, x.1)?;
    let (deg, eta, is_step) = match step {
        Some((s, l, eta)) => (contiguous_view::<T>("sparse", s, l)?, cast(eta), 1i32),
        // Never read (step = 0).
        None => (contiguous_view::<T>("sparse", x.0, x.1)?, cast(0.0), 0i32),
    };
    let n = a.n() as i64;
    let m = x.1.dims().get(1).copied().unwrap_or(1) as i64;
    let len = (n * m) as usize;
    // SAFETY: the kernel writes every one of the n * m elements.
    let y = unsafe { dev.alloc::<T>(len) }?;
    let func = dev.get_or_load_custom_func(name, MODULE, ptx::SPARSE)?;
    let mut b = func.builder();
    b.arg(&rp).arg(&cols).arg(&vals).arg(&xs).arg(&deg);
    b.arg(&eta).arg(&is_step).arg(&n).arg(&m).arg(&y);
    let cfg = LaunchConfig {
        grid_dim: (len.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types and order match sparse_product_* in sparse.cu.
    unsafe { b.launch(cfg) }.w()?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev),
        Shape::from((a.n(), m as usize)),
    ))
}
