//! Every kernel family's contract ([`wgnn::ops::KERNELS`]) against its WGSL: every file parses and
//! validates with naga, every variant wgnn compiles (f32 and f16 storage, every override set its
//! dispatchers use) translates to SPIR-V, MSL and HLSL (portability checked without those GPUs),
//! and the declared entry points, `Params` layouts, override constants and written bindings are
//! exactly the WGSL's.

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use wgnn::ops::KERNELS;
use wgnn::shaders::{source, KernelSpec, Prelude};

fn validate(module: &naga::Module, name: &str) -> ModuleInfo {
    Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(module)
        .unwrap_or_else(|e| panic!("{name}: naga validation failed: {e:?}"))
}

fn parse(wgsl: &str, name: &str) -> naga::Module {
    naga::front::wgsl::parse_str(wgsl)
        .unwrap_or_else(|e| panic!("{name}: WGSL parse error:\n{}", e.emit_to_string(wgsl)))
}

/// Override sets each kernel is translated with: its defaults, the sets its contract combines,
/// and otherwise one set per value index with every constant at its own value of that index.
fn override_sets(kernel: &KernelSpec) -> Vec<Vec<(&'static str, f64)>> {
    let mut sets = vec![vec![]];
    let as_f64 = |set: Vec<(&'static str, u32)>| {
        set.into_iter()
            .map(|(n, v)| (n, f64::from(v)))
            .collect::<Vec<_>>()
    };
    match kernel.override_sets {
        Some(make) => sets.extend(make().into_iter().map(as_f64)),
        None => {
            let most = kernel
                .overrides
                .iter()
                .map(|o| o.values.len())
                .max()
                .unwrap_or(0);
            for i in 0..most {
                sets.push(
                    kernel
                        .overrides
                        .iter()
                        .filter(|o| !o.values.is_empty())
                        .map(|o| (o.name, f64::from(o.values[i % o.values.len()])))
                        .collect(),
                );
            }
        }
    }
    sets
}

#[test]
fn every_shader_file_is_a_known_kernel_or_prelude() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("shaders/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    files.sort();
    let mut known: Vec<String> = KERNELS
        .iter()
        .map(|k| k.name)
        .chain(Prelude::ALL.iter().map(|p| p.name()))
        .map(|n| format!("{n}.wgsl"))
        .collect();
    known.sort();
    assert_eq!(
        files, known,
        "shaders/ must hold exactly the files of ops::KERNELS and Prelude::ALL"
    );
    let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    names.dedup();
    assert_eq!(names.len(), KERNELS.len(), "kernel names are unique");
    for kernel in KERNELS {
        assert_eq!(
            kernel.wgsl,
            std::fs::read_to_string(format!("{dir}/{}.wgsl", kernel.name)).unwrap(),
            "{}: the contract holds its own file",
            kernel.name
        );
    }
    // Kernel files validate as wgnn compiles them (preludes first), in every variant; every prelude
    // is part of at least one of them.
    let mut used = std::collections::HashSet::new();
    for &kernel in KERNELS {
        for subgroups in [false, true] {
            let wgsl = source(kernel, wgnn::DType::F32, subgroups);
            validate(&parse(&wgsl, kernel.name), kernel.name);
            used.extend(kernel.preludes(subgroups).iter().copied());
        }
    }
    for prelude in Prelude::ALL {
        assert!(
            used.contains(prelude),
            "prelude {prelude:?} is used by no kernel"
        );
    }
}

#[test]
fn every_variant_translates_to_spirv_msl_and_hlsl() {
    for &kernel in KERNELS {
        let variants: &[bool] = if kernel.has_subgroup_variant() {
            &[false, true]
        } else {
            &[false]
        };
        for (&dtype, &subgroups) in kernel
            .dtypes
            .iter()
            .flat_map(|d| variants.iter().map(move |s| (d, s)))
        {
            let wgsl = source(kernel, dtype, subgroups);
            let name = format!("{} {dtype:?} subgroups {subgroups}", kernel.name);
            let module = parse(&wgsl, &name);
            let info = validate(&module, &name);
            for set in override_sets(kernel) {
                let mut constants = PipelineConstants::default();
                for (k, v) in &set {
                    constants.insert(k.to_string(), *v);
                }
                let what = format!("{name} with {set:?}");
                let (module, info) = naga::back::pipeline_constants::process_overrides(
                    &module, &info, None, &constants,
                )
                .unwrap_or_else(|e| panic!("{what}: overrides: {e:?}"));
                naga::back::spv::write_vec(
                    &module,
                    &info,
                    &naga::back::spv::Options::default(),
                    None,
                )
                .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e:?}"));
                let msl_options = naga::back::msl::Options {
                    lang_version: (2, 4),
                    ..Default::default()
                };
                naga::back::msl::write_string(
                    &module,
                    &info,
                    &msl_options,
                    &naga::back::msl::PipelineOptions::default(),
                )
                .unwrap_or_else(|e| panic!("{what}: MSL: {e:?}"));
                let hlsl_options = naga::back::hlsl::Options {
                    shader_model: naga::back::hlsl::ShaderModel::V6_2,
                    ..Default::default()
                };
                let hlsl_pipeline = naga::back::hlsl::PipelineOptions::default();
                let mut hlsl = String::new();
                naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
                    .write(&module, &info, None)
                    .unwrap_or_else(|e| panic!("{what}: HLSL: {e:?}"));
                assert!(!hlsl.is_empty());
            }
        }
    }
}

