//! The backend a binary runs on, picked once by cargo feature: `cuda` > `wgpu` > `ndarray` > `flex`.
//!
//! Library code is generic over `B: Backend`; only front ends (xtask, tests, user binaries)
//! name [`Cpu`]/[`Default`] here. Training wraps it in [`Train`] (burn's `Autodiff`).

#[cfg(feature = "cuda")]
pub type Default = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Default = burn::backend::Wgpu;
#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
pub type Default = burn::backend::NdArray;
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))))]
pub type Default = burn::backend::Flex;

/// The default backend with automatic differentiation, for training.
pub type Train = burn::backend::Autodiff<Default>;

/// [`Train`] with burn's balanced checkpointing: element-wise results are recomputed in the
/// backward pass instead of kept (`gradient_checkpointing = true`).
pub type TrainCheckpointed =
    burn::backend::Autodiff<Default, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;

/// The default device of the default backend.
pub fn device() -> burn::tensor::Device<Default> {
    std::default::Default::default()
}

/// A short name of the backend in use, for logs and benchmark reports.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else if cfg!(feature = "ndarray") {
        "ndarray"
    } else {
        "flex"
    }
}

/// Where a command runs (`--device`): `cpu`, `cuda[:N]` or `wgpu[:N]`, as torch spells devices.
/// The backend itself is chosen when the binary is built (a cargo feature), so a device of
/// another backend is an error that names the feature to build with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    Cpu,
    /// The N-th CUDA device.
    Cuda(usize),
    /// The N-th discrete GPU wgpu sees (the N-th integrated one where there is no discrete GPU).
    Wgpu(usize),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a device: use cpu, cuda, cuda:N, wgpu or wgpu:N");
        let (kind, index) = match s.trim().to_ascii_lowercase().split_once(':') {
            Some((k, i)) => (k.to_string(), Some(i.parse::<usize>().map_err(|_| bad())?)),
            None => (s.trim().to_ascii_lowercase(), None),
        };
        match (kind.as_str(), index) {
            ("cpu", None | Some(0)) => Ok(Self::Cpu),
            ("cuda", i) => Ok(Self::Cuda(i.unwrap_or(0))),
            ("wgpu", i) => Ok(Self::Wgpu(i.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Wgpu(i) => write!(f, "wgpu:{i}"),
        }
    }
}

/// In a config file, the string `--device` takes.
impl serde::Serialize for DeviceArg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceArg {
    /// The device this build runs on when none is named: `cuda:0`, `wgpu:0` or `cpu`.
    pub fn built() -> Self {
        match name() {
            "cuda" => Self::Cuda(0),
            "wgpu" => Self::Wgpu(0),
            _ => Self::Cpu,
        }
    }

    /// The device of backend `B` (this build's backend, or its autodiff wrapper) that `self`
    /// names. An error, never a panic, when the binary was built for another backend or the
    /// device does not exist.
    pub fn resolve<B: burn::tensor::backend::Backend>(self) -> crate::Result<B::Device> {
        use burn::tensor::backend::{Device, DeviceId};
        let built = Self::built();
        let same_kind = matches!(
            (self, built),
            (Self::Cpu, Self::Cpu) | (Self::Cuda(_), Self::Cuda(_)) | (Self::Wgpu(_), Self::Wgpu(_))
        );
        if !same_kind {
            let how = match self {
                Self::Cpu => "a build without the cuda and wgpu features".to_string(),
                Self::Cuda(_) => {
                    "`--features cuda` (e.g. `cargo run --release -p xtask --features cuda -- ...`)".into()
                }
                Self::Wgpu(_) => {
                    "`--features wgpu` (e.g. `cargo run --release -p xtask --features wgpu -- ...`)".into()
                }
            };
            return Err(crate::Error::Invalid(format!(
                "--device {self}: this binary runs the {} backend; {self} needs {how} (or pass --device {built} to \
                 run on this one's)",
                name()
            )));
        }
        let index = match self {
            Self::Cpu => return Ok(B::Device::default()),
            Self::Cuda(i) | Self::Wgpu(i) => i,
        };
        // CUDA: type 0; wgpu: discrete GPUs (0), else integrated ones (1)
        let types: &[u16] = if matches!(self, Self::Cuda(_)) { &[0] } else { &[0, 1] };
        let mut seen = 0;
        for &type_id in types {
            let count = quiet_count::<B>(type_id);
            seen += count;
            if count > 0 {
                return match u16::try_from(index) {
                    Ok(i) if index < count => Ok(B::Device::from_id(DeviceId::new(type_id, i))),
                    _ => Err(crate::Error::Invalid(format!(
                        "--device {self}: no such device; {count} {} device(s) are visible (numbered from 0)",
                        name()
                    ))),
                };
            }
        }
        Err(crate::Error::Invalid(format!(
            "--device {self}: the {} backend sees {seen} devices (no driver or GPU found)",
            name()
        )))
    }
}

