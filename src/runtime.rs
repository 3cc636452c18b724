//! What MLX build is linked and which devices it offers; device selection.

use std::ffi::CStr;

use mlx_rs::Device;

use crate::array::last_mlx_error;
use crate::error::{Error, Result};

/// The MLX version reported by the linked library.
pub fn mlx_version() -> Result<String> {
    // SAFETY: string handle created, read and freed here.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        if mlx_sys::mlx_version(&mut s) != 0 {
            mlx_sys::mlx_string_free(s);
            return Err(Error::mlx(last_mlx_error()));
        }
        let p = mlx_sys::mlx_string_data(s);
        let v = if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        mlx_sys::mlx_string_free(s);
        Ok(v)
    }
}

/// The backend of the linked MLX build (`cpu`, `cuda` or `metal`).
pub fn backend() -> &'static str {
    mlx_sys::MLX_BACKEND
}

/// A device kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU.
    Cpu,
    /// The GPU (CUDA or Metal).
    Gpu,
}

impl std::str::FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "gpu" => Ok(DeviceKind::Gpu),
            _ => Err(Error::invalid(format!(
                "unknown device '{s}' (expected cpu or gpu)"
            ))),
        }
    }
}

impl DeviceKind {
    fn raw(self) -> mlx_sys::mlx_device_type {
        match self {
            DeviceKind::Cpu => mlx_sys::mlx_device_type__MLX_CPU,
            DeviceKind::Gpu => mlx_sys::mlx_device_type__MLX_GPU,
        }
    }

    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
        }
    }
}

/// Whether MLX can run on a device of this kind.
pub fn is_available(kind: DeviceKind) -> bool {
    // SAFETY: device handle created and freed here.
    unsafe {
        let d = mlx_sys::mlx_device_new_type(kind.raw(), 0);
        let mut ok = false;
        let rc = mlx_sys::mlx_device_is_available(&mut ok, d);
        mlx_sys::mlx_device_free(d);
        rc == 0 && ok
    }
}

/// Number of devices of a kind.
pub fn device_count(kind: DeviceKind) -> usize {
    let mut n = 0i32;
    // SAFETY: plain out-parameter.
    let rc = unsafe { mlx_sys::mlx_device_count(&mut n, kind.raw()) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// Makes `kind` MLX's default device for this process.
pub fn use_device(kind: DeviceKind) -> Result<()> {
    if !is_available(kind) {
        return Err(Error::invalid(format!(
            "device '{}' is not available in this MLX build ({} backend)",
            kind.name(),
            backend()
        )));
    }
    let d = match kind {
        DeviceKind::Cpu => Device::cpu(),
        DeviceKind::Gpu => Device::gpu(),
    };
    Device::set_default(&d);
    Ok(())
}

/// The current default device kind.
pub fn default_device() -> Result<DeviceKind> {
    let d = Device::try_default()?;
    Ok(match d.get_type()? {
        mlx_rs::DeviceType::Gpu => DeviceKind::Gpu,
        _ => DeviceKind::Cpu,
    })
}

/// The name of GPU 0 as its driver reports it (`None` without a GPU).
pub fn gpu_name() -> Result<Option<String>> {
    // SAFETY: string handle created, read and freed here.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        if crate::ffi::mlx_moe_gpu_device_name(&mut s, 0) != 0 {
            mlx_sys::mlx_string_free(s);
            return Err(Error::mlx(last_mlx_error()));
        }
        let p = mlx_sys::mlx_string_data(s);
        let v = if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        mlx_sys::mlx_string_free(s);
        Ok((!v.is_empty()).then_some(v))
    }
}
