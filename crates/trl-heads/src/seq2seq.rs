//! TRL's `AutoModelForSeq2SeqLMWithValueHead` on T5: the LM's logits and a value per decoder
//! token, read from the decoder's last hidden state (transformers' `decoder_hidden_states[-1]`).
//! Checkpoints are TRL's: the backbone's keys plus `v_head.summary.weight` / `.bias`, in one file
//! or local shards.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;

use trl_core::peft::{AdapterKey, LoraConfig};
use trl_core::{checkpoint, load_module, module_state_dict, peft, HfConfig, StateDict, Strictness};
use trl_models::t5::{T5ForConditionalGeneration, MODEL_TYPE};
use trl_models::TokenBatch;

use crate::error::{HeadError, Result};
use crate::shared::{head_hidden_size, prefix_error};
use crate::value_head::{VHeadSource, ValueHead, ValueHeadOptions, PEFT_V_HEAD_FILES, V_HEAD_PREFIX};

/// Where TRL looks for the LM head (`lm_head_namings`); a checkpoint that stores it under
/// another of these names loads as `lm_head`.
const LM_HEAD_NAMES: [&str; 3] = ["lm_head", "embed_out", "output_projection"];

/// A change made to a checkpoint's state dict before it is loaded (merging an adapter).
type EditStateDict<'a> = &'a mut dyn FnMut(&mut StateDict) -> Result<()>;

/// What [`Seq2SeqLmWithValueHead::forward`] returns (TRL's `(lm_logits, loss, value)`, no loss).
#[derive(Debug, Clone)]
pub struct Seq2SeqOutput<B: Backend> {
    /// `[batch, decoder_seq, vocab]`, f32.
    pub logits: Tensor<B, 3>,
    /// `[batch, decoder_seq]`
    pub values: Tensor<B, 2>,
}

/// An encoder–decoder LM with a scalar value per decoder token.
#[derive(Module, Debug)]
pub struct Seq2SeqLmWithValueHead<B: Backend> {
    pub pretrained_model: T5ForConditionalGeneration<B>,
    pub v_head: ValueHead<B>,
    /// The PEFT adapter merged into `pretrained_model` at load, as its file had it (config and
    /// `base_model.model.*` tensors), for [`Self::save_adapter`].
    #[module(skip)]
    pub adapter: Option<(LoraConfig, StateDict)>,
}

impl<B: Backend> Seq2SeqLmWithValueHead<B> {
    /// Loads a T5 checkpoint and its value head: `v_head.*` keys restore it
    /// ([`VHeadSource::Restored`]), a plain LM checkpoint gives a fresh one. The backbone is held
    /// as `opts.holding` says; the value head stays f32.
    pub fn from_pretrained(
        dir: &Path,
        opts: &ValueHeadOptions,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, VHeadSource)> {
        if peft::is_adapter_dir(dir) {
            return Self::from_adapter(dir, None, opts, device);
        }
        Self::load(dir, None, opts, device)
    }

