//! What the trainer and the models do with values that cannot be trained or run (issue 10): a
//! non-finite loss stops training with an error naming the step and writes nothing; a batch
//! longer than the model's positions is refused before its attention mask is built.

use std::ops::ControlFlow;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use trl_models::{AnyCausalLm, TokenBatch};
use trl_reward::{synthetic, RewardError};
use trl_tests::*;

type TB = trl_core::backend::Train;

/// Multiplies every weight it maps by NaN.
struct Poison;

impl<BK: Backend> ModuleMapper<BK> for Poison {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<BK, D>>) -> Param<Tensor<BK, D>> {
        param.map(|t| t * f32::NAN)
    }
}

#[test]
fn a_non_finite_loss_stops_training_before_anything_is_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = synthetic::training_config();
    cfg.output_dir = tmp.path().join("run");
    cfg.max_steps = Some(3);
    cfg.save_steps = 1;
    let device = trl_core::backend::device();
    let mut job = synthetic::job::<TB>(cfg, &device).unwrap();
    job.trainer.model.score = job.trainer.model.score.clone().map(&mut Poison);
    let err = job.trainer.train(&job.train, &job.eval, 0, &mut |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(err, RewardError::Diverged { step: 1, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("step 1") && msg.contains("loss NaN"), "{msg}");
    assert!(!tmp.path().join("run/checkpoint-1").exists(), "no checkpoint of a diverged run");
    assert_eq!(job.trainer.state.global_step, 0, "the step was not applied");
}

#[test]
fn non_finite_weights_are_never_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = synthetic::training_config();
    cfg.output_dir = tmp.path().join("run");
    let device = trl_core::backend::device();
    let mut job = synthetic::job::<TB>(cfg, &device).unwrap();
    job.trainer.model.score = job.trainer.model.score.clone().map(&mut Poison);
    let err = job.trainer.save_checkpoint().unwrap_err().to_string();
    assert!(err.contains("score.weight") && err.contains("NaN or infinite"), "{err}");
    assert!(!tmp.path().join("run/checkpoint-0").exists());
}

#[test]
fn a_batch_longer_than_the_positions_is_refused_before_the_mask_is_built() {
    let device = trl_core::backend::device();
    for name in ["gpt2", "llama"] {
        let model = AnyCausalLm::<B>::from_pretrained(&fixture(name), &device).unwrap().0;
        assert_eq!(model.max_positions(), 128);
        // 10⁶ tokens: a `[1, 10⁶, 10⁶]` mask would need a terabyte.
        let long = TokenBatch::unpadded(vec![5; 1_000_000], 1, 1_000_000);
        let err = model.forward(&long, false).unwrap_err().to_string();
        assert!(err.contains("1000000 tokens") && err.contains("128 positions"), "{name}: {err}");
        // Positions past the limit on a KV cache, one token at a time.
        let mut cache = model.new_cache(1);
        let ids = vec![5; 128];
        model.forward_cached(&ids, &[1; 128], 128, &mut cache).unwrap();
        let err = model.forward_cached(&[5], &[1], 1, &mut cache).unwrap_err().to_string();
        assert!(err.contains("129 tokens"), "{name}: {err}");
    }
}
