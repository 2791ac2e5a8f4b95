//! The kernel contract: what Rust knows about a WGSL file, declared once by the op family that owns
//! it ([`KernelSpec`]), and the assembly of the source wgnn compiles (f16 storage, preludes).
//!
//! Each kernel family is one file in `shaders/`, written as plain WGSL for f32 storage, and one
//! `src/ops/<family>.rs` that declares its `KernelSpec`: entry points (a typed enum per family,
//! made by the crate's `entry_points!` macro), the `Params` struct each entry point reads (made by
//! `shader_params!`, its layout checked against the WGSL by `tests/shaders.rs`), override
//! constants, the bindings it writes, and its preludes.
//! [`crate::ops::KERNELS`] lists every family; the shader tests iterate it. Two things WGSL cannot
//! say are supplied here: the storage element type (the f16 variant adds `enable f16;` and turns
//! `alias Elem = f32;` into `alias Elem = f16;`), and includes (preludes placed before the file).
//!
//! This module sits on the floor: it names no op.

use std::borrow::Cow;

use crate::dtype::DType;

/// A WGSL file placed before the kernels that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prelude {
    /// `activation.wgsl`: the epilogue activations.
    Activation,
    /// `numerics.wgsl`: NaN, infinities, online max/sum.
    Numerics,
    /// `reduce_shared.wgsl`: workgroup reductions through shared memory.
    ReduceShared,
    /// `reduce_subgroup.wgsl`: workgroup reductions through subgroup operations.
    ReduceSubgroup,
    /// `matmul_shared_rows.wgsl`: subgroup broadcasts of a tile's rows.
    MatmulSharedRows,
    /// `matmul_lanes_portable.wgsl`: the same without subgroups.
    MatmulLanesPortable,
    /// `hash.wgsl`: the counter-based generator's mixer (dropout, sampling).
    Hash,
}

impl Prelude {
    /// Every prelude.
    pub const ALL: &'static [Prelude] = &[
        Prelude::Activation,
        Prelude::Numerics,
        Prelude::ReduceShared,
        Prelude::ReduceSubgroup,
        Prelude::MatmulSharedRows,
        Prelude::MatmulLanesPortable,
        Prelude::Hash,
    ];

    /// The file's stem in `shaders/`.
    pub fn name(self) -> &'static str {
        match self {
            Prelude::Activation => "activation",
            Prelude::Numerics => "numerics",
            Prelude::ReduceShared => "reduce_shared",
            Prelude::ReduceSubgroup => "reduce_subgroup",
            Prelude::MatmulSharedRows => "matmul_shared_rows",
            Prelude::MatmulLanesPortable => "matmul_lanes_portable",
            Prelude::Hash => "hash",
        }
    }

    /// The WGSL.
    pub fn wgsl(self) -> &'static str {
        match self {
            Prelude::Activation => include_str!("../shaders/activation.wgsl"),
            Prelude::Numerics => include_str!("../shaders/numerics.wgsl"),
            Prelude::ReduceShared => include_str!("../shaders/reduce_shared.wgsl"),
            Prelude::ReduceSubgroup => include_str!("../shaders/reduce_subgroup.wgsl"),
            Prelude::MatmulSharedRows => include_str!("../shaders/matmul_shared_rows.wgsl"),
            Prelude::MatmulLanesPortable => include_str!("../shaders/matmul_lanes_portable.wgsl"),
            Prelude::Hash => include_str!("../shaders/hash.wgsl"),
        }
    }
}

/// The Rust side of a WGSL uniform struct: its name in the WGSL, (member, byte offset) in order,
/// and its size. `tests/shaders.rs` checks it against the struct the entry point reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamsLayout {
    /// The WGSL struct's name.
    pub name: &'static str,
    /// Members and byte offsets, in order (members named `_…` are padding).
    pub members: &'static [(&'static str, usize)],
    /// The struct's size in bytes.
    pub size: usize,
}

/// One entry point of a kernel file and the uniform struct it reads at binding 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// The WGSL function's name.
    pub name: &'static str,
    /// Its `Params`.
    pub params: ParamsLayout,
}

/// An override constant and the values the family's dispatchers give it (the shader tests
/// translate the file with each); no values: derived from others in the WGSL, never set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Override {
    /// The WGSL `override` name.
    pub name: &'static str,
    /// The values used.
    pub values: &'static [u32],
}

