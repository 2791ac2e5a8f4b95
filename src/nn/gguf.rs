//! GGUF, llama.cpp's model file: the header, metadata of every value type, tensor infos,
//! alignment and data offsets, and the CPU dequantization of the block formats (F32, F16, BF16,
//! Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K). Every count, length, dimension, offset and type in a file
//! is checked before it is used: a truncated, hostile or unsupported file gets
//! [`Error::ModelFile`] naming the key or tensor, never a panic or an allocation the file's bytes
//! do not back.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// The largest GGUF file read: 16 GiB.
pub const MAX_GGUF_BYTES: u64 = 16 << 30;
/// Tensors and metadata keys a file may declare, each.
const MAX_ENTRIES: u64 = 1 << 20;
/// Dimensions of a tensor.
const MAX_DIMS: u32 = 4;
/// Nesting of metadata arrays.
const MAX_ARRAY_DEPTH: usize = 4;

pub use crate::dtype::GgmlType;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING` (UTF-8).
    String(String),
    /// `ARRAY` of one value type.
    Array(Vec<MetadataValue>),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl MetadataValue {
    /// The value as an unsigned integer, whatever its integer type (a negative one: `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, whatever its float type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            MetadataValue::U8(_) => "UINT8",
            MetadataValue::I8(_) => "INT8",
            MetadataValue::U16(_) => "UINT16",
            MetadataValue::I16(_) => "INT16",
            MetadataValue::U32(_) => "UINT32",
            MetadataValue::I32(_) => "INT32",
            MetadataValue::F32(_) => "FLOAT32",
            MetadataValue::Bool(_) => "BOOL",
            MetadataValue::String(_) => "STRING",
            MetadataValue::Array(_) => "ARRAY",
            MetadataValue::U64(_) => "UINT64",
            MetadataValue::I64(_) => "INT64",
            MetadataValue::F64(_) => "FLOAT64",
        }
    }
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its dimensions in ggml's order: `dims[0]` varies fastest (a weight of `[out, in]` rows is
    /// `[in, out]` here).
    pub dims: Vec<u64>,
    /// Its storage type.
    pub ggml_type: GgmlType,
    /// Where its data starts, from the start of the data section.
    pub offset: u64,
    /// Its values.
    pub values: u64,
    /// Its bytes.
    pub bytes: u64,
}

/// A GGUF file read and checked: its metadata, its tensors' descriptions, and its bytes.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, MetadataValue>,
    /// The tensors, in the file's order.
    pub tensors: Vec<TensorInfo>,
    /// The data section's alignment (`general.alignment`, 32 by default).
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_offset: u64,
    bytes: Vec<u8>,
}

fn bad(details: impl Into<String>) -> Error {
    Error::ModelFile {
        details: format!("GGUF: {}", details.into()),
    }
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.left())
            .ok_or_else(|| {
                bad(format!(
                    "{}: needs {n} bytes at offset {}, the file has {} left (truncated?)",
                    what(),
                    self.at,
                    self.left()
                ))
            })?;
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| bad(format!("{}: not UTF-8", what())))
    }

    fn value(
        &mut self,
        type_id: u32,
        what: &dyn Fn() -> String,
        depth: usize,
    ) -> Result<MetadataValue> {
        Ok(match type_id {
            0 => MetadataValue::U8(self.array::<1>(what)?[0]),
            1 => MetadataValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetadataValue::U32(self.u32(what)?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetadataValue::Bool(false),
                1 => MetadataValue::Bool(true),
                b => return Err(bad(format!("{}: a BOOL of {b}, not 0 or 1", what()))),
            },
            8 => MetadataValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(bad(format!(
                        "{}: arrays nested past {MAX_ARRAY_DEPTH} levels",
                        what()
                    )));
                }
                let element = self.u32(what)?;
                let count = self.u64(what)?;
                // Each element takes at least one byte (a string, eight): a count past the bytes
                // left is refused before anything is allocated for it.
                let least = match element {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(bad(format!(
                            "{}: unknown metadata value type {other}",
                            what()
                        )))
                    }
                };
                if count.saturating_mul(least) > self.left() as u64 {
                    return Err(bad(format!(
                        "{}: an array of {count} elements, past the {} bytes left",
                        what(),
                        self.left()
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(element, what, depth + 1)?);
                }
                MetadataValue::Array(items)
            }
            10 => MetadataValue::U64(self.u64(what)?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(bad(format!(
                    "{}: unknown metadata value type {other}",
                    what()
                )))
            }
        })
    }
}

