//! A tokenized batch on the host, and what every layer of a forward pass shares: the attention
//! mask and the position ids, built once per batch (not once per layer).

use std::borrow::Cow;
use std::cell::RefCell;

use burn::prelude::*;

use crate::error::{ModelError, Result};

/// Token ids and attention mask of a padded batch, row-major `[batch, seq]`, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    /// Explicit position ids; when `None` they come from the mask (`cumsum(mask) - 1`, pads 0),
    /// as transformers' `generate` does, so left padding works for absolute positions too.
    pub position_ids: Option<Vec<i64>>,
    /// Rows that each hold a pair of sequences sharing a prefix ([`SharedPairs`]); `None` for
    /// one sequence a row.
    pub shared: Option<Vec<SharedRow>>,
}

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    #[default]
    Right,
    Left,
}

impl TokenBatch {
    /// Pads token sequences to the longest (rounded up to `multiple_of`, if any) with `pad_id`.
    pub fn pad(rows: &[Vec<i64>], pad_id: i64, side: Padding, multiple_of: Option<usize>) -> Result<Self> {
        if rows.is_empty() {
            return Err(ModelError::Input("empty batch: no sequences given".into()));
        }
        if let Some(i) = rows.iter().position(|r| r.is_empty()) {
            return Err(ModelError::Input(format!("row {i} has no tokens")));
        }
        let mut seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        if let Some(m) = multiple_of.filter(|&m| m > 1) {
            seq = seq.div_ceil(m) * m;
        }
        let mut input_ids = Vec::with_capacity(rows.len() * seq);
        let mut attention_mask = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            let pad = seq - r.len();
            if side == Padding::Left {
                input_ids.extend(std::iter::repeat_n(pad_id, pad));
                attention_mask.extend(std::iter::repeat_n(0, pad));
            }
            input_ids.extend_from_slice(r);
            attention_mask.extend(std::iter::repeat_n(1, r.len()));
            if side == Padding::Right {
                input_ids.extend(std::iter::repeat_n(pad_id, pad));
                attention_mask.extend(std::iter::repeat_n(0, pad));
            }
        }
        Ok(Self { input_ids, attention_mask, batch: rows.len(), seq, position_ids: None, shared: None })
    }

    /// A batch with every token real (no padding).
    pub fn unpadded(input_ids: Vec<i64>, batch: usize, seq: usize) -> Self {
        let attention_mask = vec![1; input_ids.len()];
        Self { input_ids, attention_mask, batch, seq, position_ids: None, shared: None }
    }

    /// Index of the rightmost real token of each row (where a reward is read).
    pub fn last_token_index(&self) -> Vec<usize> {
        (0..self.batch)
            .map(|b| {
                let row = &self.attention_mask[b * self.seq..(b + 1) * self.seq];
                row.iter().rposition(|&m| m != 0).unwrap_or(self.seq - 1)
            })
            .collect()
    }

    /// Number of real tokens.
    pub fn num_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }

    pub fn ids_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::from_data(TensorData::new(self.input_ids.clone(), [self.batch, self.seq]), device)
    }
}

impl<B: Backend> Context<B> {
    /// The context of a batch of [`SharedPairs`] rows: the first sequence of a row is causal
    /// over itself; a token of the second sees the shared prefix and the second sequence up to
    /// itself; windows count positions.
    fn for_shared(batch: &TokenBatch, shared: &[SharedRow], window: Option<usize>, device: &B::Device) -> Self {
        let (b, t) = (batch.batch, batch.seq);
        let positions = batch.position_ids.clone().expect("shared rows carry their positions");
        let mut mask = Vec::with_capacity(b * t * t);
        for (r, row) in shared.iter().enumerate() {
            let pos = &positions[r * t..(r + 1) * t];
            let real = &batch.attention_mask[r * t..(r + 1) * t];
            for i in 0..t {
                let second = i >= row.split;
                mask.extend((0..t).map(|j| {
                    let hidden = j > i
                        || real[j] == 0
                        || (second && (row.shared..row.split).contains(&j))
                        || window.is_some_and(|w| pos[j] + w as i64 <= pos[i]);
                    hidden && j != i
                }));
            }
        }
        let mask = Tensor::from_data(TensorData::new(mask, [b, 1, t, t]), device);
        Self {
            mask,
            positions,
            batch: b,
            q_len: t,
            kv_len: t,
            tokens: None,
            branched: true,
            picked: None,
            memo: RefCell::new(Vec::new()),
        }
    }
}