/// `--device-map`: the devices a decoder's layers are split over (transformers'
/// `device_map`): `auto`, every device of this build's backend (`cuda:0`, `cuda:1`, …; the
/// CPU is one), or a comma-separated list (`cuda:0,cuda:1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMap {
    Auto,
    List(Vec<DeviceArg>),
}

impl std::str::FromStr for DeviceMap {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        let list = s.split(',').map(|d| d.parse::<DeviceArg>()).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self::List(list))
    }
}

impl DeviceMap {
    /// Most devices `auto` looks for.
    const MOST: usize = 64;

    /// The devices, each checked to exist ([`DeviceArg::resolve`]), and their names.
    pub fn resolve<B: burn::tensor::backend::Backend>(&self) -> crate::Result<Vec<(DeviceArg, B::Device)>> {
        match self {
            Self::List(list) => list.iter().map(|d| Ok((*d, d.resolve::<B>()?))).collect(),
            Self::Auto => {
                let nth = |i: usize| match DeviceArg::built() {
                    DeviceArg::Cpu => None,
                    DeviceArg::Cuda(_) => Some(DeviceArg::Cuda(i)),
                    DeviceArg::Wgpu(_) => Some(DeviceArg::Wgpu(i)),
                };
                let Some(first) = nth(0) else { return Ok(vec![(DeviceArg::Cpu, DeviceArg::Cpu.resolve::<B>()?)]) };
                let mut out = vec![(first, first.resolve::<B>()?)];
                for d in (1..Self::MOST).filter_map(nth) {
                    match d.resolve::<B>() {
                        Ok(dev) => out.push((d, dev)),
                        Err(_) => break,
                    }
                }
                Ok(out)
            }
        }
    }
}

/// `B::device_count(type_id)`, 0 where asking fails (a backend's runtime may panic when no
/// driver or device is there); the panic message is kept off stderr.
fn quiet_count<B: burn::tensor::backend::Backend>(type_id: u16) -> usize {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let count = std::panic::catch_unwind(|| B::device_count(type_id)).unwrap_or(0);
    std::panic::set_hook(hook);
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_maps_parse_and_resolve_here() {
        assert_eq!("auto".parse::<DeviceMap>(), Ok(DeviceMap::Auto));
        assert_eq!(
            "cuda:0,cuda:1".parse::<DeviceMap>(),
            Ok(DeviceMap::List(vec![DeviceArg::Cuda(0), DeviceArg::Cuda(1)]))
        );
        assert!("cuda:0,gpu".parse::<DeviceMap>().is_err());
        let here = DeviceMap::Auto.resolve::<Default>().unwrap();
        assert_eq!(here[0].0, DeviceArg::built());
    }

    #[test]
    fn devices_parse_as_torch_spells_them() {
        for (s, d) in [
            ("cpu", DeviceArg::Cpu),
            ("CUDA", DeviceArg::Cuda(0)),
            ("cuda:3", DeviceArg::Cuda(3)),
            ("wgpu:1", DeviceArg::Wgpu(1)),
        ] {
            assert_eq!(s.parse::<DeviceArg>(), Ok(d), "{s}");
            assert_eq!(d.to_string().parse::<DeviceArg>(), Ok(d));
        }
        for s in ["gpu", "cuda:", "cuda:-1", "cpu:1", "mps"] {
            assert!(s.parse::<DeviceArg>().unwrap_err().contains("not a device"), "{s}");
        }
    }

    /// A device of a backend this binary was not built with names the feature to build with.
    #[test]
    fn a_device_of_another_backend_says_which_feature_to_build() {
        if name() == "cuda" || name() == "wgpu" {
            return; // GPU builds are checked on a GPU machine (scripts/gpu-check.sh)
        }
        let e = DeviceArg::Cuda(0).resolve::<Default>().unwrap_err().to_string();
        assert!(e.contains("--features cuda") && e.contains(name()), "{e}");
        let e = DeviceArg::Wgpu(1).resolve::<Default>().unwrap_err().to_string();
        assert!(e.contains("--features wgpu"), "{e}");
        assert_eq!(DeviceArg::Cpu.resolve::<Default>().unwrap(), device());
        assert_eq!(DeviceArg::Cpu.resolve::<Train>().unwrap(), device());
    }
}
