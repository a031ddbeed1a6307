//! What the GPUs really hold: NVML on a real machine, a simulation whose usage
//! follows the leases on a machine without one, or nothing at all.

use std::collections::HashMap;

use plenum_runtime::bytes::parse_bytes;

/// One GPU as the inventory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total_bytes: u64,
}

/// Memory a lease-holding process is booked for on a device, given to the
/// simulation so that its usage can follow the leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldBytes {
    pub device_index: u32,
    pub pid: u32,
    pub bytes: u64,
}

/// Measured usage of one device at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUsage {
    pub used_bytes: u64,
    /// Usage per process id, as far as the inventory can attribute it.
    pub processes: HashMap<u32, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("NVML: {0}")]
    Nvml(#[from] nvml_wrapper::error::NvmlError),
    #[error("invalid --simulate spec `{spec}`: {reason}")]
    BadSimulation { spec: String, reason: String },
}

/// A source of truth about device memory.
pub trait Inventory: Send + Sync + 'static {
    /// "nvml", "simulated" or "none", for status and logs.
    fn kind(&self) -> &'static str;
    /// The devices, fixed for the life of the process.
    fn devices(&self) -> &[DeviceInfo];
    /// Usage of every device, in the order of [`Inventory::devices`]. `held` is what
    /// the ledger believes each holder process still holds (only a simulation uses it).
    fn measure(&self, held: &[HeldBytes]) -> Result<Vec<DeviceUsage>, InventoryError>;
}

/// No GPU: zero devices, so every Acquire is refused and callers use the CPU.
#[derive(Debug, Default)]
pub struct NoDevices;

impl Inventory for NoDevices {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn devices(&self) -> &[DeviceInfo] {
        &[]
    }
    fn measure(&self, _held: &[HeldBytes]) -> Result<Vec<DeviceUsage>, InventoryError> {
        Ok(Vec::new())
    }
}

/// Simulated devices whose usage is exactly what the leases hold, plus a fixed
/// external load. Lets tests and laptops exercise every broker path.
///
/// The rule for a holder process: it uses the bytes it is booked for while it
/// runs (`/proc/PID` exists and is no zombie, see [`crate::process`]), and
/// nothing once it is gone, as a GPU driver frees a dead process's memory.
#[derive(Debug)]
pub struct Simulated {
    devices: Vec<DeviceInfo>,
    external: Vec<u64>,
    is_running: fn(u32) -> bool,
}

/// A simulated process id standing for "someone who holds no lease".
pub const SIMULATED_EXTERNAL_PID: u32 = 0;

impl Simulated {
    /// Parses `NAME:TOTAL[:external=BYTES]`, comma-separated for several devices,
    /// e.g. `GTX 1070:8GiB` or `A:8GiB,B:16GiB:external=1GiB`.
    pub fn parse(spec: &str) -> Result<Self, InventoryError> {
        let bad = |reason: String| InventoryError::BadSimulation {
            spec: spec.to_owned(),
            reason,
        };
        let mut devices = Vec::new();
        let mut external = Vec::new();
        for (index, part) in spec.split(',').map(str::trim).enumerate() {
            let fields: Vec<&str> = part.split(':').map(str::trim).collect();
            let (name, total, extra) = match fields.as_slice() {
                [name, total] => (*name, *total, None),
                [name, total, extra] => (*name, *total, Some(*extra)),
                _ => return Err(bad(format!("`{part}` is not NAME:TOTAL[:external=BYTES]"))),
            };
            if name.is_empty() {
                return Err(bad(format!("device {index} has no name")));
            }
            let total_bytes = parse_bytes(total).map_err(bad)?;
            if total_bytes == 0 {
                return Err(bad(format!("device `{name}` has no memory")));
            }
            let external_bytes = match extra {
                None => 0,
                Some(extra) => {
                    let value = extra
                        .strip_prefix("external=")
                        .ok_or_else(|| bad(format!("`{extra}` should be external=BYTES")))?;
                    parse_bytes(value).map_err(bad)?
                }
            };
            let index = u32::try_from(index).map_err(|_| bad("too many devices".into()))?;
            devices.push(DeviceInfo {
                index,
                uuid: format!("SIM-{index:08x}-{}", name.replace(' ', "-")),
                name: name.to_owned(),
                total_bytes,
            });
            external.push(external_bytes);
        }
        Ok(Self {
            devices,
            external,
            is_running: crate::process::is_running,
        })
    }

