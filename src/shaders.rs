//! The WGSL sources, named by a typed id, and their f16 variants.
//!
//! Each kernel family is one file in `shaders/`, written as plain WGSL for f32 storage. Two things
//! WGSL cannot say are supplied here: the storage element type (the f16 variant adds `enable f16;`
//! and turns `alias Elem = f32;` into `alias Elem = f16;`), and includes (a kernel names prelude
//! files, such as `activation.wgsl`, that are placed before it).

use std::borrow::Cow;

use crate::tensor::DType;

/// One WGSL file, i.e. one kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// `shaders/matmul.wgsl`
    Matmul,
    /// `shaders/softmax.wgsl`
    Softmax,
    /// `shaders/elementwise.wgsl`
    Elementwise,
    /// `shaders/reduce.wgsl`
    Reduce,
    /// `shaders/loss.wgsl`
    Loss,
    /// `shaders/optim.wgsl`
    Optim,
    /// `shaders/conv.wgsl`
    Conv,
    /// `shaders/pool.wgsl`
    Pool,
    /// `shaders/amp.wgsl`
    Amp,
    /// `shaders/quantized_linear.wgsl`
    QuantizedLinear,
}

/// Prelude files: WGSL placed before the kernels that name them (name, source).
pub const PRELUDES: &[(&str, &str)] = &[
    ("activation", ACTIVATION),
    ("numerics", NUMERICS),
    ("reduce_shared", REDUCE_SHARED),
    ("reduce_subgroup", REDUCE_SUBGROUP),
    ("matmul_shared_rows", MATMUL_SHARED_ROWS),
    ("matmul_lanes_portable", MATMUL_LANES_PORTABLE),
];

const ACTIVATION: &str = include_str!("../shaders/activation.wgsl");
const NUMERICS: &str = include_str!("../shaders/numerics.wgsl");
const REDUCE_SHARED: &str = include_str!("../shaders/reduce_shared.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../shaders/reduce_subgroup.wgsl");
const MATMUL_SHARED_ROWS: &str = include_str!("../shaders/matmul_shared_rows.wgsl");
const MATMUL_LANES_PORTABLE: &str = include_str!("../shaders/matmul_lanes_portable.wgsl");

impl Kernel {
    /// Every kernel family.
    pub const ALL: &'static [Kernel] = &[
        Kernel::Matmul,
        Kernel::Softmax,
        Kernel::Elementwise,
        Kernel::Reduce,
        Kernel::Loss,
        Kernel::Optim,
        Kernel::Conv,
        Kernel::Pool,
        Kernel::Amp,
        Kernel::QuantizedLinear,
    ];

    /// The file's stem in `shaders/`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::Softmax => "softmax",
            Kernel::Elementwise => "elementwise",
            Kernel::Reduce => "reduce",
            Kernel::Loss => "loss",
            Kernel::Optim => "optim",
            Kernel::Conv => "conv",
            Kernel::Pool => "pool",
            Kernel::Amp => "amp",
            Kernel::QuantizedLinear => "quantized_linear",
        }
    }

    /// The WGSL as written (f32 storage, without preludes).
    pub fn wgsl(self) -> &'static str {
        match self {
            Kernel::Matmul => include_str!("../shaders/matmul.wgsl"),
            Kernel::Softmax => include_str!("../shaders/softmax.wgsl"),
            Kernel::Elementwise => include_str!("../shaders/elementwise.wgsl"),
            Kernel::Reduce => include_str!("../shaders/reduce.wgsl"),
            Kernel::Loss => include_str!("../shaders/loss.wgsl"),
            Kernel::Optim => include_str!("../shaders/optim.wgsl"),
            Kernel::Conv => include_str!("../shaders/conv.wgsl"),
            Kernel::Pool => include_str!("../shaders/pool.wgsl"),
            Kernel::Amp => include_str!("../shaders/amp.wgsl"),
            Kernel::QuantizedLinear => include_str!("../shaders/quantized_linear.wgsl"),
        }
    }

    /// Prelude sources placed before the file, for the subgroup or the portable variant.
    pub fn preludes(self, subgroups: bool) -> Vec<&'static str> {
        match self {
            Kernel::Matmul if subgroups => vec![ACTIVATION, MATMUL_SHARED_ROWS],
            Kernel::Matmul => vec![ACTIVATION, MATMUL_LANES_PORTABLE],
            Kernel::Elementwise | Kernel::QuantizedLinear | Kernel::Conv => vec![ACTIVATION],
            Kernel::Softmax if subgroups => vec![NUMERICS, REDUCE_SUBGROUP],
            Kernel::Softmax => vec![NUMERICS, REDUCE_SHARED],
            Kernel::Loss => vec![NUMERICS],
            Kernel::Reduce | Kernel::Optim | Kernel::Pool | Kernel::Amp => vec![],
        }
    }

    /// Whether the family has a variant that uses subgroup operations.
    pub fn has_subgroup_variant(self) -> bool {
        matches!(self, Kernel::Softmax | Kernel::Matmul)
    }

    /// Storage types the family has variants for.
    pub fn dtypes(self) -> &'static [DType] {
        match self {
            // Optimizers update f32 master weights only.
            Kernel::Optim => &[DType::F32],
            _ => &[DType::F32, DType::F16],
        }
    }
}

