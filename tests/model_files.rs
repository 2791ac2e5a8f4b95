//! Model files from anywhere: every truncation and seeded corruptions of saved models in each
//! storage load as a typed error or a working model, never a panic; files are read with a size
//! cap and only when regular; layer geometry is checked arithmetic; non-finite weights are refused
//! by default.

mod common;

use common::*;
use rand::RngExt;
use wgnn::nn::{Init, LayerSpec, ReadOptions, SavedModel, Sequential};
use wgnn::Precision;
use wgnn::{Activation, Error};

fn small_cnn() -> Vec<LayerSpec> {
    vec![
        LayerSpec::Conv2d {
            in_channels: 1,
            out_channels: 2,
            kernel: (3, 3),
            stride: (1, 1),
            padding: (1, 1),
        },
        LayerSpec::Activation {
            function: Activation::Relu,
        },
        LayerSpec::MaxPool2d {
            kernel: (2, 2),
            stride: (2, 2),
        },
        LayerSpec::Flatten,
        LayerSpec::Linear {
            inputs: 18,
            outputs: 3,
        },
    ]
}

fn saved() -> SavedModel {
    let gpu = gpu();
    let model = Sequential::new(
        &gpu,
        &[1, 6, 6],
        small_cnn(),
        Init::KaimingUniform { seed: 3 },
    )
    .unwrap();
    model.to_saved().unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wgnn-files-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Loads `bytes` the whole way (parse, place on the GPU, predict); returns whether it loaded.
/// Any error must be typed; a panic fails the test.
fn load_fully(bytes: &[u8]) -> bool {
    let gpu = gpu();
    let Ok(saved) = SavedModel::from_bytes(bytes) else {
        return false;
    };
    let per_sample: usize = saved.input_shape.iter().product();
    let Ok(mut model) = saved.into_model(&gpu) else {
        return false;
    };
    let x: Vec<f32> = (0..2 * per_sample).map(|i| (i % 7) as f32 * 0.1).collect();
    model.predict_classes(&x, 2).is_ok()
}

#[test]
fn every_truncation_and_seeded_corruptions_are_typed_errors() {
    let (mut rng, seed) = rng();
    let saved = saved();
    for storage in [Precision::F32, Precision::F16, Precision::Int8] {
        let bytes = saved.to_bytes_as(storage).unwrap();
        assert!(load_fully(&bytes), "{storage:?}: the intact file loads");
        for len in 0..bytes.len() {
            let err = SavedModel::from_bytes(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, Error::ModelFile { .. }),
                "{storage:?} truncated to {len}: {err:?}"
            );
        }
        for case in 0..300 {
            let mut corrupt = bytes.clone();
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..corrupt.len());
                match rng.random_range(0..3) {
                    0 => corrupt[at] ^= 1 << rng.random_range(0..8),
                    1 => corrupt[at] = rng.random(),
                    // A digit in the JSON header becomes another: geometry the file does not
                    // hold, huge sizes, zeros.
                    _ => {
                        if corrupt[at].is_ascii_digit() {
                            corrupt[at] = b"0123456789"[rng.random_range(0..10)];
                        }
                    }
                }
            }
            // A typed error or a model that works; a panic fails here with the seed below.
            let _ = std::panic::catch_unwind(|| load_fully(&corrupt))
                .unwrap_or_else(|_| panic!("{storage:?} corruption {case} panicked (seed {seed})"));
        }
    }
}

