//! `cargo xtask serve`: the reward server (crate `trl-serve`; docs/serving.md).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::common::{Error, Kind, ModelDir, B};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Reward model (or TRL value-head model) directory or hub id (`org/name[@rev]`).
    #[arg(long)]
    pub model: String,
    /// A LoRA reward adapter over --model, served as `NAME` (requests pick it with `"model"`);
    /// repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = parse_adapter)]
    pub adapters: Vec<(String, PathBuf)>,
    /// The name of the base model in requests and /v1/models [default: the directory's name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Padded tokens (rows × longest row) per model batch.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Requests in flight at once; one more gets a 429.
    #[arg(long, default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Inputs one request may carry; more get a 413.
    #[arg(long, default_value_t = 32)]
    pub max_client_batch_size: usize,
    /// Tokens an input may have [default: the model's position limit]; longer ones get a 413
    /// unless the request (or --truncate) asks for truncation.
    #[arg(long)]
    pub max_input_length: Option<usize>,
    /// Cut over-long inputs (keeping their start) where the request does not say.
    #[arg(long)]
    pub truncate: bool,
    /// Strip trailing EOS/pad strings from each text and append one EOS (as `score` and
    /// training do, and as older OpenRLHF clients expect).
    #[arg(long)]
    pub append_eos: bool,
    /// Report `(reward − mean) / std` with the `mean` and `std` of the model's config.json.
    #[arg(long)]
    pub normalize_reward: bool,
    /// How the weights are held in memory (`--dtype`, `--quantize`; docs/checkpoints.md).
    #[command(flatten)]
    pub holding: crate::common::HoldingArgs,
    /// Seconds a request may wait for the model before a 503.
    #[arg(long, default_value_t = 60.0)]
    pub request_timeout: f64,
}

fn parse_adapter(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.to_string(), PathBuf::from(dir))),
        _ => Err(format!("`{s}`: expected NAME=DIR, e.g. --adapter helpful=runs/helpful-lora")),
    }
}

pub fn run(args: ServeArgs) -> Result<(), Error> {
    let (on, device) = args.holding.device.get()?;
    let m = ModelDir::open(&args.model)?;
    let value_head = match m.kind {
        Kind::Reward => false,
        Kind::ValueHead => true,
        Kind::CausalLm if !args.adapters.is_empty() => false,
        Kind::CausalLm => {
            return Err(format!(
                "{} is a causal LM: serve a reward model (*ForSequenceClassification), a value-head model, or pass \
                 --adapter NAME=DIR with a reward adapter",
                m.dir.display()
            )
            .into())
        }
    };
    if args.append_eos && m.config.model_type() == Some(trl_models::deberta_v2::MODEL_TYPE) {
        return Err(
            "--append-eos is for causal reward models: an encoder's tokenizer adds its own [CLS] and [SEP]".into()
        );
    }
    let mut names: Vec<&str> = args.adapters.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("--adapter name `{}` is given twice", w[0]).into());
    }
    let request_timeout = Duration::try_from_secs_f64(args.request_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or("--request-timeout must be a positive number of seconds")?;
    let served_model_name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| m.dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned()));
    let pad_id = m.pad_id()?;
    let options = trl_serve::ServeOptions {
        model: m.dir.clone(),
        value_head,
        served_model_name,
        adapters: args.adapters,
        addr: SocketAddr::new(args.host, args.port),
        max_input_length: args.max_input_length,
        holding: args.holding.get(),
        limits: trl_serve::Limits {
            max_concurrent_requests: args.max_concurrent_requests,
            max_batch_tokens: args.max_batch_tokens,
            max_client_batch_size: args.max_client_batch_size,
            max_input_length: 0,
            truncate: args.truncate,
            append_eos: args.append_eos,
            request_timeout,
        },
        normalize_reward: args.normalize_reward,
        pad_id,
    };
    let ran_on = crate::common::ran_on(on);
    trl_serve::serve::<B>(options, m.tokenizer, device, |addr| {
        // stdout's line is for scripts (the port); what runs it goes to stderr
        eprintln!("serving on {ran_on}");
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })?;
    eprintln!("stopped: every request in flight was answered");
    Ok(())
}
