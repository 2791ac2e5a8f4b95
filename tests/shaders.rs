//! Every WGSL file parses and validates with naga as written, and every variant wgnn compiles
//! (f32 and f16 storage, several override sets) translates to SPIR-V, MSL and HLSL, so portability
//! is checked without those GPUs.

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use wgnn::shaders::{source, Kernel, PRELUDES};

fn validate(module: &naga::Module, name: &str) -> ModuleInfo {
    Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(module)
        .unwrap_or_else(|e| panic!("{name}: naga validation failed: {e:?}"))
}

fn parse(wgsl: &str, name: &str) -> naga::Module {
    naga::front::wgsl::parse_str(wgsl)
        .unwrap_or_else(|e| panic!("{name}: WGSL parse error:\n{}", e.emit_to_string(wgsl)))
}

/// Override sets each kernel is translated with: its defaults and the values its dispatcher uses.
fn override_sets(kernel: Kernel) -> Vec<Vec<(&'static str, f64)>> {
    match kernel {
        Kernel::Matmul => {
            let mut sets = vec![vec![]];
            // (WG, GROUPS, DIRECT): every kernel shape of the matmul candidates.
            for (wg, groups, direct) in [
                (16.0, 2.0, 0.0),
                (16.0, 1.0, 0.0),
                (8.0, 2.0, 0.0),
                (8.0, 1.0, 0.0),
                (16.0, 1.0, 1.0),
                (8.0, 1.0, 1.0),
                (4.0, 1.0, 1.0),
            ] {
                for flags in 0..4u32 {
                    let on = |bit: u32| f64::from((flags >> bit) & 1);
                    sets.push(vec![
                        ("WG", wg),
                        ("GROUPS", groups),
                        ("DIRECT", direct),
                        ("TRANS_A", on(0)),
                        ("TRANS_B", on(1)),
                        ("ALIGNED_A", on(0)),
                        ("ALIGNED_B", on(1)),
                        ("ALIGNED_C", on(0)),
                        ("HAS_BIAS", on(1)),
                        ("ACTIVATION", f64::from(flags)),
                        ("ACCUMULATE", on(0)),
                        ("BIAS_PER_ROW", on(1)),
                        ("PARTIAL_ACCUMULATE", on(0)),
                    ]);
                }
            }
            sets
        }
        Kernel::Softmax => vec![
            vec![],
            vec![("LOG", 1.0)],
            vec![("LOG", 1.0), ("THREADS_PER_ROW", 1.0)],
            vec![("THREADS_PER_ROW", 128.0)],
        ],
        Kernel::Elementwise => (0..5).map(|a| vec![("ACTIVATION", f64::from(a))]).collect(),
        Kernel::Reduce => vec![vec![], vec![("SQUARES", 1.0)]],
        Kernel::Loss => vec![vec![]],
        Kernel::QuantizedLinear => vec![
            vec![],
            vec![("FORMAT", 1.0), ("HAS_BIAS", 1.0), ("ACTIVATION", 2.0)],
        ],
        Kernel::Optim => vec![
            vec![],
            vec![("DECOUPLED", 1.0)],
            vec![("SKIP_ON_FLAG", 1.0)],
        ],
        Kernel::Conv => vec![
            vec![],
            vec![("HAS_BIAS", 1.0), ("KB", 1.0), ("ACTIVATION", 3.0)],
        ],
        _ => vec![vec![]],
    }
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
    let mut known: Vec<String> = Kernel::ALL
        .iter()
        .map(|k| k.name())
        .chain(PRELUDES.iter().map(|(name, _)| *name))
        .map(|n| format!("{n}.wgsl"))
        .collect();
    known.sort();
    assert_eq!(
        files, known,
        "shaders/ must hold exactly Kernel::ALL and PRELUDES"
    );
    // Kernel files validate as wgnn compiles them (preludes first), in every variant; every prelude
    // is part of at least one of them.
    let mut used = std::collections::HashSet::new();
    for &kernel in Kernel::ALL {
        for subgroups in [false, true] {
            let wgsl = source(kernel, wgnn::DType::F32, subgroups);
            validate(&parse(&wgsl, kernel.name()), kernel.name());
            used.extend(kernel.preludes(subgroups));
        }
    }
    for (name, wgsl) in PRELUDES {
        assert!(used.contains(wgsl), "prelude {name} is used by no kernel");
    }
}

#[test]
fn every_variant_translates_to_spirv_msl_and_hlsl() {
    for &kernel in Kernel::ALL {
        let variants: &[bool] = if kernel.has_subgroup_variant() {
            &[false, true]
        } else {
            &[false]
        };
        for (&dtype, &subgroups) in kernel
            .dtypes()
            .iter()
            .flat_map(|d| variants.iter().map(move |s| (d, s)))
        {
            let wgsl = source(kernel, dtype, subgroups);
            let name = format!("{} {dtype:?} subgroups {subgroups}", kernel.name());
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

/// Each kernel's WGSL `Params` struct has the Rust struct's members at the same offsets, and the
/// same size: a member added on one side only, or reordered, fails here rather than on a GPU.
#[test]
fn params_structs_match_their_rust_mirrors() {
    for &kernel in Kernel::ALL {
        let name = kernel.name();
        let module = parse(&source(kernel, wgnn::DType::F32, false), name);
        let (rust, rust_size) = wgnn::shaders::params_layout(kernel);
        let (members, span) = module
            .types
            .iter()
            .find_map(|(_, ty)| match (&ty.name, &ty.inner) {
                (Some(n), naga::TypeInner::Struct { members, span }) if n == "Params" => {
                    Some((members.clone(), *span))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name}: no Params struct"));
        assert_eq!(span as usize, rust_size, "{name}: Params size");
        for m in &members {
            let member = m.name.as_deref().unwrap_or("");
            if member.starts_with('_') {
                continue;
            }
            let found = rust.iter().find(|(n, _)| *n == member);
            assert_eq!(
                found.map(|(_, offset)| *offset),
                Some(m.offset as usize),
                "{name}: Params.{member} is at {} in WGSL",
                m.offset
            );
        }
        for (field, _) in rust.iter().filter(|(n, _)| !n.starts_with('_')) {
            assert!(
                members.iter().any(|m| m.name.as_deref() == Some(field)),
                "{name}: Rust Params.{field} is missing from the WGSL struct"
            );
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
    for &kernel in Kernel::ALL {
        let name = kernel.name();
        let f32_module = parse(&source(kernel, wgnn::DType::F32, false), name);
        assert!(!stores_f16(&f32_module), "{name}: f32 variant stores f16");
        if kernel.dtypes().contains(&wgnn::DType::F16) {
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
    for &kernel in Kernel::ALL {
        for subgroups in [false, true] {
            let wgsl = source(kernel, wgnn::DType::F32, subgroups);
            let module = parse(&wgsl, kernel.name());
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
                            kernel.name(),
                            f.name
                        );
                    }
                }
            }
        }
    }
}

/// Reductions take no slot by atomic: the order of an atomicAdd varies from run to run, and with
/// it the last bits of a float sum. Same input, same bits.
#[test]
fn no_reduction_orders_its_terms_by_atomics() {
    for (name, wgsl) in PRELUDES
        .iter()
        .copied()
        .chain(Kernel::ALL.iter().map(|k| (k.name(), k.wgsl())))
    {
        assert!(
            !wgsl.contains("atomicAdd"),
            "{name}: takes slots by atomicAdd, so sums are not reproducible"
        );
    }
}