/// Crafted layer geometry in a file: zero sizes, a zero-sided window, padding near 2^63, a
/// flatten of 2^64 features, a Linear too large for any adapter. Each is a typed error, before any
/// tensor is decoded or any host memory in proportion to it is asked for.
#[test]
fn crafted_geometry_is_refused_before_anything_is_made() {
    let gpu = gpu();
    let file = |input: &str, layers: &str, tensors: &[(&str, Vec<usize>)]| {
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, shape)| vec![0u8; 4 * shape.iter().product::<usize>()])
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&data)
            .map(|((name, shape), d)| {
                (
                    name.to_string(),
                    safetensors::tensor::TensorView::new(
                        safetensors::tensor::Dtype::F32,
                        shape.clone(),
                        d,
                    )
                    .unwrap(),
                )
            })
            .collect();
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "wgnn".to_string());
        meta.insert("input_shape".to_string(), input.to_string());
        meta.insert("layers".to_string(), layers.to_string());
        safetensors::serialize(views, Some(meta)).unwrap()
    };
    let refused = |bytes: Vec<u8>, what: &str| match SavedModel::from_bytes(&bytes) {
        Err(Error::ModelFile { details }) => assert!(!details.is_empty(), "{what}"),
        Err(e) => panic!("{what}: {e:?}"),
        Ok(saved) => {
            let err = saved.into_model(&gpu).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::ShapeMismatch { .. }
                        | Error::LimitExceeded { .. }
                        | Error::InvalidArgument { .. }
                ),
                "{what}: {err:?}"
            );
        }
    };
    refused(
        file("[4]", r#"[{"type":"Linear","inputs":4,"outputs":0}]"#, &[]),
        "Linear 4 -> 0",
    );
    refused(
        file("[4]", r#"[{"type":"Linear","inputs":0,"outputs":4}]"#, &[]),
        "Linear 0 -> 4",
    );
    refused(
        file(
            "[1, 4, 4]",
            r#"[{"type":"Conv2d","in_channels":1,"out_channels":0,"kernel":[3,3],"stride":[1,1],"padding":[0,0]}]"#,
            &[],
        ),
        "Conv2d with 0 output channels",
    );
    refused(
        file(
            "[1, 4, 4]",
            r#"[{"type":"MaxPool2d","kernel":[0,2],"stride":[1,1]}]"#,
            &[],
        ),
        "a pooling window with a zero side",
    );
    refused(
        file(
            "[1, 4, 4]",
            r#"[{"type":"Conv2d","in_channels":1,"out_channels":1,"kernel":[1,1],"stride":[1,1],"padding":[9223372036854775808,0]}]"#,
            &[("0.weight", vec![1, 1, 1, 1]), ("0.bias", vec![1])],
        ),
        "padding 2^63",
    );
    refused(
        file("[4294967296, 4294967296]", r#"[{"type":"Flatten"}]"#, &[]),
        "a flatten of 2^64 features",
    );
    refused(
        file(
            "[4]",
            r#"[{"type":"Linear","inputs":4,"outputs":4},{"type":"Flatten"},{"type":"Linear","inputs":4,"outputs":1048576}]"#,
            &[("0.weight", vec![4, 4]), ("0.bias", vec![4])],
        ),
        "a layer whose tensors are missing",
    );
}

#[test]
fn only_regular_files_are_read_and_within_the_cap() {
    let gpu = gpu();
    let dir = temp_dir("cap");
    let path = dir.join("model.safetensors");
    std::fs::write(&path, saved().to_bytes().unwrap()).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(Sequential::load(&gpu, &path).is_ok());
    let capped = ReadOptions {
        max_file_bytes: len - 1,
        ..ReadOptions::default()
    };
    assert!(matches!(
        Sequential::load_with(&gpu, &path, &capped),
        Err(Error::LimitExceeded { requested, .. }) if requested == len
    ));
    // A directory, an endless device and a FIFO (which would block on open) are refused at once.
    assert!(matches!(
        Sequential::load(&gpu, &dir),
        Err(Error::Io { .. })
    ));
    #[cfg(unix)]
    {
        assert!(matches!(
            Sequential::load(&gpu, "/dev/zero"),
            Err(Error::Io { .. })
        ));
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if made {
            assert!(matches!(
                Sequential::load(&gpu, &fifo),
                Err(Error::Io { .. })
            ));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// NaN or infinite weights, biases or int8 scales are refused by default (naming the tensor and
/// element), and accepted when asked for. Int8 storage refuses to quantize them.
#[test]
fn non_finite_values_are_refused_unless_allowed() {
    let gpu = gpu();
    let allowed = ReadOptions {
        allow_non_finite: true,
        ..ReadOptions::default()
    };
    let check = |bytes: &[u8], name: &str, what: &str| {
        let err = SavedModel::from_bytes(bytes).unwrap_err();
        assert!(
            matches!(&err, Error::ModelFile { details } if details.contains(name)),
            "{what}: {err:?}"
        );
        let loaded = SavedModel::from_bytes_with(bytes, &allowed).unwrap();
        assert!(loaded.first_non_finite().is_some(), "{what}");
        loaded.into_model(&gpu).unwrap();
    };
    for (storage, tensor, value) in [
        (Precision::F32, 0, f32::NAN),
        (Precision::F16, 1, f32::INFINITY),
        (Precision::F32, 3, f32::NEG_INFINITY),
        (Precision::Int8, 3, f32::NAN),
    ] {
        let mut bad = saved();
        bad.parameters[tensor].2[1] = value;
        let name = bad.parameters[tensor].0.clone();
        check(
            &bad.to_bytes_as(storage).unwrap(),
            &name,
            &format!("{storage:?} {name} {value}"),
        );
    }
    let mut bad = saved();
    bad.parameters[2].2[1] = f32::NAN;
    assert!(matches!(
        bad.to_bytes_as(Precision::Int8),
        Err(Error::InvalidArgument { .. })
    ));
    // An int8 file whose scale is NaN.
    let bytes = saved().to_bytes_as(Precision::Int8).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let scale = tensors
        .iter_mut()
        .find(|t| t.0 == "4.weight_scale")
        .unwrap();
    scale.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let nan_scale = safetensors::serialize(views, header.metadata().clone()).unwrap();
    check(&nan_scale, "4.weight_scale", "a NaN int8 scale");
}

/// A file of 65,536 small tensors loads in time linear in their number (the name check was
/// quadratic: 11 s here before, about 40 minutes at safetensors' 100 MB header cap).
#[test]
fn many_small_tensors_load() {
    let gpu = gpu();
    let layers = vec![
        LayerSpec::Linear {
            inputs: 1,
            outputs: 1,
        };
        32_768
    ];
    let parameters = Init::XavierUniform { seed: 1 }.values(&layers).unwrap();
    let saved = SavedModel {
        input_shape: vec![1],
        layers,
        parameters,
    };
    let bytes = saved.to_bytes().unwrap();
    let model = SavedModel::from_bytes(&bytes)
        .unwrap()
        .into_model(&gpu)
        .unwrap();
    assert_eq!(model.params().params().len(), 65_536);
}
