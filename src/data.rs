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
