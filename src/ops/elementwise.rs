//! Elementwise ops: activations and their backward, bias add, scale-and-add.
//!
//! NaN in, NaN out: every activation maps a NaN to NaN (the backward of ReLU at a NaN input is 0,
//! as in PyTorch, whose ReLU gradient passes only where the input is positive).

use crate::batch::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::ops::checks::{float_dtype, fold_grid, same_dtype, same_gpu, same_shape};
use crate::shaders::{entry_points, KernelSpec, Override, Prelude};
use crate::tensor::Tensor;

crate::shaders::shader_params! {
    struct Params {
        n: u32,
        inner: u32,
        channels: u32,
        groups_x: u32,
        alpha: f32,
        beta: f32,
        _pad: [u32; 2],
    }
}

entry_points! {
    /// The entry points of `shaders/elementwise.wgsl`.
    enum Entry {
        ActivationForward = "activation_forward": Params,
        ActivationBackward = "activation_backward": Params,
        BiasAdd = "bias_add": Params,
        ScaleAdd = "scale_add": Params,
        Axpy = "axpy": Params,
        ScaleInPlace = "scale_in_place": Params,
        MulInPlace = "mul_in_place": Params,
    }
}

/// The contract of `shaders/elementwise.wgsl`.
pub(crate) static KERNEL: KernelSpec = KernelSpec {
    name: "elementwise",
    wgsl: include_str!("../../shaders/elementwise.wgsl"),
    preludes: &[Prelude::Activation],
    subgroup_preludes: None,
    dtypes: &[DType::F32, DType::F16],
    entries: ENTRY_POINTS,
    overrides: &[Override {
        name: "ACTIVATION",
        values: &[0, 1, 2, 3, 4, 5],
    }],
    override_sets: None,
    writes: &[2],
};
const _: () = assert!(std::mem::size_of::<Params>() == 32);

/// Records `entry` over every element of `out`; `inputs` are bindings 1 and 3 (x, then z if any).
fn record(
    batch: &mut Batch,
    op: &'static str,
    entry: Entry,
    activation: Activation,
    inputs: &[&Tensor],
    out: &Tensor,
    (inner, channels, alpha, beta): (usize, usize, f32, f32),
) -> Result<()> {
    let mut all = inputs.to_vec();
    all.push(out);
    same_gpu(op, batch, &all)?;
    let dtype = float_dtype(op, out)?;
    let n = out.numel();
    let (grid, groups_x) = fold_grid(batch.gpu(), n.div_ceil(256))?;
    let params = Params {
        n: n as u32,
        inner: inner as u32,
        channels: channels as u32,
        groups_x,
        alpha,
        beta,
        _pad: [0; 2],
    };
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        entry,
        dtype,
        vec![("ACTIVATION", activation.code())],
    ))?;
    let mut bindings = vec![inputs[0], out];
    bindings.extend_from_slice(&inputs[1..]);
    batch.dispatch(&pipeline, bytemuck::bytes_of(&params), &bindings, grid)
}

/// y = act(x).
pub fn activation(batch: &mut Batch, x: &Tensor, act: Activation) -> Result<Tensor> {
    float_dtype("activation", x)?;
    let y = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    record(
        batch,
        "activation",
        Entry::ActivationForward,
        act,
        &[x],
        &y,
        (1, 1, 1.0, 0.0),
    )?;
    Ok(y)
}

/// dL/dx = dL/dy · act'(x), where `x` is the activation's input.
pub fn activation_backward(
    batch: &mut Batch,
    x: &Tensor,
    grad_y: &Tensor,
    act: Activation,
) -> Result<Tensor> {
    const OP: &str = "activation_backward";
    same_shape(OP, &[x, grad_y])?;
    same_dtype(OP, &[x, grad_y])?;
    float_dtype(OP, x)?;
    let dx = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    record(
        batch,
        OP,
        Entry::ActivationBackward,
        act,
        &[x, grad_y],
        &dx,
        (1, 1, 1.0, 0.0),
    )?;
    Ok(dx)
}

