//! The byte-level BPE tokenizer of a GGUF file (`tokenizer.ggml.model = "gpt2"`), built with
//! Hugging Face's `tokenizers` crate from the file's vocabulary and merges: GPT-2's pre-tokenizer
//! (with each digit split apart where `tokenizer.ggml.pre` is `smollm`, as llama.cpp and the
//! model's `tokenizer.json` do), control tokens as special tokens, and byte-level decoding.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::GgufFile;
use crate::error::{Cause, Error, Result};

/// GGUF's token type of a control token (`<|im_start|>`).
const CONTROL: u64 = 3;
/// GGUF's token type of a user-defined token.
const USER_DEFINED: u64 = 4;

/// A GGUF file's tokenizer: text to token ids and back.
pub struct BpeTokenizer {
    /// Special tokens are not looked for in the text.
    plain: Tokenizer,
    /// Control tokens written in the text are their ids.
    special: Tokenizer,
    vocab: usize,
    /// The beginning- and end-of-sequence tokens, where the file names them.
    pub bos: Option<u32>,
    /// The end-of-sequence token.
    pub eos: Option<u32>,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("vocab", &self.vocab)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn bad(details: String) -> Error {
    Error::ModelFile {
        details: format!("GGUF tokenizer: {details}"),
    }
}

fn tokenizers_error(what: &str, e: tokenizers::Error) -> Error {
    Error::Serving {
        details: format!("tokenizer: {what}"),
        source: Some(Cause::new(std::io::Error::other(e.to_string()))),
    }
}

impl BpeTokenizer {
    /// The tokenizer in `file`'s metadata (`tokenizer.ggml.*`): a `gpt2` model with a `default`,
    /// `gpt2` or `smollm` pre-tokenizer; anything else is refused by name.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model is {model:?}; byte-level BPE (\"gpt2\") is read"
            )));
        }
        let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
        let split_digits = match pre {
            "smollm" => true,
            "default" | "gpt2" => false,
            other => {
                return Err(bad(format!(
                    "tokenizer.ggml.pre is {other:?}; \"smollm\", \"gpt2\" and \"default\" are read"
                )))
            }
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            file.value(key)?
                .as_array()
                .ok_or_else(|| bad(format!("{key} is not an array")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| bad(format!("{key} holds a value that is not a string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let mut merges = Vec::new();
        for (i, m) in strings("tokenizer.ggml.merges")?.into_iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| bad(format!("merge {i} ({m:?}) is not two pieces")))?;
            merges.push((a.to_string(), b.to_string()));
        }
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        if vocab.len() != tokens.len() {
            return Err(bad("tokenizer.ggml.tokens repeats a token".into()));
        }
        let types: Vec<u64> = match file.value("tokenizer.ggml.token_type") {
            Ok(v) => v
                .as_array()
                .ok_or_else(|| bad("tokenizer.ggml.token_type is not an array".into()))?
                .iter()
                .map(|t| t.as_u64().unwrap_or(1))
                .collect(),
            Err(_) => vec![1; tokens.len()],
        };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tokenizers_error("building the BPE model", e))?;
        let mut pieces: Vec<PreTokenizerWrapper> = Vec::new();
        if split_digits {
            pieces.push(Digits::new(true).into());
        }
        pieces.push(ByteLevel::new(false, true, true).into());
        let mut plain = Tokenizer::new(bpe);
        plain.with_pre_tokenizer(Some(Sequence::new(pieces)));
        plain.with_decoder(Some(ByteLevelDecoder::default()));
        let mut special = plain.clone();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == CONTROL || t == USER_DEFINED)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        special.add_special_tokens(&added);
        let id = |key: &str| -> Result<Option<u32>> {
            match file.u64(key) {
                Ok(i) if (i as usize) < tokens.len() => Ok(Some(i as u32)),
                Ok(i) => Err(bad(format!("{key} is {i}, past the vocabulary"))),
                Err(_) => Ok(None),
            }
        };
        Ok(BpeTokenizer {
            plain,
            special,
            vocab: tokens.len(),
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
        })
    }

    /// Tokens in the vocabulary.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The ids of `text`. With `parse_special`, control tokens written in the text
    /// (`<|im_start|>`) are their ids; without, they are text like any other.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let t = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        t.encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| tokenizers_error("encoding", e))
    }

    /// The text of `ids` (each within the vocabulary), control tokens included as written.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::InvalidArgument {
                op: "BpeTokenizer::decode",
                details: format!("token {t} is past the vocabulary of {}", self.vocab),
            });
        }
        self.special
            .decode(ids, false)
            .map_err(|e| tokenizers_error("decoding", e))
    }
}
