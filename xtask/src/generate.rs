//! `cargo xtask generate`: completions for a JSONL file of prompts, from one model or from the
//! geometric mixture of a policy and a reference (Nash-MD), streamed as JSONL.
//!
//! Input lines: `{"prompt": "..."}` or a bare JSON string; blank lines are skipped. Output
//! lines: `{"prompt", "completion", "token_ids", "logprobs", "sampling_logprobs",
//! "finish_reason"}` (plus `"truncated": true` where `--truncation` cut the prompt), one per
//! prompt in input order; `logprobs` are under the model's (or the mixture's) unprocessed
//! distribution, `sampling_logprobs` under the processed one the token was drawn from. With an
//! encoder–decoder (T5) each prompt is the source the decoder's completion is generated from. Batch `k` (0-based) samples with seed `seed + k`.

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use trl_core::backend::Default as Backend;
use trl_core::{checkpoint, HfConfig, Strictness, Tokenizer};
use trl_gen::{generate, FinishReason, GeometricMixture, NextTokenLogits, SamplingConfig, DEFAULT_MIXTURE_COEF};
use trl_heads::{Seq2SeqLmWithValueHead, ValueHeadOptions};
use trl_models::AnyCausalLm;
use trl_reward::data::jsonl_lines;

use crate::common::{write_output, Limit, Truncation};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Generate completions for a JSONL file of prompts, from one model or from the geometric
/// mixture of --model and --ref-model (Nash-MD).
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Model directory (or a hub id already in the local cache); its tokenizer is used.
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter applied on --model (the base) for the policy.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Reference model: sample from the geometric mixture of --model and this one.
    #[arg(long)]
    pub ref_model: Option<String>,
    /// Weight β of the reference in the mixture [default: 0.5]. With --adapter and no
    /// --ref-model the reference is the base model with the adapter disabled.
    #[arg(long)]
    pub mixture_coef: Option<f64>,
    /// JSONL file of prompts: `{"prompt": "..."}` or a JSON string per line.
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample (otherwise greedy).
    #[arg(long)]
    pub do_sample: bool,
    /// Sampling temperature (ignored when greedy).
    #[arg(long, default_value_t = 0.9)]
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 is off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep tokens at least this fraction as likely as the most likely one.
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Output file (written atomically); stdout when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Longest sequence in tokens: the prompt (special tokens included) plus --max-new-tokens
    /// [default: the model's position limit (of both models with --ref-model), which it may not
    /// exceed].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// A prompt longer than --max-length less --max-new-tokens: `error` fails naming its line,
    /// token count and the limit; `left` keeps its last tokens; `right` keeps its first. A cut
    /// prompt's output row gets `"truncated": true`.
    #[arg(long, value_enum, default_value = "error")]
    pub truncation: Truncation,
    /// Dtype of the weight matrices in memory: `f32` (default), `auto` (the checkpoint's),
    /// `bf16` or `f16`. Each generated token widens every half-precision weight to f32 again,
    /// which on a CPU costs several times the token itself (docs/performance.md): hold half
    /// precision only when f32 does not fit.
    #[arg(long, default_value = "f32")]
    pub dtype: trl_core::DtypeArg,
    /// `int8`: weight-only int8 projections (as `score --quantize`), dequantized on every token.
    #[arg(long, default_value = "none")]
    pub quantize: trl_core::Quantize,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
}