/// The uniform struct each entry point reads (the global at binding 0 it uses) has the Rust
/// struct's name, members at the same offsets, and size: a member added on one side only, or
/// reordered, or an entry point reading another struct than its contract says, fails here rather
/// than on a GPU.
#[test]
fn every_entry_points_params_match_its_rust_struct() {
    for &kernel in KERNELS {
        let name = kernel.name;
        let module = parse(&source(kernel, wgnn::DType::F32, false), name);
        let info = validate(&module, name);
        for (index, ep) in module.entry_points.iter().enumerate() {
            let contract = kernel.entry(&ep.name).unwrap_or_else(|| {
                panic!("{name}: entry point {} is not in the contract", ep.name)
            });
            let uses = info.get_entry_point(index);
            let uniform = module
                .global_variables
                .iter()
                .find(|(handle, g)| {
                    g.space == naga::AddressSpace::Uniform && !uses[*handle].is_empty()
                })
                .map(|(_, g)| g)
                .unwrap_or_else(|| panic!("{name}::{}: reads no uniform", ep.name));
            let ty = &module.types[uniform.ty];
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{name}::{}: the uniform is no struct", ep.name);
            };
            let rust = contract.params;
            let what = format!("{name}::{} reads {:?}", ep.name, ty.name);
            assert_eq!(ty.name.as_deref(), Some(rust.name), "{what}");
            assert_eq!(*span as usize, rust.size, "{what}: size");
            for m in members {
                let member = m.name.as_deref().unwrap_or("");
                if member.starts_with('_') {
                    continue;
                }
                let found = rust.members.iter().find(|(n, _)| *n == member);
                assert_eq!(
                    found.map(|(_, offset)| *offset),
                    Some(m.offset as usize),
                    "{what}: .{member} is at {} in WGSL",
                    m.offset
                );
            }
            for (field, _) in rust.members.iter().filter(|(n, _)| !n.starts_with('_')) {
                assert!(
                    members.iter().any(|m| m.name.as_deref() == Some(field)),
                    "{what}: Rust .{field} is missing from the WGSL struct"
                );
            }
        }
        // Every entry point of the contract is in the WGSL.
        for entry in kernel.entries {
            assert!(
                module.entry_points.iter().any(|ep| ep.name == entry.name),
                "{name}: the contract's entry point {} is not in the WGSL",
                entry.name
            );
        }
    }
}

/// The contract's override constants are exactly the WGSL's (preludes included), and its written
/// bindings exactly the `read_write` storage ones: the pending-work checks of `Batch` rely on the
/// latter.
#[test]
fn overrides_and_written_bindings_match_the_wgsl() {
    for &kernel in KERNELS {
        let name = kernel.name;
        for subgroups in [false, true] {
            let module = parse(&source(kernel, wgnn::DType::F32, subgroups), name);
            let mut wgsl: Vec<&str> = module
                .overrides
                .iter()
                .filter_map(|(_, o)| o.name.as_deref())
                .collect();
            wgsl.sort();
            let mut declared: Vec<&str> = kernel.overrides.iter().map(|o| o.name).collect();
            declared.sort();
            assert_eq!(wgsl, declared, "{name}: override constants");
            let mut writes: Vec<u32> = module
                .global_variables
                .iter()
                .filter(|(_, g)| {
                    matches!(g.space, naga::AddressSpace::Storage { access }
                        if access.contains(naga::StorageAccess::STORE))
                })
                .filter_map(|(_, g)| g.binding.as_ref().map(|b| b.binding))
                .collect();
            writes.sort();
            writes.dedup();
            assert_eq!(writes, kernel.writes, "{name}: written bindings");
        }
    }
}

/// The f16 variant really stores f16: its storage arrays of `Elem` are f16, and the f32 variant
/// has none (the rewrite of `alias Elem = f32;` cannot silently miss).
#[test]
fn f16_variants_are_rewritten() {
    fn stores_f16(module: &naga::Module) -> bool {
        module.global_variables.iter().any(|(_, g)| {
            matches!(g.space, naga::AddressSpace::Storage { .. }) && holds_f16(module, g.ty)
        })
    }
    fn holds_f16(module: &naga::Module, ty: naga::Handle<naga::Type>) -> bool {
        match &module.types[ty].inner {
            naga::TypeInner::Scalar(s) | naga::TypeInner::Vector { scalar: s, .. } => {
                s.kind == naga::ScalarKind::Float && s.width == 2
            }
            naga::TypeInner::Array { base, .. } => holds_f16(module, *base),
            _ => false,
        }
    }
    for &kernel in KERNELS {
        let name = kernel.name;
        let f32_module = parse(&source(kernel, wgnn::DType::F32, false), name);
        assert!(!stores_f16(&f32_module), "{name}: f32 variant stores f16");
        if kernel.dtypes.contains(&wgnn::DType::F16) {
            let f16_module = parse(&source(kernel, wgnn::DType::F16, false), name);
            assert!(stores_f16(&f16_module), "{name}: f16 variant stores no f16");
        }
    }
}

