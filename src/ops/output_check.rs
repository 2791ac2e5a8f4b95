//! Checking a tuning candidate's output against the default kernel's, for the op families that
//! tune ([`crate::tune`]).

use crate::error::Result;

/// Checks a candidate's output against the first candidate's (the fixed default's), element by
/// element: a candidate that computes something else on this adapter (a kernel whose assumptions
/// about the hardware do not hold) must never be chosen, however fast. The first call keeps its
/// output as the reference. Differences of rounding pass: |a - b| <= tol · (max |reference| + 1);
/// NaN matches NaN (elements no candidate writes).
pub(crate) struct OutputCheck {
    reference: Option<Vec<f32>>,
    checked: Vec<&'static str>,
    tol: f32,
}

impl OutputCheck {
    pub(crate) fn new(dtype: crate::dtype::DType) -> Self {
        let tol = if dtype == crate::dtype::DType::F16 {
            5e-2
        } else {
            1e-3
        };
        OutputCheck {
            reference: None,
            checked: Vec::new(),
            tol,
        }
    }

    /// Checks `candidate`'s output once (its first run); later runs pass unread.
    pub(crate) fn check(
        &mut self,
        candidate: &'static str,
        out: &crate::tensor::Tensor,
    ) -> Result<()> {
        if self.checked.contains(&candidate) {
            return Ok(());
        }
        self.checked.push(candidate);
        self.compare(candidate, out.to_vec_f32()?)
    }

    fn compare(&mut self, candidate: &'static str, got: Vec<f32>) -> Result<()> {
        let Some(want) = &self.reference else {
            self.reference = Some(got);
            return Ok(());
        };
        let scale = want
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0f32, |m, x| m.max(x.abs()))
            + 1.0;
        let agree = want.len() == got.len()
            && want
                .iter()
                .zip(&got)
                .all(|(w, g)| (w.is_nan() && g.is_nan()) || (w - g).abs() <= self.tol * scale);
        if agree {
            Ok(())
        } else {
            Err(crate::error::Error::Validation(format!(
                "tuning: candidate {candidate} disagrees with the default kernel on this adapter"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_that_computes_something_else_is_refused() {
        let mut check = OutputCheck::new(crate::dtype::DType::F32);
        check
            .compare("default", vec![1.0, -2.0, f32::NAN, 4.0])
            .unwrap();
        // Rounding differences and the same unwritten elements pass.
        check
            .compare("close", vec![1.0 + 1e-5, -2.0, f32::NAN, 4.0])
            .unwrap();
        assert!(check
            .compare("wrong", vec![1.0, -2.0, f32::NAN, 4.5])
            .is_err());
        assert!(check
            .compare("unwritten", vec![1.0, f32::NAN, f32::NAN, 4.0])
            .is_err());
        assert!(check.compare("short", vec![1.0, -2.0]).is_err());
    }
}