/// How a row of a [`SharedPairs`] batch holds its two sequences: the first in slots
/// `0..split`, the second's tokens after its first `shared` (the prefix both share, read from
/// the first sequence's slots `0..shared`) in slots `split..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedRow {
    pub split: usize,
    pub shared: usize,
}

/// Preference pairs packed one pair to a row, the common token prefix of the two sequences
/// (the prompt) held once: `chosen ++ rejected[shared..]`, with the positions each token has in
/// its own sequence and a mask that keeps the two continuations apart. In a causal model the
/// prefix's hidden states are the same in both sequences, so every token's hidden state equals
/// the one it has in its own sequence, and a pair costs its prefix once.
#[derive(Debug, Clone)]
pub struct SharedPairs {
    pub batch: TokenBatch,
}

impl SharedPairs {
    /// `pairs` of token rows, right padded with `pad_id`.
    pub fn new(pairs: &[(&[i64], &[i64])], pad_id: i64) -> Result<Self> {
        if pairs.is_empty() {
            return Err(ModelError::Input("empty batch: no pairs given".into()));
        }
        // rows counted as in the padded batch of both sequences (the first sequences, then the
        // second), so that both passes name the same row
        if let Some(i) = pairs.iter().position(|(a, b)| a.is_empty() || b.is_empty()) {
            let (row, side) = if pairs[i].0.is_empty() { (i, "first") } else { (pairs.len() + i, "second") };
            return Err(ModelError::Input(format!("row {row} has no tokens (the {side} sequence of pair {i})")));
        }
        let rows: Vec<SharedRow> = pairs
            .iter()
            .map(|(a, b)| SharedRow { split: a.len(), shared: a.iter().zip(*b).take_while(|(x, y)| x == y).count() })
            .collect();
        let seq = pairs.iter().zip(&rows).map(|((a, b), r)| a.len() + b.len() - r.shared).max().unwrap_or(0);
        let n = pairs.len() * seq;
        let (mut input_ids, mut attention_mask, mut position_ids) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for ((a, b), r) in pairs.iter().zip(&rows) {
            let len = a.len() + b.len() - r.shared;
            input_ids.extend(a.iter().chain(&b[r.shared..]).copied().chain(std::iter::repeat_n(pad_id, seq - len)));
            attention_mask.extend(std::iter::repeat_n(1, len).chain(std::iter::repeat_n(0, seq - len)));
            let second = r.shared as i64..b.len() as i64;
            position_ids.extend((0..a.len() as i64).chain(second).chain(std::iter::repeat_n(0, seq - len)));
        }
        let batch = TokenBatch {
            input_ids,
            attention_mask,
            batch: pairs.len(),
            seq,
            position_ids: Some(position_ids),
            shared: Some(rows),
        };
        Ok(Self { batch })
    }

    /// The slot (row, position in the row) of token `t` of the first (`second == false`) or
    /// the second sequence of pair `i`.
    pub fn slot(&self, i: usize, second: bool, t: usize) -> (usize, usize) {
        let row = self.batch.shared.as_ref().expect("shared rows")[i];
        match second && t >= row.shared {
            true => (i, row.split + t - row.shared),
            false => (i, t),
        }
    }
}

/// Whether preference pairs are scored with their prompt once ([`SharedPairs`]): yes, unless
/// `TRL_SHARED_PREFIX=0` (read once) asks for the padded batch of both sequences.
pub fn prefix_sharing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("TRL_SHARED_PREFIX").map_or(true, |v| v != "0"))
}

