//! What several subcommands share: resolving a model, its tokenizer and pad id, deciding what
//! kind of model a checkpoint holds, and fitting token rows into a length limit
//! (`--max-length`, `--truncation`).

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use trl_core::backend::DeviceArg;
use trl_core::{HfConfig, Tokenizer};

pub type Error = Box<dyn std::error::Error>;
pub type B = trl_core::backend::Default;

/// A plain causal LM, a TRL value-head model, or a reward (sequence-classification) model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CausalLm,
    ValueHead,
    Reward,
}

impl Kind {
    /// The name users see: `causal-LM`, `value-head`, `reward`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::CausalLm => "causal-LM",
            Kind::ValueHead => "value-head",
            Kind::Reward => "reward",
        }
    }
}

/// A resolved model directory with its config, tokenizer and kind.
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: HfConfig,
    pub tokenizer: Tokenizer,
    pub kind: Kind,
}

impl ModelDir {
    pub fn open(id: &str) -> Result<Self, Error> {
        let dir = trl_core::source::resolve(id)?;
        let config = HfConfig::load(&dir)?;
        let tokenizer = Tokenizer::from_dir(&dir)?;
        let kind = kind_of(&dir, &config)?;
        Ok(Self { dir, config, tokenizer, kind })
    }

    /// Pad id: the tokenizer's pad token, else `pad_token_id` in config.json, else EOS.
    pub fn pad_id(&self) -> Result<i64, Error> {
        self.tokenizer
            .pad_token
            .as_deref()
            .and_then(|t| self.tokenizer.token_to_id(t))
            .or_else(|| self.config.get("pad_token_id").and_then(|v| v.as_i64()))
            .or_else(|| self.tokenizer.eos_id())
            .ok_or_else(|| {
                format!(
                    "{}: no pad token (tokenizer_config.json) nor pad_token_id (config.json); set one",
                    self.dir.display()
                )
                .into()
            })
    }
}

/// Reward model if config.json names a `*ForSequenceClassification`; value-head model if the
/// weights carry `v_head.*` keys; otherwise a causal LM.
pub fn kind_of(dir: &Path, config: &HfConfig) -> Result<Kind, Error> {
    if trl_heads::seq_cls::is_seq_cls(config) {
        return Ok(Kind::Reward);
    }
    let files = trl_core::checkpoint::weight_files(dir)?;
    let has_v_head = if files.len() > 1 || files[0].extension().is_some_and(|e| e != "safetensors") {
        let index = dir.join(trl_core::checkpoint::SAFE_INDEX);
        match trl_core::checkpoint::read_index(&index) {
            Ok(map) => map.keys().any(|k| k.starts_with("v_head.")),
            Err(_) => trl_core::checkpoint::load_dir_lazily(dir)?.keys().any(|k| k.starts_with("v_head.")),
        }
    } else {
        safetensors_keys(&files[0])?.iter().any(|k| k.starts_with("v_head."))
    };
    Ok(if has_v_head { Kind::ValueHead } else { Kind::CausalLm })
}

/// The tensor names of a safetensors file, from its header only.
fn safetensors_keys(path: &Path) -> Result<Vec<String>, Error> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(format!("{}: safetensors header of {n} bytes is not plausible", path.display()).into());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let json: serde_json::Value = serde_json::from_slice(&header)?;
    Ok(json.as_object().map(|o| o.keys().filter(|k| *k != "__metadata__").cloned().collect()).unwrap_or_default())
}

/// Reads texts from a JSON array of strings, or an object with a `texts` array.
pub fn read_texts(path: &Path) -> Result<Vec<String>, Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        format!("{}:{line}: invalid UTF-8", path.display())
    })?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
    let shape = || format!("{}: expected a JSON array of strings or {{\"texts\": [...]}}", path.display());
    let list = match &value {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => o.get("texts").and_then(|t| t.as_array()).ok_or_else(shape)?,
        _ => return Err(shape().into()),
    };
    let texts = list
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(String::from).ok_or_else(|| format!("{}: text {} is not a string", path.display(), i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if texts.is_empty() {
        return Err(format!("{}: no texts to run", path.display()).into());
    }
    Ok(texts)
}

/// What `--truncation` does with a row longer than the length limit.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Drop the start, keep the end (where a reward is read).
    Left,
    /// Drop the end, keep the start.
    Right,
    /// Fail, naming the row, its token count and the limit.
    #[default]
    Error,
}

