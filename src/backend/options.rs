//! What the `--gpu`, `--offload` and `--gpu-mem` flags ask for, parsed and checked before
//! anything is loaded. Pure Rust: a build without a ggml feature still parses them, so it can
//! say clearly that it cannot honour them.

use std::fmt;
use std::str::FromStr;

/// The parts of the model that can run on a ggml device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// The SigLIP tower and the projector (per tile).
    pub vision: bool,
    /// The language model's attention with its KV cache.
    pub attn: bool,
    /// Dense and shared-expert MLPs.
    pub dense: bool,
    /// Routed experts.
    pub experts: bool,
}

/// The `--offload` part names, in the order `Display` writes them.
const PARTS: [&str; 4] = ["vision", "attn", "dense", "experts"];

impl Offload {
    pub const NONE: Offload = Offload {
        vision: false,
        attn: false,
        dense: false,
        experts: false,
    };
    pub const ALL: Offload = Offload {
        vision: true,
        attn: true,
        dense: true,
        experts: true,
    };

    pub fn is_none(&self) -> bool {
        *self == Offload::NONE
    }

    fn flags(&self) -> [bool; 4] {
        [self.vision, self.attn, self.dense, self.experts]
    }

    fn flag_mut(&mut self, part: &str) -> Option<&mut bool> {
        match part {
            "vision" => Some(&mut self.vision),
            "attn" => Some(&mut self.attn),
            "dense" => Some(&mut self.dense),
            "experts" => Some(&mut self.experts),
            _ => None,
        }
    }
}

impl FromStr for Offload {
    type Err = String;

    /// `all`, `none`, or a comma-separated list of `vision`, `attn`, `dense`, `experts`.
    fn from_str(text: &str) -> Result<Self, String> {
        let s = text.trim().to_ascii_lowercase();
        match s.as_str() {
            "all" => return Ok(Offload::ALL),
            "none" => return Ok(Offload::NONE),
            _ => {}
        }
        let mut out = Offload::NONE;
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("`{text}` has an empty part"));
            }
            *out.flag_mut(part).ok_or_else(|| {
                format!(
                    "unknown part `{part}` in `{text}` (expected a list of {}, or all, or none)",
                    PARTS.join(", ")
                )
            })? = true;
        }
        Ok(out)
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = PARTS
            .iter()
            .zip(self.flags())
            .filter(|(_, on)| *on)
            .map(|(p, _)| *p)
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

/// A device as `--gpu` names it: its index in `pocketvl devices` or its name there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Index(usize),
    Name(String),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("an empty device name (see `pocketvl devices`)".to_owned());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(DeviceChoice::Index)
                .map_err(|_| format!("device index `{s}` is out of range"));
        }
        Ok(DeviceChoice::Name(s.to_owned()))
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Index(i) => write!(f, "{i}"),
            DeviceChoice::Name(n) => f.write_str(n),
        }
    }
}

/// Where the offloadable parts run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendOptions {
    /// The device (`--gpu`); `None` with parts to offload takes the first GPU.
    pub device: Option<DeviceChoice>,
    /// The parts to offload (`--offload`).
    pub offload: Offload,
    /// Device memory the offloaded parts may take (`--gpu-mem`; default: the device's free
    /// memory as it reports it).
    pub gpu_mem: Option<u64>,
}

impl BackendOptions {
    /// The options the three flags give: `--gpu` alone offloads everything this build can,
    /// `--offload` alone takes the first GPU; `--gpu-mem` needs one of them.
    pub fn from_flags(
        device: Option<DeviceChoice>,
        offload: Option<Offload>,
        gpu_mem: Option<u64>,
    ) -> Result<BackendOptions, String> {
        let offload = match (&device, offload) {
            (_, Some(o)) => o,
            (Some(_), None) => Offload::ALL,
            (None, None) => Offload::NONE,
        };
        if gpu_mem.is_some() && offload.is_none() {
            return Err(
                "--gpu-mem limits what is offloaded, but nothing is (give --gpu or \
                        --offload)"
                    .to_owned(),
            );
        }
        Ok(BackendOptions {
            device,
            offload,
            gpu_mem,
        })
    }

    /// Whether anything runs on a ggml device.
    pub fn wants_device(&self) -> bool {
        !self.offload.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_lists_parse_and_print() {
        assert_eq!("all".parse::<Offload>(), Ok(Offload::ALL));
        assert_eq!("None".parse::<Offload>(), Ok(Offload::NONE));
        let v: Offload = "vision, dense".parse().unwrap();
        assert!(v.vision && v.dense && !v.attn && !v.experts);
        assert_eq!(v.to_string(), "vision,dense");
        assert_eq!(Offload::ALL.to_string(), "vision,attn,dense,experts");
        assert_eq!(Offload::NONE.to_string(), "none");
        for s in ["all", "none", "vision", "attn,experts"] {
            let o: Offload = s.parse().unwrap();
            assert_eq!(o.to_string().parse::<Offload>(), Ok(o));
        }
        assert!("vision,,attn"
            .parse::<Offload>()
            .unwrap_err()
            .contains("empty"));
        let e = "vision,mlp".parse::<Offload>().unwrap_err();
        assert!(e.contains("`mlp`") && e.contains("experts"), "{e}");
        assert!("".parse::<Offload>().is_err());
    }

    #[test]
    fn devices_by_index_or_name() {
        assert_eq!("1".parse(), Ok(DeviceChoice::Index(1)));
        assert_eq!(
            " Vulkan0 ".parse(),
            Ok(DeviceChoice::Name("Vulkan0".to_owned()))
        );
        assert!("".parse::<DeviceChoice>().is_err());
        assert!("99999999999999999999999".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn flag_combinations() {
        let gpu = Some(DeviceChoice::Index(0));
        let o = BackendOptions::from_flags(gpu.clone(), None, None).unwrap();
        assert_eq!(o.offload, Offload::ALL);
        let o = BackendOptions::from_flags(None, Some(Offload::NONE), None).unwrap();
        assert!(!o.wants_device());
        let o = BackendOptions::from_flags(None, None, None).unwrap();
        assert_eq!(o, BackendOptions::default());
        assert!(BackendOptions::from_flags(None, None, Some(1 << 30))
            .unwrap_err()
            .contains("--gpu-mem"));
        assert!(BackendOptions::from_flags(gpu, Some(Offload::NONE), Some(1 << 30)).is_err());
    }
}