/// What every layer of one forward pass shares.
///
/// Besides mask and positions it memoises, per head count, the tensors that lay activations
/// out for attention (row permutations, the mask expanded over heads), so each is built once
/// per forward pass instead of once per layer.
pub struct Context<B: Backend> {
    /// `[batch, 1, q_len, kv_len]`, true where attention is blocked (future or padding keys).
    pub mask: Tensor<B, 4, Bool>,
    /// Position of each query token, `[batch, q_len]` on the host (row-major).
    pub positions: Vec<i64>,
    pub batch: usize,
    pub q_len: usize,
    pub kv_len: usize,
    /// Which of the `batch * q_len` token slots the flat activations hold, in order: `None` for
    /// every slot (the padded layout), `Some` for the real tokens only (padding-free: norms,
    /// projections and MLPs never see a pad; attention still runs per row, padded).
    tokens: Option<Vec<usize>>,
    /// Rows that hold two sequences sharing a prefix ([`SharedPairs`]): windows are then
    /// measured in positions, not slots.
    branched: bool,
    /// The activation rows a block's output keeps ([`Context::picking`]), in order: the last
    /// block of a pass whose caller reads only these rows computes only them after attention.
    picked: Option<Vec<usize>>,
    memo: RefCell<Vec<(Memo, Memoised<B>)>>,
}

/// What [`Context`] memoises, by kind and head counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memo {
    ToHeads { heads: usize, groups: usize },
    FromHeads { heads: usize },
    Mask { heads: usize },
    Tokens,
    Picked,
    PickedToHeads { heads: usize },
    PickedFromHeads { heads: usize },
    PickedMask,
}

#[derive(Clone)]
enum Memoised<B: Backend> {
    Index(Tensor<B, 1, Int>),
    Mask(Tensor<B, 4, Bool>),
}

impl<B: Backend> Context<B> {
    /// Builds mask and positions for `q_len` new tokens whose keys are the last `q_len` of
    /// `kv_mask` (`[batch, kv_len]`, the mask of cached plus new tokens).
    ///
    /// A query never has every key blocked: its own position stays visible, so padded rows
    /// give finite (ignored) values instead of NaN, in the forward and the backward pass.
    pub fn new(
        kv_mask: &[i64],
        batch: usize,
        kv_len: usize,
        q_len: usize,
        position_ids: Option<&[i64]>,
        sliding_window: Option<usize>,
        device: &B::Device,
    ) -> Self {
        let past = kv_len - q_len;
        let mut positions = Vec::with_capacity(batch * q_len);
        let mut mask = Vec::with_capacity(batch * q_len * kv_len);
        // Row by row with slice copies (keys before the query: blocked where padding; the query
        // itself: visible; after it: blocked), not element by element.
        let future = vec![true; kv_len];
        let mut padding = Vec::with_capacity(kv_len);
        for b in 0..batch {
            let row = &kv_mask[b * kv_len..(b + 1) * kv_len];
            padding.clear();
            padding.extend(row.iter().map(|&m| m == 0));
            let mut count = row[..past].iter().filter(|&&m| m != 0).count() as i64;
            for i in 0..q_len {
                let qi = past + i;
                count += (row[qi] != 0) as i64;
                positions.push(match position_ids {
                    Some(p) => p[b * q_len + i],
                    None => (count - 1).max(0),
                });
                let start = mask.len();
                mask.extend_from_slice(&padding[..qi]);
                if let Some(w) = sliding_window {
                    // keys `j <= qi - w` are outside the window
                    let lo = (qi + 1).saturating_sub(w).min(qi);
                    mask[start..start + lo].fill(true);
                }
                mask.push(false);
                mask.extend_from_slice(&future[qi + 1..]);
            }
        }
        let mask = Tensor::from_data(TensorData::new(mask, [batch, 1, q_len, kv_len]), device);
        Self {
            mask,
            positions,
            batch,
            q_len,
            kv_len,
            tokens: None,
            branched: false,
            picked: None,
            memo: RefCell::new(Vec::new()),
        }
    }