    /// Replaces the `/proc` check, for tests whose holders are not real processes.
    pub fn with_process_check(mut self, is_running: fn(u32) -> bool) -> Self {
        self.is_running = is_running;
        self
    }
}

impl Inventory for Simulated {
    fn kind(&self) -> &'static str {
        "simulated"
    }
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }
    fn measure(&self, held: &[HeldBytes]) -> Result<Vec<DeviceUsage>, InventoryError> {
        let mut usage: Vec<DeviceUsage> = self
            .external
            .iter()
            .map(|&external| DeviceUsage {
                used_bytes: external,
                processes: HashMap::from([(SIMULATED_EXTERNAL_PID, external)]),
            })
            .collect();
        for hold in held.iter().filter(|hold| (self.is_running)(hold.pid)) {
            if let Some(device) = usage.get_mut(hold.device_index as usize) {
                device.used_bytes += hold.bytes;
                *device.processes.entry(hold.pid).or_default() += hold.bytes;
            }
        }
        Ok(usage)
    }
}

/// Real GPUs through NVML.
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
    devices: Vec<DeviceInfo>,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml")
            .field("devices", &self.devices)
            .finish()
    }
}

impl Nvml {
    /// Opens NVML and lists the devices; fails when there is no driver.
    pub fn open() -> Result<Self, InventoryError> {
        let nvml = nvml_wrapper::Nvml::init()?;
        let count = nvml.device_count()?;
        let mut devices = Vec::new();
        for index in 0..count {
            let device = nvml.device_by_index(index)?;
            devices.push(DeviceInfo {
                index,
                uuid: device.uuid()?,
                name: device.name()?,
                total_bytes: device.memory_info()?.total,
            });
        }
        Ok(Self { nvml, devices })
    }
}

impl Inventory for Nvml {
    fn kind(&self) -> &'static str {
        "nvml"
    }
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }
    fn measure(&self, _held: &[HeldBytes]) -> Result<Vec<DeviceUsage>, InventoryError> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let mut usage = Vec::with_capacity(self.devices.len());
        for info in &self.devices {
            let device = self.nvml.device_by_index(info.index)?;
            let mut processes = HashMap::new();
            let compute = device.running_compute_processes()?;
            // Graphics contexts (a desktop, a game) use memory too; count them as well.
            let graphics = device.running_graphics_processes().unwrap_or_default();
            for process in compute.into_iter().chain(graphics) {
                if let UsedGpuMemory::Used(bytes) = process.used_gpu_memory {
                    let entry = processes.entry(process.pid).or_insert(0);
                    *entry = (*entry).max(bytes);
                }
            }
            usage.push(DeviceUsage {
                used_bytes: device.memory_info()?.used,
                processes,
            });
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_and_several_simulated_devices() {
        let one = Simulated::parse("GTX 1070:8GiB").unwrap();
        assert_eq!(one.devices().len(), 1);
        assert_eq!(one.devices()[0].name, "GTX 1070");
        assert_eq!(one.devices()[0].total_bytes, 8 << 30);

        let two = Simulated::parse("A:8GiB, B:16GiB:external=1GiB").unwrap();
        assert_eq!(two.devices()[1].index, 1);
        let usage = two.measure(&[]).unwrap();
        assert_eq!(usage[1].used_bytes, 1 << 30);
    }

    #[test]
    fn simulated_usage_follows_what_is_held() {
        let sim = Simulated::parse("GTX 1070:8GiB").unwrap();
        let held = [HeldBytes {
            device_index: 0,
            pid: std::process::id(),
            bytes: 2 << 30,
        }];
        let usage = sim.measure(&held).unwrap();
        assert_eq!(usage[0].used_bytes, 2 << 30);
        assert_eq!(usage[0].processes[&std::process::id()], 2 << 30);
    }

    #[test]
    fn a_simulated_holder_that_is_gone_uses_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let sim = Simulated::parse("GTX 1070:8GiB").unwrap();
        let held = [HeldBytes {
            device_index: 0,
            pid: gone,
            bytes: 2 << 30,
        }];
        let usage = sim.measure(&held).unwrap();
        assert_eq!(usage[0].used_bytes, 0);
        assert!(!usage[0].processes.contains_key(&gone));
    }

    #[test]
    fn refuses_malformed_specs() {
        for spec in ["", "GTX", "GTX:lots", ":8GiB", "GTX:0", "GTX:8GiB:ext=1"] {
            assert!(Simulated::parse(spec).is_err(), "{spec} should be refused");
        }
    }
}
