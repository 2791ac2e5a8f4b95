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
            for tile in [64.0, 128.0] {
                for flags in 0..4u32 {
                    let on = |bit: u32| f64::from((flags >> bit) & 1);
                    sets.push(vec![
                        ("TILE", tile),
                        ("TRANS_A", on(0)),
                        ("TRANS_B", on(1)),
                        ("ALIGNED_A", on(0)),
                        ("ALIGNED_B", on(1)),
                        ("ALIGNED_C", on(0)),
                        ("HAS_BIAS", on(1)),
                        ("ACTIVATION", f64::from(flags)),
                        ("ACCUMULATE", on(0)),
                        ("BIAS_PER_ROW", on(1)),
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
        Kernel::Optim => vec![vec![], vec![("DECOUPLED", 1.0)]],
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
