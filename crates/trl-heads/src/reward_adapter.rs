//! TRL's reward adapter (`reward_adapter=` of `AutoModelForCausalLMWithValueHead.from_pretrained`,
//! multi-adapter PPO): one base model carries the policy's LoRA adapter and a reward model's LoRA
//! adapter; the reward is the reward adapter's forward pass read by the `score` head stored in its
//! file (`base_model.model.score.weight`, from PEFT's `SEQ_CLS` `modules_to_save`).

use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use trl_core::module_io::set_require_grad_where;
use trl_core::{load_module, peft, Strictness};
use trl_models::{AnyCausalLm, TokenBatch};

use crate::error::{HeadError, Result};
use crate::seq_cls::{RewardOutput, SCORE_PREFIX};
use crate::shared::{gather_rows, prefix_error};

/// A reward adapter attached to a policy's backbone: its name there and its frozen score head.
#[derive(Module, Debug)]
pub struct RewardAdapter<B: Backend> {
    /// `Linear(hidden, num_labels)`, frozen, bias only if the file has one (as TRL builds it).
    pub score: Linear<B>,
    /// The adapter's name on the backbone.
    #[module(skip)]
    pub name: String,
}

impl<B: Backend> RewardAdapter<B> {
    /// Loads the adapter directory `dir` onto `backbone` as adapter `name` (the active adapter
    /// stays active) and reads its score head. Like TRL (`is_trainable=False`, run in `eval()`),
    /// the adapter and score are frozen and the adapter's dropout is off.
    pub fn load(backbone: &mut AnyCausalLm<B>, dir: &Path, name: &str) -> Result<Self> {
        let (mut config, sd) = peft::read_adapter(dir)?;
        config.lora_dropout = 0.0;
        let extra = backbone.load_adapter_tensors(name, config, &sd)?;
        let is_adapter = backbone.adapter_key_filter(name)?;
        *backbone = set_require_grad_where(backbone.clone(), |k| is_adapter(k).then_some(false));
        let score_sd = extra.filter(|k| k.starts_with(SCORE_PREFIX)).strip_prefix(SCORE_PREFIX);
        let Some(w) = score_sd.get("weight") else {
            let _ = backbone.delete_adapter(name);
            return Err(HeadError::Config {
                path: dir.display().to_string(),
                reason: format!(
                    "no `{}{SCORE_PREFIX}weight` in the adapter: a reward adapter is trained with task_type SEQ_CLS \
                     (modules_to_save [\"score\"]) so that its score head is saved",
                    peft::KEY_PREFIX
                ),
            });
        };
        let (labels, hidden) = (w.shape[0], w.shape.get(1).copied().unwrap_or(0));
        let score =
            LinearConfig::new(hidden, labels).with_bias(score_sd.get("bias").is_some()).init(&backbone.device());
        let prefix = format!("{}{SCORE_PREFIX}", peft::KEY_PREFIX);
        let (score, _) = load_module(score, &score_sd, Strictness::Strict).map_err(|e| prefix_error(e, &prefix))?;
        let score = set_require_grad_where(score, |_| Some(false));
        Ok(Self { score, name: name.to_string() })
    }

    /// TRL's `compute_reward_score`: the backbone switched to this adapter, its last hidden
    /// state through `score`. `rewards` `[batch, num_labels]` are read at each row's last real
    /// token (attention mask; left or right padding, pad == eos safe); `scores`
    /// `[batch, seq, num_labels]` when `per_token`. The switch happens on a copy (tensors are
    /// shared), so `backbone` keeps its active adapter; outputs are detached. On a model under
    /// training, calling this on `model.valid()` also skips building a graph.
    pub fn compute_reward_score(
        &self,
        backbone: &AnyCausalLm<B>,
        batch: &TokenBatch,
        per_token: bool,
    ) -> Result<RewardOutput<B>> {
        let mut rm = backbone.clone();
        rm.set_adapter(&self.name)?;
        let hidden = rm.forward(batch, false)?.hidden.detach();
        let pooled = gather_rows(hidden.clone(), &batch.last_token_index());
        let rewards = self.score.forward(pooled).detach();
        let scores = per_token.then(|| self.score.forward(hidden).detach());
        Ok(RewardOutput { rewards, scores })
    }
}