/// A length limit: `--max-length` (at most the model's position limit) and `--truncation`,
/// applied to each token row before any batch is built, so an over-long row never reaches
/// the model (nor allocates its attention mask).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Tokens a sequence may have in all (row plus [`Limit::reserved`]).
    pub max: usize,
    /// The model's position limit.
    pub model_max: usize,
    /// Whether `max` came from `--max-length` (else it is the model's limit).
    pub explicit: bool,
    pub mode: Truncation,
    /// Tokens kept free after each row (`generate`: `--max-new-tokens`).
    pub reserved: usize,
}

impl Limit {
    /// `--max-length` (default: `model_max`, the model's position limit; larger is an error).
    pub fn new(max_length: Option<usize>, model_max: usize, mode: Truncation) -> Result<Self, Error> {
        match max_length {
            Some(0) => Err("--max-length must be at least 1".into()),
            Some(m) if m > model_max => Err(format!(
                "--max-length {m} is larger than the model's {model_max} positions (its position limit); \
                 pass at most {model_max}"
            )
            .into()),
            m => Ok(Self { max: m.unwrap_or(model_max), model_max, explicit: m.is_some(), mode, reserved: 0 }),
        }
    }

    /// Keeps `new_tokens` positions free after every row (generation); at least one token of
    /// the row must still fit.
    pub fn reserve(self, new_tokens: usize) -> Result<Self, Error> {
        if new_tokens >= self.max {
            return Err(format!(
                "--max-new-tokens {new_tokens} leaves no room for the prompt: prompt and new tokens must fit in \
                 {}; pass a smaller --max-new-tokens",
                self.describe()
            )
            .into());
        }
        Ok(Self { reserved: new_tokens, ..self })
    }

    /// Tokens a row may have: the limit less the reserved ones.
    pub fn budget(&self) -> usize {
        self.max - self.reserved
    }

    fn describe(&self) -> String {
        if self.explicit {
            format!("--max-length {}", self.max)
        } else {
            format!("the model's {} positions", self.max)
        }
    }

    /// Fits one token row into the limit: `left` drops its start, `right` its end, `error`
    /// fails naming `row` (e.g. `rows.jsonl:3`), the token count and the limit. Returns
    /// whether the row was cut.
    pub fn fit(&self, ids: &mut Vec<i64>, row: &dyn Display) -> Result<bool, Error> {
        let budget = self.budget();
        if ids.len() <= budget {
            return Ok(false);
        }
        match self.mode {
            Truncation::Left => {
                ids.drain(..ids.len() - budget);
                Ok(true)
            }
            Truncation::Right => {
                ids.truncate(budget);
                Ok(true)
            }
            Truncation::Error => {
                let what = match self.reserved {
                    0 => format!("{} tokens", ids.len()),
                    r => format!("prompt of {} tokens + {r} new tokens (--max-new-tokens)", ids.len()),
                };
                let mut fixes =
                    vec!["--truncation left (keeps the end) or --truncation right (keeps the start)".to_string()];
                if self.max < self.model_max {
                    fixes.push(format!("a larger --max-length (the model takes up to {})", self.model_max));
                }
                if self.reserved > 0 {
                    fixes.push("a smaller --max-new-tokens".into());
                }
                Err(format!("{row}: {what}, longer than {}; pass {}", self.describe(), fixes.join(", or ")).into())
            }
        }
    }
}

