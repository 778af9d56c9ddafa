//! Adapters at the model level ([`AnyCausalLm`] methods): loading a model or an adapter
//! directory (`from_pretrained`, `from_adapter`), add / load / delete named adapters,
//! [`set_adapter`](AnyCausalLm::set_adapter), [`disable_adapters`](AnyCausalLm::disable_adapters)
//! (or [`without_adapters`](AnyCausalLm::without_adapters), a cheap disabled clone, the reference
//! model of Nash-MD), merge / unmerge, save in PEFT's format, and
//! [`train_adapter_only`](AnyCausalLm::train_adapter_only), which freezes everything else. The
//! layer-level pieces are in [`crate::lora`].

use std::path::Path;

use burn::prelude::*;

use trl_core::module_io::{module_state_dict_where, set_require_grad_where};
use trl_core::peft::{self, AdapterKey, LoraConfig, TargetModules};
use trl_core::{load_module, HfConfig, Holding, StateDict, Strictness};

use crate::any::{dispatch, dispatch_arms, AnyCausalLm};
use crate::backbone::Backbone;
use crate::error::{ModelError, Result};
use crate::lora::{in_slot, Adapters, LoadedAdapter, LoraLayer, LoraSlot, LoraSlots};

impl<B: Backend> AnyCausalLm<B> {
    /// Builds from `dir/config.json` and loads `dir`'s weights strictly. An adapter directory
    /// (`adapter_config.json`) gives its base model with the adapter attached
    /// ([`from_adapter`](Self::from_adapter)), as transformers' PEFT integration does.
    pub fn from_pretrained(dir: &Path, device: &B::Device) -> Result<(Self, HfConfig)> {
        Self::from_pretrained_as(dir, Holding::F32, device)
    }

    /// [`Self::from_pretrained`] with the weights held as `holding` says (dtype, int8;
    /// [`trl_core::dtype`]).
    pub fn from_pretrained_as(dir: &Path, holding: Holding, device: &B::Device) -> Result<(Self, HfConfig)> {
        if peft::is_adapter_dir(dir) {
            return Self::from_adapter_as(dir, None, holding, device);
        }
        let config = HfConfig::load(dir)?;
        let sd = trl_core::checkpoint::load_dir_lazily(dir)?;
        let (model, _) = Self::init(&config, device)?.load_as(
            sd,
            Strictness::Strict,
            holding.dtype.resolve(&config),
            holding.quantize,
        )?;
        Ok((model, config))
    }
}

impl<B: Backend> AnyCausalLm<B> {
    /// Every projection that can carry adapters, with its Hugging Face module name.
    pub fn lora_layers(&mut self) -> Vec<(String, &mut dyn LoraLayer<B>)> {
        dispatch!(self, m => m.lora_layers())
    }

    pub fn adapters(&self) -> &Adapters {
        dispatch!(self, m => m.adapters())
    }

    fn adapters_mut(&mut self) -> &mut Adapters {
        dispatch!(self, m => m.adapters_mut())
    }

    /// Names of the attached adapters, in slot order.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters().list.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn adapter_config(&self, name: &str) -> Option<&LoraConfig> {
        self.adapters().list.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// The adapter the forward pass uses (`None` with no adapter or adapters disabled).
    pub fn active_adapter(&self) -> Option<&str> {
        let a = self.adapters();
        a.active.filter(|_| !a.disabled).map(|i| a.list[i].0.as_str())
    }

    /// Tells every projection which slot to run.
    fn sync_active(&mut self) {
        let a = self.adapters();
        let active = a.active.filter(|_| !a.disabled);
        for (_, layer) in self.lora_layers() {
            layer.parts().lora.active = active;
        }
    }