impl GgufFile {
    /// Reads and checks the file at `path` (at most [`MAX_GGUF_BYTES`]).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = super::io::read_capped(path, MAX_GGUF_BYTES)?;
        Self::parse(bytes).map_err(|e| match e {
            Error::ModelFile { details } => Error::ModelFile {
                details: format!("{}: {details}", path.display()),
            },
            other => other,
        })
    }

    /// Checks and reads a GGUF file's `bytes`.
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            at: 0,
        };
        let magic = c.array::<4>(&|| "the magic".into())?;
        if &magic != b"GGUF" {
            return Err(bad("not a GGUF file (no \"GGUF\" magic)"));
        }
        let version = c.u32(&|| "the version".into())?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("version {version}; versions 2 and 3 are read")));
        }
        let tensor_count = c.u64(&|| "the tensor count".into())?;
        let key_count = c.u64(&|| "the metadata count".into())?;
        for (what, n) in [("tensors", tensor_count), ("metadata keys", key_count)] {
            if n > MAX_ENTRIES {
                return Err(bad(format!("{n} {what}, past the limit of {MAX_ENTRIES}")));
            }
        }
        let mut metadata = BTreeMap::new();
        for i in 0..key_count {
            let key = c.string(&|| format!("metadata key {i}"))?;
            let what = || format!("metadata {key:?}");
            let type_id = c.u32(&what)?;
            let value = c.value(type_id, &what, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(format!("metadata {key:?} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(MetadataValue::U32(a)) if a.is_power_of_two() && (8..=1 << 20).contains(a) => {
                u64::from(*a)
            }
            Some(other) => {
                return Err(bad(format!(
                    "general.alignment must be a UINT32 power of two in 8..=2^20, got {other:?}"
                )))
            }
        };
        let mut infos = Vec::new();
        for i in 0..tensor_count {
            let name = c.string(&|| format!("tensor {i}'s name"))?;
            let what = || format!("tensor {name:?}");
            let n_dims = c.u32(&what)?;
            if !(1..=MAX_DIMS).contains(&n_dims) {
                return Err(bad(format!(
                    "{}: {n_dims} dimensions, not 1 to {MAX_DIMS}",
                    what()
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            infos.push((name, dims, type_id, offset));
        }
        let data_offset = (c.at as u64).div_ceil(alignment) * alignment;
        if data_offset > bytes.len() as u64 {
            return Err(bad(format!(
                "the data section starts at {data_offset}, past the file's {} bytes",
                bytes.len()
            )));
        }
        let data_len = bytes.len() as u64 - data_offset;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut names = std::collections::HashSet::new();
        for (name, dims, type_id, offset) in infos {
            let what = format!("tensor {name:?}");
            if !names.insert(name.clone()) {
                return Err(bad(format!("{what} appears twice")));
            }
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                bad(format!(
                    "{what}: storage type {type_id} is not one this reader dequantizes \
                     (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K)"
                ))
            })?;
            if dims.contains(&0) {
                return Err(bad(format!("{what}: a dimension of 0 in {dims:?}")));
            }
            let values = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&v| v <= 1 << 40)
                .ok_or_else(|| bad(format!("{what}: dimensions {dims:?} hold too many values")))?;
            let per_block = ggml_type.block_values() as u64;
            if dims[0] % per_block != 0 {
                return Err(bad(format!(
                    "{what}: its first dimension {} is not a whole number of {} blocks of {per_block}",
                    dims[0],
                    ggml_type.name()
                )));
            }
            let bytes_needed = values / per_block * ggml_type.block_bytes() as u64;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "{what}: offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if offset
                .checked_add(bytes_needed)
                .is_none_or(|end| end > data_len)
            {
                return Err(bad(format!(
                    "{what}: {bytes_needed} bytes at offset {offset} pass the data section's \
                     {data_len} bytes (truncated?)"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                values,
                bytes: bytes_needed,
            });
        }
        Ok(GgufFile {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            bytes,
        })
    }

    /// The tensor named `name`'s description.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| bad(format!("no tensor {name:?}")))
    }

    /// The bytes of the tensor named `name`, in its storage type's layout.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        // Checked at parse: within the data section.
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.bytes[start..start + t.bytes as usize])
    }

    /// The tensor named `name` dequantized to f32, in ggml's order (`dims[0]` fastest).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        dequantize(t.ggml_type, self.tensor_bytes(name)?)
            .map_err(|e| bad(format!("tensor {name:?}: {e}")))
    }

    /// The metadata value at `key`.
    pub fn value(&self, key: &str) -> Result<&MetadataValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| bad(format!("no metadata {key:?}")))
    }

    /// The unsigned integer at `key` (any integer type).
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.value(key)?;
        v.as_u64().ok_or_else(|| {
            bad(format!(
                "metadata {key:?} is a {}, not an unsigned integer",
                v.kind()
            ))
        })
    }

    /// The float at `key` (FLOAT32 or FLOAT64).
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.value(key)?;
        v.as_f64()
            .ok_or_else(|| bad(format!("metadata {key:?} is a {}, not a float", v.kind())))
    }

    /// The string at `key`.
    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self.value(key)?;
        v.as_str()
            .ok_or_else(|| bad(format!("metadata {key:?} is a {}, not a string", v.kind())))
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K / Q5_K super-block's 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(d), f32::from(m))
}

