//! The WGSL sources, named by a typed id, and their f16 variants.
//!
//! Each file in `shaders/` is plain WGSL that naga validates as written (the f32 variant). The one
//! thing WGSL cannot parameterize, the storage element type, is rewritten here: the f16 variant adds
//! `enable f16;` and turns `alias Elem = f32;` into `alias Elem = f16;`.

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
}

impl Kernel {
    /// Every kernel family.
    pub const ALL: &'static [Kernel] = &[Kernel::Matmul, Kernel::Softmax];

    /// The file's stem in `shaders/`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::Softmax => "softmax",
        }
    }

    /// The WGSL as written (f32 storage).
    pub fn wgsl(self) -> &'static str {
        match self {
            Kernel::Matmul => include_str!("../shaders/matmul.wgsl"),
            Kernel::Softmax => include_str!("../shaders/softmax.wgsl"),
        }
    }

    /// Storage types the family has variants for.
    pub fn dtypes(self) -> &'static [DType] {
        match self {
            Kernel::Matmul | Kernel::Softmax => &[DType::F32, DType::F16],
        }
    }
}

const ELEM_F32: &str = "alias Elem = f32;";

/// The WGSL of `kernel` specialized for `dtype` storage.
pub fn source(kernel: Kernel, dtype: DType) -> Cow<'static, str> {
    let wgsl = kernel.wgsl();
    match dtype {
        DType::F32 => Cow::Borrowed(wgsl),
        DType::F16 => Cow::Owned(format!(
            "enable f16;\n{}",
            wgsl.replacen(ELEM_F32, "alias Elem = f16;", 1)
        )),
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