    /// The same context with the keys `window` or more slots before each query blocked too:
    /// the sliding-window layers of models that alternate them with global ones (Gemma 2
    /// and 3), with Mistral's window semantics ([`Context::new`]).
    pub fn windowed(&self, window: usize) -> Self {
        let (b, q, kv) = (self.batch, self.q_len, self.kv_len);
        let past = kv - q;
        let band = if self.branched {
            // uncached rows of two sequences: the distance is in positions
            let p = &self.positions;
            let band: Vec<bool> = (0..b)
                .flat_map(|r| {
                    (0..q).flat_map(move |i| (0..kv).map(move |j| p[r * q + j] + window as i64 <= p[r * q + i]))
                })
                .collect();
            Tensor::<B, 4, Bool>::from_data(TensorData::new(band, [b, 1, q, kv]), &self.mask.device())
        } else {
            let band: Vec<bool> = (0..q).flat_map(|i| (0..kv).map(move |j| j + window <= past + i)).collect();
            Tensor::<B, 4, Bool>::from_data(TensorData::new(band, [1, 1, q, kv]), &self.mask.device())
                .expand([b, 1, q, kv])
        };
        self.like(self.mask.clone().bool_or(band), self.picked.clone(), Vec::new())
    }

    /// This context's layout with `mask`, `picked` rows and `memo`ised tensors.
    fn like(&self, mask: Tensor<B, 4, Bool>, picked: Option<Vec<usize>>, memo: Vec<(Memo, Memoised<B>)>) -> Self {
        Self {
            mask,
            positions: self.positions.clone(),
            batch: self.batch,
            q_len: self.q_len,
            kv_len: self.kv_len,
            tokens: self.tokens.clone(),
            branched: self.branched,
            picked,
            memo: RefCell::new(memo),
        }
    }

    /// The same context on `device` (for the layers a device map put there), its memoised
    /// tensors left to be built again there.
    pub fn to_device(&self, device: &B::Device) -> Self {
        self.like(self.mask.clone().to_device(device), self.picked.clone(), Vec::new())
    }

    /// The padding-free layout of an uncached batch: activations hold only the tokens where
    /// `attention_mask` (`[batch, q_len]`) is set. Their values equal the padded layout's.
    pub fn without_padding(mut self, attention_mask: &[i64]) -> Self {
        debug_assert_eq!(attention_mask.len(), self.batch * self.q_len);
        debug_assert_eq!(self.q_len, self.kv_len, "the padding-free layout is for uncached passes");
        self.tokens = Some(attention_mask.iter().enumerate().filter(|(_, &m)| m != 0).map(|(i, _)| i).collect());
        self.memo.borrow_mut().clear();
        self
    }

    /// The same context for a block whose output keeps only activation rows `rows` (in that
    /// order): attention still reads every row's key and value, but only these rows' outputs
    /// come back ([`attend`](crate::layers::attend)), from their queries alone where the block
    /// projects only those, and the block computes its residual and MLP on them alone
    /// ([`Context::kept`]).
    pub fn picking(&self, rows: &[usize]) -> Self {
        let kept =
            |k: &Memo| matches!(k, Memo::ToHeads { .. } | Memo::FromHeads { .. } | Memo::Mask { .. } | Memo::Tokens);
        let memo = self.memo.borrow().iter().filter(|(k, _)| kept(k)).cloned().collect();
        self.like(self.mask.clone(), Some(rows.to_vec()), memo)
    }

    /// The rows [`Context::picking`] keeps, if any.
    pub fn picked(&self) -> Option<&[usize]> {
        self.picked.as_deref()
    }

    /// `x`'s rows that a block's output keeps: all of them, or the picked ones.
    pub fn kept(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.picked {
            Some(rows) => x.select(0, self.index(Memo::Picked, || rows.iter().map(|&r| r as i64).collect())),
            None => x,
        }
    }

    /// Rows of a block's output: the activations' rows, or the picked ones.
    pub fn output_rows(&self) -> usize {
        self.picked.as_ref().map_or(self.num_tokens(), Vec::len)
    }

    /// Number of rows of the flat activations.
    pub fn num_tokens(&self) -> usize {
        self.tokens.as_ref().map_or(self.batch * self.q_len, Vec::len)
    }