/// Runs `cargo xtask generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    if args.mixture_coef.is_some() && args.ref_model.is_none() && args.adapter.is_none() {
        return Err("--mixture-coef needs --ref-model (or --adapter, whose base is then the reference)".into());
    }
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let (on, device) = args.device.get()?;
    let dir = trl_core::source::resolve(&args.model)?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let cfg = sampling_config(&args, &dir, &tokenizer)?;
    cfg.validate()?;
    let prompts = read_prompts(&args.prompts)?;
    if HfConfig::load(&dir)?.model_type() == Some(trl_models::t5::MODEL_TYPE) {
        seq2seq(&args, &dir, &tokenizer, &cfg, prompts, &device)?;
        eprintln!("generated ({})", crate::common::ran_on(on));
        return Ok(());
    }
    let mut policy = load_lm(&dir, trl_core::Holding { dtype: args.dtype, quantize: args.quantize }, &device)?;
    if let Some(a) = &args.adapter {
        // A value-head adapter's `v_head` (modules_to_save) plays no part in generation.
        policy.load_adapter(a, "default")?;
    }
    let reference = match (&args.ref_model, args.mixture_coef) {
        (Some(r), _) => Some(load_lm(
            &trl_core::source::resolve(r)?,
            trl_core::Holding { dtype: args.dtype, quantize: args.quantize },
            &device,
        )?),
        (None, Some(_)) => Some(policy.without_adapters()?),
        (None, None) => None,
    };
    // Every prompt is tokenized and fitted (prompt + new tokens within the limit) before any
    // batch is built.
    let model_max = policy.max_positions().min(reference.as_ref().map_or(usize::MAX, |r| r.max_positions()));
    let limit = Limit::new(args.max_length, model_max, args.truncation)?.reserve(args.max_new_tokens)?;
    let prompts = prompts
        .into_iter()
        .map(|(line, text)| {
            let at = format!("{}:{line}", args.prompts.display());
            let mut ids = tokenizer.encode(&text, true)?;
            if ids.is_empty() {
                return Err(format!("{at}: the prompt has no tokens").into());
            }
            let truncated = limit.fit(&mut ids, &at)?;
            Ok(Prompt { text, ids, truncated })
        })
        .collect::<Result<Vec<_>>>()?;
    let job = Job { tokenizer: &tokenizer, prompts: &prompts, cfg: &cfg, batch_size: args.batch_size };
    let write = |sink: &mut dyn Write| match &reference {
        Some(r) => {
            job.emit(&GeometricMixture::new(&policy, r, args.mixture_coef.unwrap_or(DEFAULT_MIXTURE_COEF))?, sink)
        }
        None => job.emit(&policy, sink),
    };
    write_output(args.out.as_deref(), write)?;
    eprintln!("generated ({})", crate::common::ran_on(on));
    Ok(())
}

/// Generation with an encoder–decoder (T5): each prompt is a source text, encoded once; the
/// completion is the decoder's output. --max-length bounds the source, and --max-new-tokens
/// (plus the decoder start token) must fit the model's position limit.
fn seq2seq(
    args: &GenerateArgs,
    dir: &Path,
    tokenizer: &Tokenizer,
    cfg: &SamplingConfig,
    prompts: Vec<(usize, String)>,
    device: &burn::tensor::Device<Backend>,
) -> Result<()> {
    let refuse = |flag: &str| format!("{flag} is not supported with an encoder-decoder model ({})", dir.display());
    if args.ref_model.is_some() || args.mixture_coef.is_some() {
        return Err(refuse("a geometric mixture (--ref-model, --mixture-coef)").into());
    }
    if args.repetition_penalty != 1.0 {
        // transformers counts only the decoder's tokens; generate() would count the source's too
        return Err(refuse("--repetition-penalty").into());
    }
    let opts = ValueHeadOptions {
        holding: trl_core::Holding { dtype: args.dtype, quantize: args.quantize },
        ..Default::default()
    };
    let (model, _, _) = match &args.adapter {
        Some(a) => Seq2SeqLmWithValueHead::<Backend>::from_adapter(a, Some(dir), &opts, device)?,
        None => Seq2SeqLmWithValueHead::<Backend>::from_pretrained(dir, &opts, device)?,
    };
    let max = model.pretrained_model.max_positions();
    if args.max_new_tokens + 1 > max {
        return Err(format!(
            "--max-new-tokens {} plus the decoder start token exceed the model's {max} positions",
            args.max_new_tokens
        )
        .into());
    }
    let limit = Limit::new(args.max_length, max, args.truncation)?;
    let prompts = prompts
        .into_iter()
        .map(|(line, text)| {
            let at = format!("{}:{line}", args.prompts.display());
            let mut ids = tokenizer.encode(&text, true)?;
            if ids.is_empty() {
                return Err(format!("{at}: the source has no tokens").into());
            }
            let truncated = limit.fit(&mut ids, &at)?;
            Ok(Prompt { text, ids, truncated })
        })
        .collect::<Result<Vec<_>>>()?;
    let job = Job { tokenizer, prompts: &prompts, cfg, batch_size: args.batch_size };
    write_output(args.out.as_deref(), |sink| job.emit(&model, sink))
}