    /// TRL's PEFT seq2seq value-head model: the base (`base`, else the adapter's
    /// `base_model_name_or_path`) with the LoRA adapter of `dir` merged into its weights
    /// (`W + scaling · B·A`, what PEFT's `merge_and_unload` computes), and the value head from
    /// `dir/model.safetensors` or `dir/pytorch_model.bin` (`v_head.*`, as TRL saves it), else the
    /// base's (or a fresh one). For inference: the adapter is not kept apart from the base, so it
    /// cannot be trained or switched off; [`Self::save_adapter`] writes it back as it was loaded.
    pub fn from_adapter(
        dir: &Path,
        base: Option<&Path>,
        opts: &ValueHeadOptions,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, VHeadSource)> {
        let base_dir = peft::base_of(dir, base)?;
        let (lora, mut adapter) = peft::read_adapter(dir)?;
        let bad = |reason: String| HeadError::Config { path: dir.display().to_string(), reason };
        if lora.fan_in_fan_out {
            return Err(bad("fan_in_fan_out is for Conv1D models; T5's projections are Linear".into()));
        }
        let mut head = StateDict::new();
        if let Some(file) = PEFT_V_HEAD_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
            head.extend(checkpoint::load_file(&file)?.filter(|k| k.starts_with(V_HEAD_PREFIX)));
        }
        let kept = (lora.clone(), adapter.clone());
        let mut pairs: BTreeMap<String, [Option<TensorData>; 2]> = BTreeMap::new();
        for (key, t) in std::mem::take(&mut adapter.tensors) {
            match peft::parse_key(&key) {
                Some(AdapterKey::Lora { module, a }) => pairs.entry(module).or_default()[usize::from(!a)] = Some(t),
                _ => return Err(bad(format!("`{key}` is not a LoRA tensor a T5 value-head model has a place for"))),
            }
        }
        let mut merge = |sd: &mut StateDict| -> Result<()> {
            for (module, pair) in std::mem::take(&mut pairs) {
                let [Some(a), Some(b)] = pair else {
                    return Err(bad(format!("`{module}` has only one of lora_A and lora_B")));
                };
                let key = format!("{module}.weight");
                let w = sd.remove(&key).ok_or_else(|| {
                    bad(format!(
                        "the adapter targets `{module}`, which the base has no weight for (check target_modules)"
                    ))
                })?;
                sd.insert(key, merged(&module, w, a, b, lora.scaling(&module)).map_err(bad)?);
            }
            Ok(())
        };
        let (mut model, config, source) = Self::load(&base_dir, Some(&mut merge), opts, device)?;
        model.adapter = Some(kept);
        if head.is_empty() {
            return Ok((model, config, source));
        }
        let head = head.strip_prefix(V_HEAD_PREFIX);
        let (h, _) =
            load_module(model.v_head, &head, Strictness::Strict).map_err(|e| prefix_error(e, V_HEAD_PREFIX))?;
        model.v_head = h;
        Ok((model, config, VHeadSource::Restored))
    }

    /// Loads `dir`, changing its state dict with `edit` first.
    fn load(
        dir: &Path,
        edit: Option<EditStateDict<'_>>,
        opts: &ValueHeadOptions,
        device: &B::Device,
    ) -> Result<(Self, HfConfig, VHeadSource)> {
        let config = HfConfig::load(dir)?;
        if config.model_type() != Some(MODEL_TYPE) {
            return Err(HeadError::Config {
                path: config.path.display().to_string(),
                reason: format!(
                    "model_type {:?} is not an encoder-decoder trl-rs supports (\"{MODEL_TYPE}\")",
                    config.model_type().unwrap_or("none")
                ),
            });
        }
        let mut sd = checkpoint::load_dir_lazily(dir)?;
        let head_sd = sd.split_off_by(|k| k.starts_with(V_HEAD_PREFIX)).strip_prefix(V_HEAD_PREFIX);
        for name in &LM_HEAD_NAMES[1..] {
            if let Some(w) = sd.remove(&format!("{name}.weight")) {
                sd.insert("lm_head.weight", w);
            }
        }
        if let Some(edit) = edit {
            edit(&mut sd)?;
        }
        let (dtype, quantize) = (opts.holding.dtype.resolve(&config), opts.holding.quantize);
        let (model, _) = T5ForConditionalGeneration::init(&config, device)?.load_as(sd, dtype, quantize)?;
        let dropout = opts.summary_dropout_prob.or_else(|| config.get_f64("summary_dropout_prob")).unwrap_or(0.1);
        let head = ValueHead::new(head_hidden_size(&config)?, dropout, opts.init, device);
        let (v_head, source) = if head_sd.is_empty() {
            (head, VHeadSource::Fresh)
        } else {
            let (h, _) = load_module(head, &head_sd, Strictness::Strict).map_err(|e| prefix_error(e, V_HEAD_PREFIX))?;
            (h, VHeadSource::Restored)
        };
        Ok((Self { pretrained_model: model, v_head, adapter: None }, config, source))
    }

    /// Logits and per-token values of decoder inputs `decoder` (starting with the decoder start
    /// token, as TRL's callers pass `decoder_input_ids`) on the encoded `source`. Either batch
    /// may be padded on either side.
    pub fn forward(&self, source: &TokenBatch, decoder: &TokenBatch) -> Result<Seq2SeqOutput<B>> {
        if source.batch != decoder.batch {
            return Err(HeadError::Input(format!(
                "{} source rows but {} decoder rows: give one decoder input per source",
                source.batch, decoder.batch
            )));
        }
        let m = &self.pretrained_model;
        let encoded = m.encode(source)?;
        let ids = decoder.ids_tensor(&m.device());
        let hidden = m.decode(ids, &decoder.attention_mask, &encoded, &source.attention_mask, None)?;
        Ok(Seq2SeqOutput { logits: m.logits(hidden.clone()), values: self.v_head.forward(hidden) })
    }

    /// The merged state dict TRL saves: the backbone's keys (`lm_head.weight` only when untied)
    /// plus `v_head.summary.weight` `[1, d_model]` and `v_head.summary.bias` `[1]`.
    pub fn state_dict(&self) -> StateDict {
        trl_core::module_io::read_params(self.params())
    }

    /// What [`Self::state_dict`] holds, each parameter read only when asked for.
    fn params(&self) -> Vec<trl_core::module_io::SavedParam> {
        trl_core::module_io::body_and_head_params(&self.pretrained_model, &self.v_head, V_HEAD_PREFIX)
    }

    /// TRL's PEFT save of a model loaded with [`Self::from_adapter`]: the adapter as it was loaded
    /// (`adapter_config.json`, `adapter_model.safetensors`) and `model.safetensors` holding only
    /// `v_head.summary.weight` / `.bias` (TRL reads it, or `pytorch_model.bin`). Each file is
    /// written atomically.
    pub fn save_adapter(&self, dir: &Path) -> Result<()> {
        let (config, sd) = self.adapter.as_ref().ok_or_else(|| {
            HeadError::Input("this model was not loaded with an adapter; save it whole with save_pretrained".into())
        })?;
        peft::write_adapter(dir, config, sd)?;
        let head = module_state_dict(&self.v_head).add_prefix(V_HEAD_PREFIX);
        checkpoint::save_safetensors(&head, &dir.join(checkpoint::SAFE_WEIGHTS))?;
        Ok(())
    }

    /// Writes `config.json` and the merged weights (sharded above `max_shard_size` bytes),
    /// loadable by TRL's `AutoModelForSeq2SeqLMWithValueHead.from_pretrained`.
    pub fn save_pretrained(&self, config: &HfConfig, dir: &Path, max_shard_size: usize) -> Result<()> {
        config.save(dir)?;
        trl_core::module_io::save_params(dir, max_shard_size, self.params())?;
        Ok(())
    }
}