const ELEM_F32: &str = "alias Elem = f32;";

/// The WGSL of `kernel` as compiled for `dtype` storage, with the subgroup or the portable
/// preludes: directives, preludes, then the file.
pub fn source(kernel: Kernel, dtype: DType, subgroups: bool) -> Cow<'static, str> {
    let wgsl = kernel.wgsl();
    let preludes = kernel.preludes(subgroups && kernel.has_subgroup_variant());
    if preludes.is_empty() && dtype == DType::F32 {
        return Cow::Borrowed(wgsl);
    }
    let mut out = String::new();
    let body = if dtype == DType::F16 {
        out.push_str("enable f16;\n");
        wgsl.replacen(ELEM_F32, "alias Elem = f16;", 1)
    } else {
        wgsl.to_string()
    };
    for prelude in preludes {
        out.push_str(prelude);
        out.push('\n');
    }
    out.push_str(&body);
    Cow::Owned(out)
}

/// Declares a kernel's `Params` uniform: a `#[repr(C)]` Pod struct, plus its member offsets
/// (`Params::LAYOUT`), which a test compares with the WGSL struct of the same name.
macro_rules! shader_params {
    (struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        #[repr(C)]
        #[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($field: $ty),*
        }
        impl $name {
            /// Member names and byte offsets, in order.
            pub(crate) const LAYOUT: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field))),*];
        }
    };
}
pub(crate) use shader_params;

/// The Rust side of a kernel family's `Params` uniform: (member, byte offset) in order, and the
/// struct's size. `tests/shaders.rs` checks it against the WGSL struct, so the two cannot drift.
#[doc(hidden)]
pub fn params_layout(kernel: Kernel) -> (&'static [(&'static str, usize)], usize) {
    use crate::ops;
    match kernel {
        Kernel::Matmul => ops::matmul::PARAMS_LAYOUT,
        Kernel::Softmax => ops::softmax::PARAMS_LAYOUT,
        Kernel::Elementwise => ops::elementwise::PARAMS_LAYOUT,
        Kernel::Reduce => ops::reduce::PARAMS_LAYOUT,
        Kernel::Loss => ops::loss::PARAMS_LAYOUT,
        Kernel::Optim => ops::optim::PARAMS_LAYOUT,
        Kernel::Conv => ops::conv::PARAMS_LAYOUT,
        Kernel::Pool => ops::pool::PARAMS_LAYOUT,
        Kernel::Amp => ops::amp::PARAMS_LAYOUT,
        Kernel::QuantizedLinear => ops::quantized_linear::PARAMS_LAYOUT,
    }
}

/// Identifies one compiled pipeline: kernel, storage type, entry point and override values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub kernel: Kernel,
    pub dtype: DType,
    pub entry: &'static str,
    /// Override constants by name; bools as 0/1.
    pub constants: Vec<(&'static str, u32)>,
}

/// The bindings that `source` declares `read_write`: what a dispatch of it may write.
pub(crate) fn writable_bindings(source: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for piece in source.split("@binding(").skip(1) {
        let Some((number, rest)) = piece.split_once(')') else {
            continue;
        };
        let declaration = rest.split(';').next().unwrap_or("");
        if declaration.contains("read_write") {
            if let Ok(n) = number.trim().parse() {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn writable_bindings_are_the_read_write_ones() {
        for &kernel in super::Kernel::ALL {
            let w = super::writable_bindings(kernel.wgsl());
            assert!(!w.is_empty(), "{}", kernel.name());
            assert!(!w.contains(&0), "{}: params are uniform", kernel.name());
        }
        assert_eq!(
            super::writable_bindings(super::Kernel::Matmul.wgsl()),
            [3, 5]
        );
    }
}