/// WGSL's `select(a, b, c)` evaluates both `a` and `b`. A memory read in either (directly, or in a
/// function called there) runs even when not chosen, past a buffer's end in unchecked shaders. No
/// kernel may select over a storage read: it must branch. (A value bound with `let` before the
/// select was read where the `let` stands, under that code's own guards: it is not counted.)
#[test]
fn no_select_evaluates_a_storage_read() {
    use naga::{Expression, Function, Handle, Module};
    fn storage_root(module: &Module, f: &Function, mut e: Handle<Expression>) -> bool {
        loop {
            match &f.expressions[e] {
                Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => e = *base,
                Expression::GlobalVariable(g) => {
                    return matches!(
                        module.global_variables[*g].space,
                        naga::AddressSpace::Storage { .. }
                    )
                }
                _ => return false,
            }
        }
    }
    /// Whether evaluating `e` reads storage memory; `callees[i]`: function i reads storage.
    fn reads(module: &Module, f: &Function, e: Handle<Expression>, callees: &[bool]) -> bool {
        let r = |h: &Handle<Expression>| {
            !f.named_expressions.contains_key(h) && reads(module, f, *h, callees)
        };
        match &f.expressions[e] {
            Expression::Load { pointer } => storage_root(module, f, *pointer) || r(pointer),
            Expression::CallResult(func) => callees[func.index()],
            Expression::Access { base, index } => r(base) || r(index),
            Expression::AccessIndex { base, .. } => r(base),
            Expression::Splat { value, .. } => r(value),
            Expression::Swizzle { vector, .. } => r(vector),
            Expression::Compose { components, .. } => components.iter().any(r),
            Expression::Unary { expr, .. } | Expression::As { expr, .. } => r(expr),
            Expression::Binary { left, right, .. } => r(left) || r(right),
            Expression::Select {
                condition,
                accept,
                reject,
            } => r(condition) || r(accept) || r(reject),
            Expression::Relational { argument, .. } => r(argument),
            Expression::Math {
                arg,
                arg1,
                arg2,
                arg3,
                ..
            } => r(arg) || [arg1, arg2, arg3].iter().any(|a| a.as_ref().is_some_and(r)),
            _ => false,
        }
    }
    for &kernel in KERNELS {
        for subgroups in [false, true] {
            let wgsl = source(kernel, wgnn::DType::F32, subgroups);
            let module = parse(&wgsl, kernel.name);
            // Callees come before their callers in naga's function arena.
            let mut callees = Vec::new();
            for (_, f) in module.functions.iter() {
                let any = f
                    .expressions
                    .iter()
                    .any(|(h, _)| reads(&module, f, h, &callees));
                callees.push(any);
            }
            let functions = module
                .functions
                .iter()
                .map(|(_, f)| f)
                .chain(module.entry_points.iter().map(|ep| &ep.function));
            for f in functions {
                for (_, e) in f.expressions.iter() {
                    if let Expression::Select { accept, reject, .. } = e {
                        let unnamed_read = |h: &Handle<Expression>| {
                            !f.named_expressions.contains_key(h) && reads(&module, f, *h, &callees)
                        };
                        assert!(
                            !unnamed_read(accept) && !unnamed_read(reject),
                            "{}: a select() in {:?} evaluates a storage read",
                            kernel.name,
                            f.name
                        );
                    }
                }
            }
        }
    }
}

/// Reductions take no slot by atomic: the order of an atomicAdd varies from run to run, and with
/// it the last bits of a float sum. Same input, same bits. The one exception, named here with its
/// reason, counts integers (any order gives the same count) and sorts what it gathers.
#[test]
fn no_reduction_orders_its_terms_by_atomics() {
    // sampling: radix select's histogram counts tokens (integers); the top-p candidates it
    // gathers by atomicAdd are ranked by (key, index) before any float is summed.
    const INTEGER_COUNTS_ONLY: &[&str] = &["sampling"];
    for (name, wgsl) in Prelude::ALL
        .iter()
        .map(|p| (p.name(), p.wgsl()))
        .chain(KERNELS.iter().map(|k| (k.name, k.wgsl)))
    {
        if INTEGER_COUNTS_ONLY.contains(&name) {
            assert!(
                !wgsl.contains("atomic<f32>"),
                "{name}: float atomics would order a sum's terms by chance"
            );
            continue;
        }
        assert!(
            !wgsl.contains("atomicAdd"),
            "{name}: takes slots by atomicAdd, so sums are not reproducible"
        );
    }
}