/// `w + scaling · b·a` in f32 for `w` `[out, in]`, `a` `[r, in]`, `b` `[out, r]`; `Err` names
/// the shapes that do not fit.
fn merged(module: &str, w: TensorData, a: TensorData, b: TensorData, scaling: f64) -> Result<TensorData, String> {
    let (ws, as_, bs) = (w.shape.clone(), a.shape.clone(), b.shape.clone());
    let fits = ws.len() == 2 && as_.len() == 2 && bs.len() == 2 && as_[1] == ws[1] && bs[0] == ws[0] && bs[1] == as_[0];
    if !fits {
        return Err(format!(
            "`{module}`: lora_A {as_:?} and lora_B {bs:?} do not fit the base weight {ws:?} (check r / rank_pattern)"
        ));
    }
    let (out, inp, r) = (ws[0], ws[1], as_[0]);
    let floats = |t: TensorData| t.convert::<f32>().to_vec::<f32>().map_err(|e| format!("`{module}`: {e:?}"));
    let (mut w, a, b) = (floats(w)?, floats(a)?, floats(b)?);
    let s = scaling as f32;
    for o in 0..out {
        let row = &mut w[o * inp..(o + 1) * inp];
        for k in 0..r {
            let f = s * b[o * r + k];
            for (x, &av) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                *x += f * av;
            }
        }
    }
    Ok(TensorData::new(w, [out, inp]))
}