/// y = x + bias broadcast along `axis`: `bias` has shape `[x.shape[axis]]`. A Linear layer's output
/// `[rows, features]` takes `axis = 1`; an NCHW activation takes `axis = 1` too (one bias per channel).
pub fn bias_add(batch: &mut Batch, x: &Tensor, bias: &Tensor, axis: usize) -> Result<Tensor> {
    const OP: &str = "bias_add";
    let Some(&channels) = x.shape().get(axis) else {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("axis {axis} out of range for {:?}", x.shape()),
        });
    };
    if bias.shape() != [channels] {
        return Err(Error::ShapeMismatch {
            op: OP,
            details: format!("bias must be [{channels}], got {:?}", bias.shape()),
        });
    }
    same_dtype(OP, &[x, bias])?;
    float_dtype(OP, x)?;
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let y = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    record(
        batch,
        OP,
        Entry::BiasAdd,
        Activation::None,
        &[x, bias],
        &y,
        (inner, channels, 1.0, 0.0),
    )?;
    Ok(y)
}

/// y = alpha · x + beta · z.
pub fn scale_add(
    batch: &mut Batch,
    alpha: f32,
    x: &Tensor,
    beta: f32,
    z: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "scale_add";
    same_shape(OP, &[x, z])?;
    same_dtype(OP, &[x, z])?;
    float_dtype(OP, x)?;
    let y = Tensor::uninit(batch.gpu(), x.shape(), x.dtype())?;
    record(
        batch,
        OP,
        Entry::ScaleAdd,
        Activation::None,
        &[x, z],
        &y,
        (1, 1, alpha, beta),
    )?;
    Ok(y)
}

/// y += alpha · x, in place (gradient accumulation). Same shape and dtype; y must not alias x.
/// Like every in-place op, it takes the tensor it changes first.
pub fn axpy(batch: &mut Batch, y: &Tensor, alpha: f32, x: &Tensor) -> Result<()> {
    const OP: &str = "axpy";
    same_shape(OP, &[x, y])?;
    same_dtype(OP, &[x, y])?;
    float_dtype(OP, x)?;
    crate::ops::checks::distinct_output(OP, &[x], y)?;
    record(
        batch,
        OP,
        Entry::Axpy,
        Activation::None,
        &[x],
        y,
        (1, 1, alpha, 0.0),
    )
}

/// y = alpha · y, in place.
pub fn scale_in_place(batch: &mut Batch, y: &Tensor, alpha: f32) -> Result<()> {
    const OP: &str = "scale_in_place";
    float_dtype(OP, y)?;
    let (grid, groups_x) = fold_grid(batch.gpu(), y.numel().div_ceil(256))?;
    let params = Params {
        n: y.numel() as u32,
        groups_x,
        alpha,
        ..Default::default()
    };
    let pipeline = batch.gpu().pipeline(KERNEL.pipeline(
        Entry::ScaleInPlace,
        y.dtype(),
        vec![("ACTIVATION", 0)],
    ))?;
    batch.dispatch_bound(&pipeline, bytemuck::bytes_of(&params), &[(2, y)], grid)
}

/// y = y · x elementwise, in place (a pruning mask). Same shape and dtype; y must not alias x.
pub fn mul_in_place(batch: &mut Batch, y: &Tensor, x: &Tensor) -> Result<()> {
    const OP: &str = "mul_in_place";
    same_shape(OP, &[x, y])?;
    same_dtype(OP, &[x, y])?;
    float_dtype(OP, x)?;
    crate::ops::checks::distinct_output(OP, &[x], y)?;
    record(
        batch,
        OP,
        Entry::MulInPlace,
        Activation::None,
        &[x],
        y,
        (1, 1, 1.0, 0.0),
    )
}