/// Override sets a family's dispatchers combine, as (name, value) pairs.
pub type OverrideSets = fn() -> Vec<Vec<(&'static str, u32)>>;

/// A kernel family's contract: one WGSL file and everything Rust needs to know about it. Declared
/// once, in the family's `src/ops/<family>.rs`, and listed in [`crate::ops::KERNELS`].
#[derive(Debug)]
pub struct KernelSpec {
    /// The file's stem in `shaders/` (unique: it names the pipelines).
    pub name: &'static str,
    /// The WGSL as written (f32 storage, without preludes).
    pub wgsl: &'static str,
    /// Preludes of the portable variant, in order.
    pub preludes: &'static [Prelude],
    /// Preludes of the subgroup variant, for a family that has one.
    pub subgroup_preludes: Option<&'static [Prelude]>,
    /// Storage types the family has variants for.
    pub dtypes: &'static [DType],
    /// Every entry point, with the `Params` it reads.
    pub entries: &'static [EntryPoint],
    /// Every override constant.
    pub overrides: &'static [Override],
    /// Override sets the dispatchers combine (where the values of one constant depend on
    /// another's); `None`: the tests derive the sets from [`Self::overrides`].
    pub override_sets: Option<OverrideSets>,
    /// Bindings the kernel may write (declared `read_write`): what a dispatch of it writes, for
    /// the pending-work checks of [`crate::Batch`].
    pub writes: &'static [u32],
}

impl KernelSpec {
    /// Whether the family has a variant that uses subgroup operations.
    pub fn has_subgroup_variant(&self) -> bool {
        self.subgroup_preludes.is_some()
    }

    /// The preludes of the subgroup or the portable variant.
    pub fn preludes(&self, subgroups: bool) -> &'static [Prelude] {
        match self.subgroup_preludes {
            Some(p) if subgroups => p,
            _ => self.preludes,
        }
    }

    /// The entry point called `name`.
    pub fn entry(&self, name: &str) -> Option<&EntryPoint> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The key of the pipeline for `entry` with `dtype` storage and `constants` (override values
    /// by name; bools as 0/1).
    pub(crate) fn pipeline(
        &'static self,
        entry: impl EntryName,
        dtype: DType,
        constants: Vec<(&'static str, u32)>,
    ) -> PipelineKey {
        debug_assert!(
            self.entry(entry.name()).is_some(),
            "{}: no entry point {}",
            self.name,
            entry.name()
        );
        debug_assert!(
            constants
                .iter()
                .all(|(n, _)| self.overrides.iter().any(|o| o.name == *n)),
            "{}: an override constant it does not declare",
            self.name
        );
        PipelineKey {
            kernel: self,
            dtype,
            entry: entry.name(),
            constants,
        }
    }
}

/// A family's typed entry point: its WGSL function's name.
pub trait EntryName: Copy {
    /// The WGSL function's name.
    fn name(self) -> &'static str;
}

const ELEM_F32: &str = "alias Elem = f32;";

/// The WGSL of `kernel` as compiled for `dtype` storage, with the subgroup or the portable
/// preludes: directives, preludes, then the file.
pub fn source(kernel: &KernelSpec, dtype: DType, subgroups: bool) -> Cow<'static, str> {
    let wgsl = kernel.wgsl;
    let preludes = kernel.preludes(subgroups);
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
        out.push_str(prelude.wgsl());
        out.push('\n');
    }
    out.push_str(&body);
    Cow::Owned(out)
}

/// Declares a `Params` uniform: a `#[repr(C)]` Pod struct, plus its [`ParamsLayout`]
/// (`Name::LAYOUT`), which the shader tests compare with the WGSL struct of the same name.
macro_rules! shader_params {
    (struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        #[repr(C)]
        #[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($field: $ty),*
        }
        impl $name {
            /// The struct's layout, for the kernel contract.
            pub(crate) const LAYOUT: $crate::shaders::ParamsLayout = $crate::shaders::ParamsLayout {
                name: stringify!($name),
                members: &[$((stringify!($field), std::mem::offset_of!($name, $field))),*],
                size: std::mem::size_of::<$name>(),
            };
        }
    };
}
pub(crate) use shader_params;

/// Declares a family's entry points: an enum whose variants name WGSL functions, each with the
/// `Params` struct it reads, and `ENTRY_POINTS`, the list the family's [`KernelSpec`] holds.
macro_rules! entry_points {
    ($(#[$meta:meta])* enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wgsl:literal: $params:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant),*
        }
        impl $crate::shaders::EntryName for $name {
            fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $wgsl),*
                }
            }
        }
        /// Every entry point of the file, with its `Params`.
        const ENTRY_POINTS: &[$crate::shaders::EntryPoint] = &[
            $($crate::shaders::EntryPoint { name: $wgsl, params: <$params>::LAYOUT }),*
        ];
    };
}
pub(crate) use entry_points;

/// Identifies one compiled pipeline: kernel, storage type, entry point and override values.
#[derive(Debug, Clone)]
pub(crate) struct PipelineKey {
    pub kernel: &'static KernelSpec,
    pub dtype: DType,
    pub entry: &'static str,
    /// Override constants by name; bools as 0/1.
    pub constants: Vec<(&'static str, u32)>,
}

impl PartialEq for PipelineKey {
    fn eq(&self, other: &Self) -> bool {
        self.kernel.name == other.kernel.name
            && self.dtype == other.dtype
            && self.entry == other.entry
            && self.constants == other.constants
    }
}

impl Eq for PipelineKey {}

impl std::hash::Hash for PipelineKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kernel.name.hash(state);
        self.dtype.hash(state);
        self.entry.hash(state);
        self.constants.hash(state);
    }
}