    /// Attaches a new adapter `name` with freshly drawn weights (B = 0 by default, so the model
    /// is unchanged until it is trained). The first adapter becomes active; later ones do not
    /// (as PEFT's `add_adapter`). Errors when a `target_modules` entry matches no projection.
    pub fn add_adapter(&mut self, name: &str, config: LoraConfig) -> Result<()> {
        if self.adapters().list.iter().any(|(n, _)| n == name) {
            return Err(ModelError::Adapter(format!("an adapter named `{name}` is already attached")));
        }
        if self.adapters().merged {
            return Err(ModelError::Adapter("unmerge the merged adapter before adding another".into()));
        }
        let matcher = config.matcher().map_err(ModelError::Adapter)?;
        let mut names: Vec<String> = Vec::new();
        let mut wrapped = 0;
        for (module, layer) in self.lora_layers() {
            let slot = matcher.matches(&module).then(|| {
                let (r, _) = config.rank_and_alpha(&module);
                (r, LoraSlot { scaling: config.scaling(&module), dropout: config.lora_dropout }, config.init)
            });
            wrapped += slot.is_some() as usize;
            layer.parts().push(slot);
            names.push(module);
        }
        let unmatched = matcher.unmatched_targets(names.iter().map(String::as_str));
        if !unmatched.is_empty() || wrapped == 0 {
            let slot = self.adapters().list.len();
            for (_, layer) in self.lora_layers() {
                layer.parts().remove(slot);
            }
            let what = if unmatched.is_empty() {
                match &config.target_modules {
                    TargetModules::Names(n) => format!("[{}]", n.join(", ")),
                    TargetModules::Regex(r) => format!("regex `{r}`"),
                    TargetModules::AllLinear => "all-linear".into(),
                }
            } else {
                format!("[{}]", unmatched.join(", "))
            };
            let mut short: Vec<&str> = names.iter().map(|n| n.rsplit('.').next().unwrap_or(n)).collect();
            short.sort();
            short.dedup();
            return Err(ModelError::Adapter(format!(
                "adapter `{name}`: target module(s) {what} not found in the model; LoRA-capable modules here: [{}] \
                 (e.g. `{}`; lm_head and embeddings cannot carry adapters in trl-rs)",
                short.join(", "),
                names.first().map(String::as_str).unwrap_or("")
            )));
        }
        let a = self.adapters_mut();
        a.list.push((name.to_string(), config));
        if a.active.is_none() {
            a.active = Some(a.list.len() - 1);
        }
        self.sync_active();
        Ok(())
    }