/// The flags as a [`SamplingConfig`], with EOS and pad ids from the model directory.
fn sampling_config(args: &GenerateArgs, dir: &Path, tokenizer: &Tokenizer) -> Result<SamplingConfig> {
    let gen_cfg = read_json_if_exists(&dir.join("generation_config.json"))?;
    let model_cfg = HfConfig::load(dir)?;
    let ids = |v: Option<&Value>| -> Option<Vec<i64>> {
        match v? {
            Value::Number(n) => n.as_i64().map(|i| vec![i]),
            Value::Array(a) => Some(a.iter().filter_map(Value::as_i64).collect()),
            _ => None,
        }
    };
    let eos = ids(gen_cfg.as_ref().and_then(|g| g.get("eos_token_id")))
        .or_else(|| ids(model_cfg.get("eos_token_id")))
        .or_else(|| tokenizer.eos_id().map(|e| vec![e]));
    let pad =
        gen_cfg.as_ref().and_then(|g| g.get("pad_token_id")).and_then(Value::as_i64).or_else(|| tokenizer.pad_id());
    Ok(SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        do_sample: args.do_sample,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        eos_token_id: eos,
        pad_token_id: pad,
    })
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON ({e})", path.display()))?))
}

/// Prompts of a JSONL file with their 1-based line numbers, naming the line of any bad row
/// (read as every JSONL file is: UTF-8, a byte-order mark allowed, blank lines skipped).
fn read_prompts(path: &Path) -> Result<Vec<(usize, String)>> {
    let mut prompts = Vec::new();
    for line in jsonl_lines(path)? {
        let (n, text) = line?;
        let at = || format!("{}:{n}", path.display());
        let text = text.map_err(|e| format!("{}: {e}", at()))?;
        let prompt = match serde_json::from_str::<Value>(&text).map_err(|e| format!("{}: invalid JSON ({e})", at()))? {
            Value::String(s) => s,
            Value::Object(o) => match o.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(format!("{}: expected a string field \"prompt\"", at()).into()),
            },
            _ => return Err(format!("{}: expected {{\"prompt\": \"...\"}} or a JSON string", at()).into()),
        };
        prompts.push((n, prompt));
    }
    if prompts.is_empty() {
        return Err(format!("{}: no prompts", path.display()).into());
    }
    Ok(prompts)
}

/// A causal LM from `dir`; the `v_head.*` keys of a TRL value-head checkpoint are ignored.
fn load_lm(
    dir: &Path,
    holding: trl_core::Holding,
    device: &burn::tensor::Device<Backend>,
) -> Result<AnyCausalLm<Backend>> {
    let config = HfConfig::load(dir)?;
    let mut sd = checkpoint::load_dir_lazily(dir)?;
    sd.split_off_by(|k| k.starts_with("v_head."));
    Ok(AnyCausalLm::init(&config, device)?
        .load_as(sd, Strictness::Strict, holding.dtype.resolve(&config), holding.quantize)?
        .0)
}

/// A prompt, tokenized and fitted to the length limit.
struct Prompt {
    text: String,
    ids: Vec<i64>,
    truncated: bool,
}

/// What every batch shares.
struct Job<'a> {
    tokenizer: &'a Tokenizer,
    prompts: &'a [Prompt],
    cfg: &'a SamplingConfig,
    batch_size: usize,
}

impl Job<'_> {
    /// Generates batch by batch, writing (and flushing) each batch's lines as it finishes.
    fn emit<M: NextTokenLogits<Backend>>(&self, model: &M, sink: &mut dyn Write) -> Result<()> {
        for (k, chunk) in self.prompts.chunks(self.batch_size).enumerate() {
            let ids: Vec<Vec<i64>> = chunk.iter().map(|p| p.ids.clone()).collect();
            let cfg = SamplingConfig { seed: self.cfg.seed.wrapping_add(k as u64), ..self.cfg.clone() };
            for (prompt, g) in chunk.iter().zip(generate(model, &ids, &cfg)?) {
                let mut line = json!({
                    "prompt": prompt.text,
                    "completion": self.tokenizer.decode(&g.token_ids, true)?,
                    "token_ids": g.token_ids,
                    "logprobs": g.logprobs,
                    "sampling_logprobs": g.sampling_logprobs,
                    "finish_reason": match g.finish { FinishReason::Eos => "stop", FinishReason::Length => "length" },
                });
                if prompt.truncated {
                    line["truncated"] = json!(true);
                }
                writeln!(sink, "{line}")?;
            }
            sink.flush()?;
        }
        Ok(())
    }
}