/// `bytes` (whole blocks of `ty`) as f32 values, as ggml dequantizes them. Refuses a length that
/// is not whole blocks and non-finite results' inputs are kept as they are (an f16 scale of inf
/// gives inf).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let block = ty.block_bytes();
    if !bytes.len().is_multiple_of(block) {
        return Err(format!(
            "{} bytes are not whole {} blocks of {block} bytes",
            bytes.len(),
            ty.name()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / block * ty.block_values());
    for b in bytes.chunks_exact(block) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(f16_at(b, 0)),
            GgmlType::BF16 => out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q4_0 => {
                let d = f16_at(b, 0);
                let q = &b[2..18];
                out.extend(q.iter().map(|&x| d * (f32::from(x & 0x0F) - 8.0)));
                out.extend(q.iter().map(|&x| d * (f32::from(x >> 4) - 8.0)));
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let q = &b[4..20];
                out.extend(q.iter().map(|&x| d * f32::from(x & 0x0F) + m));
                out.extend(q.iter().map(|&x| d * f32::from(x >> 4) + m));
            }
            GgmlType::Q8_0 => {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&x| d * f32::from(x as i8)));
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let (qh, qs) = if ty == GgmlType::Q5K {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                // Four chunks of 32 bytes, each two sub-blocks: low nibbles, then high ones.
                for chunk in 0..4 {
                    let q = &qs[chunk * 32..chunk * 32 + 32];
                    for half in 0..2 {
                        let j = chunk * 2 + half;
                        let (sc, m) = scale_min_k4(j, scales);
                        let (scale, min) = (d * sc, dmin * m);
                        for (l, &x) in q.iter().enumerate() {
                            let low = if half == 0 { x & 0x0F } else { x >> 4 };
                            let high = if qh.is_empty() {
                                0
                            } else {
                                ((qh[l] >> j) & 1) << 4
                            };
                            out.push(scale * f32::from(low | high) - min);
                        }
                    }
                }
            }
            GgmlType::Q6K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                // Two halves of 128 values; in each, four runs of 32 share the bytes.
                for half in 0..2 {
                    let (ql, qh) = (
                        &ql[half * 64..half * 64 + 64],
                        &qh[half * 32..half * 32 + 32],
                    );
                    let mut run = [[0f32; 32]; 4];
                    for l in 0..32 {
                        let q = [
                            (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (r, &q) in q.iter().enumerate() {
                            // Sub-blocks of 16: run r's values l < 16 and l >= 16 differ.
                            let s = sc[half * 8 + r * 2 + l / 16] as i8;
                            run[r][l] = d * f32::from(s) * f32::from(q as i8 - 32);
                        }
                    }
                    for r in run {
                        out.extend_from_slice(&r);
                    }
                }
            }
        }
    }
    Ok(out)
}
