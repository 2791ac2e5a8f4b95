//! Data sets the examples and tests train on.

use std::io::Read;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{Error, Result};

/// The UCI "Optical Recognition of Handwritten Digits" data: 1,797 images of 8×8 pixels (0..16),
/// labels 0..9. CC BY 4.0, E. Alpaydin and C. Kaynak, UCI Machine Learning Repository; shipped in
/// `data/` with its description (`digits.rst`).
#[derive(Debug, Clone)]
pub struct Digits {
    /// Pixels scaled to [0, 1], 64 per image, row-major.
    pub images: Vec<f32>,
    /// Labels 0..9.
    pub labels: Vec<u32>,
}

const DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

impl Digits {
    /// Pixels per image.
    pub const PIXELS: usize = 64;

    /// The whole set (shipped inside the crate).
    pub fn load() -> Result<Self> {
        Self::parse_gz(DIGITS_GZ)
    }

    /// Parses the gzipped CSV: 64 integers 0..16 then the label, one image per line.
    pub fn parse_gz(bytes: &[u8]) -> Result<Self> {
        let bad = |details: String| Error::InvalidArgument {
            op: "Digits::parse_gz",
            details,
        };
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("not a gzipped text file: {e}")))?;
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let values: Vec<u32> = line
                .split(',')
                .map(|v| v.trim().parse::<u32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            if values.len() != Self::PIXELS + 1 || values[Self::PIXELS] > 9 {
                return Err(bad(format!(
                    "line {}: expected 64 pixels and a label 0..9",
                    n + 1
                )));
            }
            images.extend(values[..Self::PIXELS].iter().map(|&v| v as f32 / 16.0));
            labels.push(values[Self::PIXELS]);
        }
        Ok(Digits { images, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// A seeded shuffle split into (train, test), `test_fraction` of the images in test.
    pub fn split(&self, test_fraction: f32, seed: u64) -> (Digits, Digits) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let test_len = ((self.len() as f32) * test_fraction).round() as usize;
        let pick = |idx: &[usize]| Digits {
            images: idx
                .iter()
                .flat_map(|&i| {
                    self.images[i * Self::PIXELS..(i + 1) * Self::PIXELS]
                        .iter()
                        .copied()
                })
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        };
        (pick(&order[test_len..]), pick(&order[..test_len]))
    }
}

/// A text as a sequence of character ids: its alphabet (sorted, each character once) is the
/// vocabulary.
#[derive(Debug, Clone)]
pub struct CharCorpus {
    /// The text.
    pub text: String,
    /// The vocabulary: id i is `vocabulary[i]`.
    pub vocabulary: Vec<char>,
}

const SHAKESPEARE_GZ: &[u8] = include_bytes!("../data/shakespeare.txt.gz");

/// The largest text [`CharCorpus::from_gz`] inflates.
const MAX_TEXT_BYTES: u64 = 64 << 20;

impl CharCorpus {
    /// Ten of Shakespeare's plays (1.27 MB of ASCII, 80 characters; public domain text, the
    /// collection CC BY 2.5 Open Knowledge Foundation: see `data/README.md`), shipped in the crate.
    pub fn shakespeare() -> Result<Self> {
        Self::from_gz(SHAKESPEARE_GZ)
    }

    /// A gzipped UTF-8 text, inflated up to 64 MiB.
    pub fn from_gz(bytes: &[u8]) -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_TEXT_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::InvalidArgument {
                op: "CharCorpus::from_gz",
                details: format!("not gzipped UTF-8 text: {e}"),
            })?;
        if text.len() as u64 > MAX_TEXT_BYTES {
            return Err(Error::LimitExceeded {
                what: "CharCorpus::from_gz: text bytes".into(),
                requested: text.len() as u64,
                limit: MAX_TEXT_BYTES,
            });
        }
        Self::from_text(text)
    }

    /// A corpus over `text`'s own alphabet (at least one character).
    pub fn from_text(text: String) -> Result<Self> {
        let mut vocabulary: Vec<char> = text.chars().collect();
        vocabulary.sort_unstable();
        vocabulary.dedup();
        if vocabulary.is_empty() {
            return Err(Error::InvalidArgument {
                op: "CharCorpus::from_text",
                details: "the text is empty".into(),
            });
        }
        Ok(CharCorpus { text, vocabulary })
    }

    /// The vocabulary as one string (id i is its i-th character): what a saved model carries.
    pub fn vocabulary_string(&self) -> String {
        self.vocabulary.iter().collect()
    }

    /// The ids of `s`; a character outside the vocabulary is an [`Error::InvalidArgument`].
    pub fn encode(&self, s: &str) -> Result<Vec<u32>> {
        s.chars()
            .map(|c| {
                self.vocabulary
                    .binary_search(&c)
                    .map(|i| i as u32)
                    .map_err(|_| Error::InvalidArgument {
                        op: "CharCorpus::encode",
                        details: format!("{c:?} is not in the vocabulary"),
                    })
            })
            .collect()
    }

    /// The text of `ids` (an id past the vocabulary shows as U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| {
                self.vocabulary
                    .get(i as usize)
                    .copied()
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect()
    }

    /// The whole text as ids, cut into (training, validation): the validation part is the last
    /// `validation_fraction` (in [0, 1)) of the text.
    pub fn split(&self, validation_fraction: f64) -> Result<(Vec<u32>, Vec<u32>)> {
        if !(0.0..1.0).contains(&validation_fraction) {
            return Err(Error::InvalidArgument {
                op: "CharCorpus::split",
                details: format!(
                    "validation_fraction must be in [0, 1), got {validation_fraction}"
                ),
            });
        }
        let ids = self.encode(&self.text)?;
        let cut = ids.len() - (ids.len() as f64 * validation_fraction) as usize;
        let validation = ids[cut..].to_vec();
        let mut train = ids;
        train.truncate(cut);
        Ok((train, validation))
    }
}