    /// Token slot (`b * q_len + t`) of each activation row.
    pub fn token_slots(&self) -> Cow<'_, [usize]> {
        match &self.tokens {
            Some(t) => Cow::Borrowed(t),
            None => Cow::Owned((0..self.batch * self.q_len).collect()),
        }
    }

    /// Position of each activation row.
    pub fn token_positions(&self) -> Cow<'_, [i64]> {
        match &self.tokens {
            Some(t) => Cow::Owned(t.iter().map(|&s| self.positions[s]).collect()),
            None => Cow::Borrowed(&self.positions),
        }
    }

    /// In the padding-free layout, the rows of padded `[batch * q_len, ..]` activations to keep.
    pub fn token_rows(&self) -> Option<Tensor<B, 1, Int>> {
        self.tokens.as_ref()?;
        Some(self.index(Memo::Tokens, || self.token_slots().iter().map(|&s| s as i64).collect()))
    }

    /// The activation row holding token slot `b * q_len + t`, if the activations hold it
    /// (the padding-free layout leaves padding out).
    pub fn activation_row(&self, slot: usize) -> Option<usize> {
        match &self.tokens {
            Some(tokens) => tokens.binary_search(&slot).ok(),
            None => (slot < self.batch * self.q_len).then_some(slot),
        }
    }

    /// Activation row of each token slot; a padding slot borrows a real row of its batch row
    /// (its query output is dropped and, as a key, it is masked).
    fn row_of_slot(&self) -> Vec<usize> {
        let t = self.q_len;
        let mut fill = 0;
        (0..self.batch * t)
            .map(|slot| {
                if slot % t == 0 {
                    // the row's first real token, or the previous fill for an empty row
                    fill = (slot..slot + t).find_map(|s| self.activation_row(s)).unwrap_or(fill);
                }
                self.activation_row(slot).unwrap_or(fill)
            })
            .collect()
    }

    fn memoised(&self, key: Memo, make: impl FnOnce() -> Memoised<B>) -> Memoised<B> {
        if let Some((_, v)) = self.memo.borrow().iter().find(|(k, _)| *k == key) {
            return v.clone();
        }
        let v = make();
        self.memo.borrow_mut().push((key, v.clone()));
        v
    }

    fn index(&self, key: Memo, rows: impl FnOnce() -> Vec<i64>) -> Tensor<B, 1, Int> {
        let device = self.mask.device();
        let Memoised::Index(t) = self.memoised(key, || {
            let idx = rows();
            let n = idx.len();
            Memoised::Index(Tensor::from_data(TensorData::new(idx, [n]), &device))
        }) else {
            unreachable!("memo keys are typed")
        };
        t
    }

    /// Rows of flat `[tokens * heads, head_dim]` token-major activations, reordered to the
    /// padded head-major `(batch, heads * groups, q_len)`; each KV head repeated `groups` times.
    pub fn to_heads_index(&self, heads: usize, groups: usize) -> Tensor<B, 1, Int> {
        self.index(Memo::ToHeads { heads, groups }, || {
            let (b, t, out) = (self.batch, self.q_len, heads * groups);
            let row = self.row_of_slot();
            (0..b)
                .flat_map(|bi| (0..out).flat_map(move |h| (0..t).map(move |ti| (bi * t + ti, h))))
                .map(|(slot, h)| (row[slot] * heads + h / groups) as i64)
                .collect()
        })
    }

    /// The inverse layout: padded head-major `(batch, heads, q_len)` rows back to token-major
    /// rows of the activations' tokens.
    pub fn from_heads_index(&self, heads: usize) -> Tensor<B, 1, Int> {
        self.index(Memo::FromHeads { heads }, || {
            let t = self.q_len;
            let slots = self.token_slots();
            slots.iter().flat_map(|&s| (0..heads).map(move |h| (((s / t) * heads + h) * t + s % t) as i64)).collect()
        })
    }

    /// Where each picked row's query sits in the picked queries' head-major layout
    /// `(batch, heads, per_row)`: its batch row, query slot and place among its batch row's
    /// picks; and `per_row`, the most picks of one batch row (at least 1).
    fn picked_layout(&self) -> (Vec<(usize, usize, usize)>, usize) {
        let (rows, slots) = (self.picked.as_deref().unwrap_or(&[]), self.token_slots());
        let mut count = vec![0usize; self.batch];
        let layout = rows
            .iter()
            .map(|&r| {
                let (b, t) = (slots[r] / self.q_len, slots[r] % self.q_len);
                count[b] += 1;
                (b, t, count[b] - 1)
            })
            .collect();
        (layout, count.into_iter().max().unwrap_or(0).max(1))
    }

    /// Queries per batch row of the picked queries' layout ([`Context::picking`]).
    pub fn picked_per_row(&self) -> usize {
        self.picked_layout().1
    }

    /// For each place `(batch, per_row)` of the picked queries' layout, the pick there: its index
    /// among the picks, or for an empty place another pick of that batch row, or the first
    /// (whose output is dropped), and its query slot (a row with no pick reads slot 0, whose own
    /// key is always visible); and `per_row`.
    fn picked_places(&self) -> (Vec<(usize, usize)>, usize) {
        let (layout, per_row) = self.picked_layout();
        let mut at = vec![None; self.batch * per_row];
        for (p, &(b, t, j)) in layout.iter().enumerate() {
            at[b * per_row + j] = Some((p, t));
        }
        let places = (0..self.batch * per_row).map(|i| at[i].or(at[i - i % per_row]).unwrap_or((0, 0))).collect();
        (places, per_row)
    }

    /// Rows of the picked queries, flat `[picks * heads, head_dim]`, laid out head-major
    /// `(batch, heads, per_row)`.
    pub fn picked_to_heads_index(&self, heads: usize) -> Tensor<B, 1, Int> {
        self.index(Memo::PickedToHeads { heads }, || {
            let (places, per_row) = self.picked_places();
            let mut idx = Vec::with_capacity(places.len() * heads);
            for b in 0..self.batch {
                for h in 0..heads {
                    idx.extend((0..per_row).map(|j| (places[b * per_row + j].0 * heads + h) as i64));
                }
            }
            idx
        })
    }

    /// The inverse: head-major `(batch, heads, per_row)` rows back to the picks' order.
    pub fn picked_from_heads_index(&self, heads: usize) -> Tensor<B, 1, Int> {
        self.index(Memo::PickedFromHeads { heads }, || {
            let (layout, per_row) = self.picked_layout();
            layout
                .iter()
                .flat_map(|&(b, _, j)| (0..heads).map(move |h| ((b * heads + h) * per_row + j) as i64))
                .collect()
        })
    }

    /// The mask of the picked queries, `[batch, 1, per_row, kv_len]`.
    pub fn picked_mask(&self) -> Tensor<B, 4, Bool> {
        let Memoised::Mask(m) = self.memoised(Memo::PickedMask, || {
            let [b, _, q, k] = self.mask.dims();
            let (places, per_row) = self.picked_places();
            let rows: Vec<i64> = places.iter().enumerate().map(|(i, &(_, t))| ((i / per_row) * q + t) as i64).collect();
            let rows = Tensor::from_data(TensorData::new(rows, [b * per_row]), &self.mask.device());
            Memoised::Mask(self.mask.clone().reshape([b * q, k]).select(0, rows).reshape([b, 1, per_row, k]))
        }) else {
            unreachable!("memo keys are typed")
        };
        m
    }

    /// The mask expanded over `heads` and laid out contiguously (for kernels that do not
    /// broadcast cheaply, such as the autodiff attention path).
    pub fn mask_for_heads(&self, heads: usize) -> Tensor<B, 4, Bool> {
        let Memoised::Mask(m) = self.memoised(Memo::Mask { heads }, || {
            let [b, _, q, k] = self.mask.dims();
            let m = self.mask.clone().expand([b, heads, q, k]);
            // A contiguous copy: reshaping through a flat view materialises the expansion.
            Memoised::Mask(m.reshape([b * heads * q * k]).reshape([b, heads, q, k]))
        }) else {
            unreachable!("memo keys are typed")
        };
        m
    }

    /// The context of a whole (uncached) batch.
    pub fn for_batch(batch: &TokenBatch, sliding_window: Option<usize>, device: &B::Device) -> Self {
        if let Some(shared) = &batch.shared {
            return Self::for_shared(batch, shared, sliding_window, device);
        }
        Self::new(
            &batch.attention_mask,
            batch.batch,
            batch.seq,
            batch.seq,
            batch.position_ids.as_deref(),
            sliding_window,
            device,
        )
    }
}
