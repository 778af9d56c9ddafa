//! Batches of pairs: chosen rows then rejected rows in one right-padded batch, so one forward
//! pass scores both (TRL ≥ 0.24), and a seeded shuffle that a resumed run can replay.

use trl_models::{Padding, TokenBatch};

use crate::data::TokenizedPair;
use crate::error::{Result, RewardError};

/// `2B` rows (chosen `0..B`, rejected `B..2B`), right padded with `pad_id`.
pub fn collate(
    pairs: &[&TokenizedPair],
    pad_id: i64,
    pad_to_multiple_of: Option<usize>,
) -> Result<(TokenBatch, Option<Vec<f32>>)> {
    let rows: Vec<Vec<i64>> =
        pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
    let batch = TokenBatch::pad(&rows, pad_id, Padding::Right, pad_to_multiple_of).map_err(RewardError::Model)?;
    Ok((batch, margins(pairs)))
}

/// The pairs' margins (0 where a pair has none), when any pair has one.
pub fn margins(pairs: &[&TokenizedPair]) -> Option<Vec<f32>> {
    pairs.iter().any(|p| p.margin.is_some()).then(|| pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect())
}

/// SplitMix64: a small seeded generator whose whole state is one `u64`.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The order of `n` examples in `epoch`: a Fisher–Yates shuffle seeded by `(seed, epoch)`,
/// so any epoch's order can be recomputed on resume.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}
