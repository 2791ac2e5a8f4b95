//! The Open Inference Protocol's REST messages (KServe v2), its binary tensor extension, and
//! Triton's generate extension, as serde types: an unknown field or a value of the wrong type is
//! refused with the field's path named.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The header that marks a body as JSON followed by binary tensor data: the JSON's length.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A JSON value's kind, for messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `bytes` as a `T`, or a message naming the field that did not fit (`inputs[0].shape[1]: ...`).
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else if path == "." {
            format!("the request: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    de.end().map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(value)
}

/// An inference request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// The request's parameters.
    #[serde(default)]
    pub parameters: RequestParameters,
    /// The input tensors.
    pub inputs: Vec<InputTensor>,
    /// The outputs wanted (all, where absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// An inference request's parameters: those of the protocol and Triton's clients that apply.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestParameters {
    /// Outputs not listed in `outputs` (or listed without `binary_data`) come as binary data.
    #[serde(default)]
    pub binary_data_output: bool,
    /// Triton's per-request deadline, in microseconds (capped at the server's request timeout).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Triton's priority: accepted, and requests are served in arrival order whatever it says.
    #[serde(default)]
    #[allow(dead_code)]
    pub priority: Option<u64>,
}

/// One input tensor: its data in JSON (`data`) or as binary data after the JSON
/// (`parameters.binary_data_size`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTensor {
    /// The input's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its datatype (`"FP32"`, ...).
    pub datatype: String,
    /// Its parameters.
    #[serde(default)]
    pub parameters: InputParameters,
    /// The values, flat or nested row-major, where they are not binary.
    #[serde(default)]
    pub data: Option<Value>,
}

/// An input tensor's parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputParameters {
    /// The bytes of this tensor's data in the binary part of the body, in input order.
    #[serde(default)]
    pub binary_data_size: Option<u64>,
}

/// An output asked for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Its parameters.
    #[serde(default)]
    pub parameters: OutputParameters,
}

/// A requested output's parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputParameters {
    /// Whether this output comes as binary data (else the request's `binary_data_output`).
    #[serde(default)]
    pub binary_data: Option<bool>,
}

/// An inference response.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    /// The model's name.
    pub model_name: String,
    /// The version served.
    pub model_version: String,
    /// The request's `id`, where it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs.
    pub outputs: Vec<OutputTensor>,
}

/// An output tensor: its data in JSON or, with `parameters.binary_data_size`, after the JSON.
#[derive(Debug, Serialize)]
pub struct OutputTensor {
    /// The output's name.
    pub name: &'static str,
    /// Its datatype.
    pub datatype: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its binary size, where it is binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinarySize>,
    /// Its values, where they are JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorData>,
}

/// The `parameters` of a binary output.
#[derive(Debug, Serialize)]
pub struct BinarySize {
    /// Bytes of the tensor's data in the binary part of the body.
    pub binary_data_size: usize,
}

/// An output's values.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TensorData {
    /// `FP32`.
    Fp32(Vec<f32>),
    /// `INT64`.
    Int64(Vec<i64>),
}

impl TensorData {
    /// The values as the binary extension sends them: little-endian, row-major.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A body split at `Inference-Header-Content-Length`: the JSON, then the binary tensor data.
pub(crate) fn split_body<'a>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), String> {
    let Some(length) = header_length else {
        return Ok((body, &[]));
    };
    let n: usize = length.trim().parse().map_err(|_| {
        format!("Inference-Header-Content-Length must be a byte count, got {length:?}")
    })?;
    if n > body.len() {
        return Err(format!(
            "Inference-Header-Content-Length is {n}, past the body's {} bytes",
            body.len()
        ));
    }
    Ok(body.split_at(n))
}