/// Writes what `emit` produces to `out` — atomically, through a temp file unique to this
/// process, after removing what killed runs left there — or to stdout without `out`. An error
/// of `emit` wins over the write's; a write error names the path.
pub fn write_output(out: Option<&Path>, emit: impl FnOnce(&mut dyn Write) -> Result<(), Error>) -> Result<(), Error> {
    let Some(path) = out else { return emit(&mut std::io::stdout().lock()) };
    for p in trl_core::atomic::remove_stale_temps(path) {
        eprintln!("note: removed {} (left by an interrupted run)", p.display());
    }
    let mut failure = None;
    let written = trl_core::atomic::write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        match emit(&mut w) {
            Ok(()) => w.flush(),
            Err(e) => {
                failure = Some(e);
                Err(std::io::Error::other("not written"))
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => written.map_err(|e| format!("cannot write --out {}: {e}", path.display()).into()),
    }
}

/// `--dtype` and `--quantize`: how a model's weights are held in memory ([`trl_core::dtype`]),
/// and `--device`: where.
#[derive(clap::Args, Debug, Clone)]
pub struct HoldingArgs {
    /// Dtype of the weight matrices in memory: `auto` (the checkpoint's `dtype`/`torch_dtype`),
    /// `f32`, `bf16` or `f16`. Activations, norms and heads stay f32, so a bf16 checkpoint gives
    /// the same numbers in bf16 as in f32, with half the memory.
    #[arg(long, default_value = "auto")]
    pub dtype: trl_core::DtypeArg,
    /// `int8`: weight-only int8 projections (burn's q8, one scale per block of up to 128
    /// output features of an input feature), dequantized to f32 as each layer runs; rewards
    /// move slightly (docs/checkpoints.md gives by how much).
    #[arg(long, default_value = "none")]
    pub quantize: trl_core::Quantize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl HoldingArgs {
    pub fn get(&self) -> trl_core::Holding {
        trl_core::Holding { dtype: self.dtype, quantize: self.quantize }
    }
}

/// `--device`: where a command runs.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// `cpu`, `cuda[:N]` or `wgpu[:N]` [default: device 0 of the backend this binary was
    /// built with]. The backend is a cargo feature (`--features cuda` or `wgpu`); a device of
    /// another backend, or one that does not exist, is an error.
    #[arg(long = "device", value_name = "DEVICE")]
    pub name: Option<DeviceArg>,
}

impl DeviceArgs {
    /// The device named (or this build's default), checked to exist.
    pub fn get(&self) -> Result<(DeviceArg, burn::tensor::Device<B>), Error> {
        let arg = self.name.unwrap_or_else(DeviceArg::built);
        Ok((arg, arg.resolve::<B>()?))
    }
}

/// `--device-map`: a decoder's layers split over several devices.
#[derive(clap::Args, Debug, Clone)]
pub struct MapArgs {
    /// Split the model's layers over these devices, as transformers' `device_map`: `auto`
    /// (every device of the built backend) or a list such as `cuda:0,cuda:1`. Contiguous runs
    /// of layers, as even as they can be; the embeddings on the first device, the final norm
    /// and the head on the last layer's. Decoder models only; takes the place of `--device`.
    #[arg(long, value_name = "auto|DEVICE,...", conflicts_with = "name")]
    pub device_map: Option<trl_core::backend::DeviceMap>,
}

/// Where a model runs: what to print, the device to load on, and the devices its layers are
/// split over (none: all on `device`).
pub struct Placement {
    pub ran_on: String,
    pub device: Device<B>,
    pub map: Vec<Device<B>>,
}

impl MapArgs {
    /// The device to load on (the map's first, else `--device`'s), what runs (for
    /// [`ran_on`]-style lines) and the map's devices.
    pub fn devices(&self, device: &DeviceArgs) -> Result<Placement, Error> {
        let Some(map) = &self.device_map else {
            let (on, device) = device.get()?;
            return Ok(Placement { ran_on: ran_on(on), device, map: Vec::new() });
        };
        let devices = map.resolve::<B>()?;
        let names: Vec<String> = devices.iter().map(|(a, _)| a.to_string()).collect();
        let ran_on = format!("{} on {} (layers split)", trl_core::backend::name(), names.join(","));
        let map: Vec<Device<B>> = devices.into_iter().map(|(_, d)| d).collect();
        let device = map.first().cloned().ok_or("--device-map names no device")?;
        Ok(Placement { ran_on, device, map })
    }
}

/// Splits `model`'s `layers` over `devices` (none: left where it is).
pub fn place<M: burn::module::Module<B>>(model: M, layers: usize, devices: &[Device<B>]) -> Result<M, Error> {
    if devices.is_empty() {
        return Ok(model);
    }
    Ok(trl_models::placement::place(model, layers, devices)?)
}

/// `flex on cpu`, `cuda on cuda:1`: what ran, for logs and outputs.
pub fn ran_on(device: DeviceArg) -> String {
    format!("{} on {device}", trl_core::backend::name())
}