    /// Attaches adapter `name` with the tensors of an adapter file (`sd`, PEFT keys). Returns the
    /// whole tensors for `modules_to_save`, keyed as in the model (`score.weight`).
    pub fn load_adapter_tensors(&mut self, name: &str, config: LoraConfig, sd: &StateDict) -> Result<StateDict> {
        let slot = self.adapters().list.len();
        self.add_adapter(name, config)?;
        let mut ours = StateDict::new();
        let mut rest = StateDict::new();
        for (key, t) in &sd.tensors {
            match peft::parse_key(key) {
                Some(AdapterKey::Lora { module, a }) => {
                    ours.insert(format!("{module}.lora_{}.{slot}.weight", if a { 'A' } else { 'B' }), t.clone())
                }
                Some(AdapterKey::Full(k)) => rest.insert(k, t.clone()),
                None => {
                    return Err(ModelError::Adapter(format!(
                        "adapter `{name}`: key `{key}` lacks the `{}` prefix",
                        peft::KEY_PREFIX
                    )))
                }
            }
        }
        let to_peft = |k: &str| {
            k.replacen(&format!(".lora_A.{slot}."), ".lora_A.", 1).replacen(&format!(".lora_B.{slot}."), ".lora_B.", 1)
        };
        let (model, report) = match load_module(self.clone(), &ours, Strictness::Partial) {
            Ok(ok) => ok,
            Err(trl_core::Error::Load(r)) => {
                let _ = self.delete_adapter(name);
                let shapes: Vec<String> = r
                    .mismatched
                    .iter()
                    .map(|(k, want, got)| {
                        format!("`{}{}` should be {want:?}, the file has {got:?}", peft::KEY_PREFIX, to_peft(k))
                    })
                    .chain(r.unusable.iter().map(|(k, what)| format!("`{}{}` {what}", peft::KEY_PREFIX, to_peft(k))))
                    .collect();
                let more =
                    if shapes.len() > 3 { format!("; … ({} tensors in all)", shapes.len()) } else { String::new() };
                return Err(ModelError::Adapter(format!(
                    "adapter `{name}`: {}{more}; check r / rank_pattern in adapter_config.json",
                    shapes[..shapes.len().min(3)].join("; ")
                )));
            }
            Err(e) => return Err(e.into()),
        };
        // the adapter's matrices laid out as training holds them, so that a loaded adapter gives
        // the trained one's numbers bit for bit
        let lora = [format!(".lora_A.{slot}."), format!(".lora_B.{slot}.")];
        *self = trl_core::module_io::contiguous_where(model, |k, _| lora.iter().any(|l| k.contains(l.as_str())));
        let missing: Vec<String> = report
            .missing
            .iter()
            .filter(|k| in_slot(k, slot))
            .map(|k| format!("{}{}", peft::KEY_PREFIX, to_peft(k)))
            .collect();
        let unexpected: Vec<String> =
            report.unexpected.iter().map(|k| format!("{}{}", peft::KEY_PREFIX, to_peft(k))).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            self.delete_adapter(name)?;
            let list = |v: &[String]| {
                let mut modules: Vec<&str> = v.iter().map(|k| k.rsplitn(3, '.').nth(2).unwrap_or(k)).collect();
                modules.dedup();
                let more = if modules.len() > 6 { format!(", … ({} modules)", modules.len()) } else { String::new() };
                modules.iter().take(6).copied().collect::<Vec<_>>().join(", ") + &more
            };
            let mut problems = Vec::new();
            if !missing.is_empty() {
                problems.push(format!("the config wraps modules the file has no weights for [{}]", list(&missing)));
            }
            if !unexpected.is_empty() {
                problems.push(format!(
                    "the file has weights for modules the config/model does not wrap [{}]",
                    list(&unexpected)
                ));
            }
            return Err(ModelError::Adapter(format!(
                "adapter `{name}` does not fit its config and this model: {}",
                problems.join("; ")
            )));
        }
        Ok(rest)
    }

    /// Loads the adapter directory `dir` (`adapter_config.json` + `adapter_model.safetensors` or
    /// `.bin`) as adapter `name`. A relative `base_model_name_or_path` that names a directory next
    /// to the adapter is made absolute in the kept config, so a later save points at it still.
    pub fn load_adapter(&mut self, dir: &Path, name: &str) -> Result<LoadedAdapter> {
        let (mut config, sd) = peft::read_adapter(dir)?;
        if let Some(base) = config.base_model_name_or_path.as_deref() {
            let rel = dir.join(base);
            if Path::new(base).is_relative() && rel.is_dir() {
                config.base_model_name_or_path = Some(std::fs::canonicalize(&rel).unwrap_or(rel).display().to_string());
            }
        }
        let modules_to_save = self.load_adapter_tensors(name, config.clone(), &sd)?;
        Ok(LoadedAdapter { config, modules_to_save })
    }

    /// Loads a causal LM with the adapter of `dir` as `default`: the base is `base` if given, else
    /// `base_model_name_or_path` (relative to `dir`, or a hub id). Adapters carrying whole tensors
    /// (`modules_to_save`, e.g. a reward model's `score`) belong to the heads' loaders instead.
    pub fn from_adapter(dir: &Path, base: Option<&Path>, device: &B::Device) -> Result<(Self, HfConfig)> {
        Self::from_adapter_as(dir, base, Holding::F32, device)
    }

    /// [`Self::from_adapter`] with the base's weights held as `holding` says.
    pub fn from_adapter_as(
        dir: &Path,
        base: Option<&Path>,
        holding: Holding,
        device: &B::Device,
    ) -> Result<(Self, HfConfig)> {
        let (mut model, hf) = Self::from_pretrained_as(&peft::base_of(dir, base)?, holding, device)?;
        let loaded = model.load_adapter(dir, "default")?;
        if !loaded.modules_to_save.is_empty() {
            let keys: Vec<&str> = loaded.modules_to_save.keys().collect();
            return Err(ModelError::Adapter(format!(
                "{}: the adapter carries whole tensors [{}] (modules_to_save [{}]); load it with the head it belongs to \
                 (ForSequenceClassification / CausalLmWithValueHead ::from_adapter)",
                dir.display(),
                keys.join(", "),
                loaded.config.modules_to_save.join(", ")
            )));
        }
        Ok((model, hf))
    }

    /// Makes `name` the active adapter and enables adapters.
    pub fn set_adapter(&mut self, name: &str) -> Result<()> {
        let i = self.adapters().index(name)?;
        let a = self.adapters_mut();
        if a.merged && a.active != Some(i) {
            return Err(ModelError::Adapter(format!(
                "cannot switch to `{name}` while another adapter is merged; unmerge first"
            )));
        }
        a.active = Some(i);
        a.disabled = false;
        self.sync_active();
        Ok(())
    }

    /// Runs the base model only until [`enable_adapters`](Self::enable_adapters).
    pub fn disable_adapters(&mut self) -> Result<()> {
        if self.adapters().merged {
            return Err(ModelError::Adapter(
                "cannot disable adapters while one is merged into the weights; unmerge first".into(),
            ));
        }
        self.adapters_mut().disabled = true;
        self.sync_active();
        Ok(())
    }

    pub fn enable_adapters(&mut self) {
        self.adapters_mut().disabled = false;
        self.sync_active();
    }

    /// A copy that runs the base model only (tensors are shared, so this is cheap): the
    /// reference model of Nash-MD / online DPO with a LoRA policy.
    pub fn without_adapters(&self) -> Result<Self> {
        let mut m = self.clone();
        m.disable_adapters()?;
        Ok(m)
    }

    /// Adds the active adapter's `A·B·scaling` into the base weights (PEFT's `merge_adapter`); the
    /// forward pass then runs the base layers only. Undo with [`unmerge_adapter`](Self::unmerge_adapter).
    pub fn merge_adapter(&mut self) -> Result<()> {
        let a = self.adapters();
        let Some(i) = a.active.filter(|_| !a.disabled) else {
            return Err(ModelError::Adapter("no active adapter to merge".into()));
        };
        if a.merged {
            return Ok(());
        }
        for (_, layer) in self.lora_layers() {
            let mut p = layer.parts();
            if p.lora.slots.get(i).is_some_and(Option::is_some) {
                p.fold(i, 1.0);
                p.lora.merged = Some(i);
            }
        }
        self.adapters_mut().merged = true;
        Ok(())
    }

    /// Subtracts the merged adapter from the base weights again.
    pub fn unmerge_adapter(&mut self) -> Result<()> {
        if !self.adapters().merged {
            return Ok(());
        }
        for (_, layer) in self.lora_layers() {
            let mut p = layer.parts();
            if let Some(i) = p.lora.merged.take() {
                p.fold(i, -1.0);
            }
        }
        self.adapters_mut().merged = false;
        Ok(())
    }

    /// Merges the active adapter (if any) and removes every adapter: a plain model whose state
    /// dict is the merged checkpoint (PEFT's `merge_and_unload`).
    pub fn merge_and_unload(mut self) -> Result<Self> {
        if self.active_adapter().is_some() {
            self.merge_adapter()?;
        }
        for (_, layer) in self.lora_layers() {
            let p = layer.parts();
            p.lora_A.clear();
            p.lora_B.clear();
            *p.lora = LoraSlots::default();
        }
        *self.adapters_mut() = Adapters::default();
        Ok(self)
    }

    /// Removes adapter `name` and its weights; the active adapter stays active unless it was `name`.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        let i = self.adapters().index(name)?;
        if self.adapters().merged && self.adapters().active == Some(i) {
            return Err(ModelError::Adapter(format!("adapter `{name}` is merged; unmerge it before deleting")));
        }
        for (_, layer) in self.lora_layers() {
            layer.parts().remove(i);
        }
        let a = self.adapters_mut();
        a.list.remove(i);
        a.active = match a.active {
            Some(j) if j == i => None,
            Some(j) if j > i => Some(j - 1),
            other => other,
        };
        self.sync_active();
        Ok(())
    }

    /// Sets the dropout probability of every adapter at every projection to `p`, leaving the
    /// adapters' configs (and so what [`save_adapter`](Self::save_adapter) writes) alone: TRL's
    /// `disable_dropout_in_model` on a PEFT model is `set_lora_dropout(0.0)`.
    pub fn set_lora_dropout(&mut self, p: f64) {
        for (_, layer) in self.lora_layers() {
            for slot in layer.parts().lora.slots.iter_mut().flatten() {
                slot.dropout = p;
            }
        }
    }

    /// A test for parameter keys (module paths, with any prefix such as `backbone.`) that are
    /// LoRA weights of adapter `name`: for freezing, or for an optimizer's parameter groups.
    pub fn adapter_key_filter(&self, name: &str) -> Result<impl Fn(&str) -> bool + 'static> {
        let slot = self.adapters().index(name)?;
        Ok(move |key: &str| in_slot(key, slot))
    }

    /// Adapter `name`'s `lora_A` / `lora_B` under their adapter-file keys
    /// (`base_model.model.<module>.lora_A.weight`, `[r, in]` / `[out, r]`, f32).
    pub fn adapter_state_dict(&self, name: &str) -> Result<StateDict> {
        let slot = self.adapters().index(name)?;
        let mine = module_state_dict_where(self, |k| in_slot(k, slot));
        let mut sd = StateDict::new();
        for (k, t) in mine.tensors {
            let k = k.replacen(&format!(".lora_A.{slot}."), ".lora_A.", 1).replacen(
                &format!(".lora_B.{slot}."),
                ".lora_B.",
                1,
            );
            sd.insert(format!("{}{k}", peft::KEY_PREFIX), t);
        }
        Ok(sd)
    }

    /// Writes adapter `name` in PEFT's format into `dir`: `adapter_config.json` and
    /// `adapter_model.safetensors`, plus `modules_to_save` tensors given by the head (model keys,
    /// e.g. `score.weight`, stored as `base_model.model.score.weight`). Both files are atomic.
    pub fn save_adapter(&self, dir: &Path, name: &str, modules_to_save: &StateDict) -> Result<()> {
        let config =
            self.adapter_config(name).ok_or_else(|| ModelError::Adapter(format!("no adapter named `{name}`")))?;
        let mut sd = self.adapter_state_dict(name)?;
        sd.extend(modules_to_save.add_prefix(peft::KEY_PREFIX));
        peft::write_adapter(dir, config, &sd)?;
        Ok(())
    }

    /// Freezes every parameter except the active adapter's (PEFT's `mark_only_lora_as_trainable`):
    /// on an autodiff backend only those get gradients, so an optimizer leaves the base weights
    /// bit-identical. Heads add their own trainable parameters (`score`, `v_head`).
    pub fn train_adapter_only(self) -> Result<Self> {
        let is_adapter = self.active_adapter_filter()?;
        Ok(set_require_grad_where(self, |k| Some(is_adapter(k))))
    }

    /// Which parameter keys belong to the active adapter (what trains); an error when no
    /// adapter is active.
    pub fn active_adapter_filter(&self) -> Result<impl Fn(&str) -> bool + 'static> {
        let name = self.active_adapter().ok_or_else(|| ModelError::Adapter("no active adapter to train".into()))?;
        self.adapter_key_filter(name)
    }
}