/// An FP32 input's `expected` values: its JSON `data`, or its `binary_data_size` bytes taken from
/// the front of `binary`. Every value must be finite.
pub(crate) fn fp32_values(
    input: &InputTensor,
    binary: &mut &[u8],
    expected: usize,
) -> Result<Vec<f32>, String> {
    let values = match (input.parameters.binary_data_size, &input.data) {
        (Some(_), Some(_)) => {
            return Err("an input has both \"data\" and a binary_data_size".into());
        }
        (None, None) => {
            return Err("the input has neither \"data\" nor a binary_data_size".into());
        }
        (Some(size), None) => {
            let want = expected as u64 * 4;
            if size != want {
                return Err(format!(
                    "binary_data_size is {size} bytes; the shape's {expected} FP32 values are {want}"
                ));
            }
            if (binary.len() as u64) < size {
                return Err(format!(
                    "binary_data_size is {size} bytes; the body has {} binary bytes left",
                    binary.len()
                ));
            }
            let (mine, rest) = binary.split_at(size as usize);
            *binary = rest;
            mine.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<f32>>()
        }
        (None, Some(data)) => {
            // Grown by what the data holds, not reserved for what the shape claims.
            let mut out = Vec::with_capacity(expected.min(1 << 16));
            flatten(data, &mut out, expected)?;
            if out.len() != expected {
                return Err(format!(
                    "the shape holds {expected} values, the data has {}",
                    out.len()
                ));
            }
            out
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {i} is {}, not a finite number", values[i]));
    }
    Ok(values)
}

/// Flattens `data` (flat or nested arrays of numbers) into f32s, at most `limit` of them.
fn flatten(data: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), String> {
    match data {
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out, limit)),
        Value::Number(n) => {
            if out.len() >= limit {
                return Err(format!("more data than the shape's {limit} values"));
            }
            let v = n.as_f64().unwrap_or(f64::INFINITY) as f32;
            if !v.is_finite() {
                return Err(format!("value {} is past f32's range", out.len()));
            }
            out.push(v);
            Ok(())
        }
        other => Err(format!(
            "FP32 data must be numbers, value {} is {}",
            out.len(),
            json_kind(other)
        )),
    }
}

/// A generate request (Triton's generate extension).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The prompt.
    pub text_input: String,
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// How to generate.
    #[serde(default)]
    pub parameters: GenerateParameters,
}

/// A generate request's parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParameters {
    /// Tokens to generate at most (1 to the model's context; default 32 or the context).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// 0 (the default) is greedy; else the softmax temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Draw among the `top_k` most likely tokens (0: all).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Draw within the nucleus of probability `top_p`.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// The sampling seed; a sampling request without one draws one and answers with it.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stop when the text ends with one of these.
    #[serde(default)]
    pub stop: Option<StopStrings>,
}

/// One stop string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopStrings {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A generate response, or one event of a stream.
#[derive(Debug, Serialize)]
pub struct GenerateResponse {
    /// The model's name.
    pub model_name: String,
    /// The version served.
    pub model_version: String,
    /// The request's `id`, where it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The text generated (a stream: this event's token).
    pub text_output: String,
    /// Why generation ended (`length`, `stop`, `context`): the answer, or a stream's last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<&'static str>,
    /// The seed a sampling request drew with (its own, or one drawn for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrongly_typed_or_unknown_field_is_named() {
        let e =
            parse::<GenerateRequest>(br#"{"text_input": "a", "parameters": {"max_tokens": "8"}}"#)
                .unwrap_err();
        assert!(e.starts_with("parameters.max_tokens: invalid type"), "{e}");
        let e = parse::<InferRequest>(
            br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "dat": [1]}]}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("inputs[0].dat: unknown field `dat`"), "{e}");
        let e = parse::<GenerateRequest>(br#"{"text_input": "a"} x"#).unwrap_err();
        assert!(e.starts_with("malformed JSON"), "{e}");
    }

    #[test]
    fn binary_values_are_little_endian_and_taken_in_order() {
        let input: InputTensor = parse(
            br#"{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}"#,
        )
        .unwrap();
        let bytes: Vec<u8> = [1.5f32, -2.0, 7.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut rest = bytes.as_slice();
        assert_eq!(fp32_values(&input, &mut rest, 2).unwrap(), vec![1.5, -2.0]);
        assert_eq!(rest.len(), 4);
        let nan = f32::NAN.to_le_bytes().repeat(2);
        assert!(fp32_values(&input, &mut nan.as_slice(), 2).is_err());
    }
}
