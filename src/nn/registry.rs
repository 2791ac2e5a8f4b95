//! Layer kinds by name: what model files and the decoder use to make a layer from its
//! configuration. The built-in layers are registered from the start; a layer of another crate is
//! registered once with [`register_layer`], after which models holding it save, load and decode.

use std::collections::BTreeMap;
use std::sync::{OnceLock, RwLock};

use serde::de::DeserializeOwned;

use super::layer::Layer;
use super::layers::{ActivationLayer, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d};
use super::transformer::{Dropout, Embedding, LayerNorm, MultiHeadAttention};
use crate::error::{Error, Result};

/// Makes a layer from its configuration (the JSON object [`Layer::config`] gave), checking it.
pub type LayerFactory = fn(&serde_json::Value) -> Result<Box<dyn Layer>>;

struct Entry {
    factory: LayerFactory,
    built_in: bool,
}

fn registry() -> &'static RwLock<BTreeMap<String, Entry>> {
    static REGISTRY: OnceLock<RwLock<BTreeMap<String, Entry>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let built_in: [(&str, LayerFactory); 12] = [
            ("Linear", |c| {
                checked::<Linear>("Linear", c, Linear::validate)
            }),
            ("Conv2d", |c| {
                checked::<Conv2d>("Conv2d", c, Conv2d::validate)
            }),
            ("MaxPool2d", |c| {
                checked::<MaxPool2d>("MaxPool2d", c, MaxPool2d::validate)
            }),
            ("AvgPool2d", |c| {
                checked::<AvgPool2d>("AvgPool2d", c, AvgPool2d::validate)
            }),
            ("Flatten", |c| checked::<Flatten>("Flatten", c, |_| Ok(()))),
            ("Activation", |c| {
                checked::<ActivationLayer>("Activation", c, |_| Ok(()))
            }),
            ("Add", |c| match c.as_object() {
                Some(map) if map.is_empty() => Ok(Box::new(Add)),
                _ => Err(unknown(format!("Add: takes no configuration, got {c}"))),
            }),
            ("Embedding", |c| {
                checked::<Embedding>("Embedding", c, Embedding::validate)
            }),
            ("LayerNorm", |c| {
                checked::<LayerNorm>("LayerNorm", c, LayerNorm::validate)
            }),
            ("RmsNorm", |c| {
                checked::<LayerNorm>("RmsNorm", c, LayerNorm::validate)
            }),
            ("MultiHeadAttention", |c| {
                checked::<MultiHeadAttention>("MultiHeadAttention", c, MultiHeadAttention::validate)
            }),
            ("Dropout", |c| {
                checked::<Dropout>("Dropout", c, Dropout::validate)
            }),
        ];
        let map = built_in
            .into_iter()
            .map(|(kind, factory)| {
                let entry = Entry {
                    factory,
                    built_in: true,
                };
                (kind.to_string(), entry)
            })
            .collect();
        RwLock::new(map)
    })
}

fn unknown(details: String) -> Error {
    Error::ModelFile { details }
}

/// Deserializes a layer of type `L` from `config` and checks it with `validate`: how a
/// [`LayerFactory`] for a layer whose configuration is its serde form is written.
pub fn layer_from_config<L: Layer + DeserializeOwned + 'static>(
    kind: &str,
    config: &serde_json::Value,
) -> Result<Box<dyn Layer>> {
    checked::<L>(kind, config, |_| Ok(()))
}

fn checked<L: Layer + DeserializeOwned + 'static>(
    kind: &str,
    config: &serde_json::Value,
    validate: fn(&L) -> Result<()>,
) -> Result<Box<dyn Layer>> {
    let layer: L = serde_json::from_value(config.clone())
        .map_err(|e| unknown(format!("{kind}: configuration {config}: {e}")))?;
    validate(&layer)?;
    Ok(Box::new(layer))
}

/// Registers `factory` as the maker of layers of `kind` (what [`Layer::kind`] of those layers
/// returns), so that models holding them save, load and decode. Registering a kind again
/// replaces its factory; a built-in kind cannot be replaced ([`Error::InvalidArgument`]).
pub fn register_layer(kind: &str, factory: LayerFactory) -> Result<()> {
    if kind.is_empty() || kind.len() > 128 {
        return Err(Error::InvalidArgument {
            op: "register_layer",
            details: format!("a kind is 1 to 128 bytes, got {:?}", kind),
        });
    }
    let mut map = registry().write().unwrap_or_else(|p| p.into_inner());
    if map.get(kind).is_some_and(|e| e.built_in) {
        return Err(Error::InvalidArgument {
            op: "register_layer",
            details: format!("{kind:?} is a built-in layer kind"),
        });
    }
    map.insert(
        kind.to_string(),
        Entry {
            factory,
            built_in: false,
        },
    );
    Ok(())
}

/// The layer of `kind` made from `config` by its registered factory; an unregistered kind is an
/// [`Error::ModelFile`] that names it.
pub fn make_layer(kind: &str, config: &serde_json::Value) -> Result<Box<dyn Layer>> {
    let factory = {
        let map = registry().read().unwrap_or_else(|p| p.into_inner());
        map.get(kind).map(|e| e.factory)
    };
    let factory = factory.ok_or_else(|| {
        unknown(format!(
            "unknown layer kind {kind:?}: register it with wgnn::nn::register_layer (known: {})",
            registered_layers().join(", ")
        ))
    })?;
    let layer = factory(config)?;
    if layer.kind() != kind {
        return Err(unknown(format!(
            "the factory of {kind:?} made a layer of kind {:?}",
            layer.kind()
        )));
    }
    Ok(layer)
}

/// Every registered layer kind, sorted.
pub fn registered_layers() -> Vec<String> {
    let map = registry().read().unwrap_or_else(|p| p.into_inner());
    map.keys().cloned().collect()
}

/// A layer's record in a model file, `{"type": kind, ...configuration}`, split into its kind and
/// configuration.
pub(crate) fn split_kind(value: serde_json::Value) -> Result<(String, serde_json::Value)> {
    let serde_json::Value::Object(mut map) = value else {
        return Err(unknown(format!(
            "a layer is a JSON object with a \"type\", got {value}"
        )));
    };
    match map.remove("type") {
        Some(serde_json::Value::String(kind)) => Ok((kind, serde_json::Value::Object(map))),
        _ => Err(unknown(format!(
            "a layer needs a \"type\" string, got {}",
            serde_json::Value::Object(map)
        ))),
    }
}

/// The record of a layer of `kind` whose configuration is `config` (a JSON object, or null for
/// none): `{"type": kind, ...config}`.
pub(crate) fn join_kind(kind: &str, config: serde_json::Value) -> Result<serde_json::Value> {
    let mut map = match config {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            return Err(Error::InvalidArgument {
                op: "Layer::config",
                details: format!("{kind}: a configuration is a JSON object, got {other}"),
            })
        }
    };
    if map.contains_key("type") {
        return Err(Error::InvalidArgument {
            op: "Layer::config",
            details: format!("{kind}: \"type\" is reserved for the layer's kind"),
        });
    }
    map.insert("type".into(), serde_json::Value::String(kind.into()));
    Ok(serde_json::Value::Object(map))
}
