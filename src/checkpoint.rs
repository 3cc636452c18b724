//! mlx-lm checkpoint directories: `config.json` + `*.safetensors` (key names as mlx-lm writes them).
//! Reading goes through the `safetensors` crate into MLX arrays; writing produces files mlx-lm loads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::error::{Error, Result};

/// The tensors of a checkpoint by name, plus bookkeeping of which were used.
#[derive(Debug, Default)]
pub struct Tensors {
    map: HashMap<String, Array>,
    used: HashSet<String>,
    /// Where they came from (for error messages).
    pub origin: PathBuf,
}

fn st_to_mlx(d: StDtype) -> Option<Dtype> {
    Some(match d {
        StDtype::F32 => Dtype::Float32,
        StDtype::F16 => Dtype::Float16,
        StDtype::BF16 => Dtype::Bfloat16,
        StDtype::U32 => Dtype::Uint32,
        StDtype::U8 => Dtype::Uint8,
        StDtype::I32 => Dtype::Int32,
        StDtype::I64 => Dtype::Int64,
        StDtype::U16 => Dtype::Uint16,
        StDtype::I8 => Dtype::Int8,
        StDtype::I16 => Dtype::Int16,
        StDtype::U64 => Dtype::Uint64,
        StDtype::F64 => Dtype::Float64,
        StDtype::BOOL => Dtype::Bool,
        _ => return None,
    })
}

fn mlx_to_st(d: Dtype) -> Option<StDtype> {
    Some(match d {
        Dtype::Float32 => StDtype::F32,
        Dtype::Float16 => StDtype::F16,
        Dtype::Bfloat16 => StDtype::BF16,
        Dtype::Uint32 => StDtype::U32,
        Dtype::Uint8 => StDtype::U8,
        Dtype::Int32 => StDtype::I32,
        Dtype::Int64 => StDtype::I64,
        Dtype::Uint16 => StDtype::U16,
        Dtype::Int8 => StDtype::I8,
        Dtype::Int16 => StDtype::I16,
        Dtype::Uint64 => StDtype::U64,
        Dtype::Float64 => StDtype::F64,
        Dtype::Bool => StDtype::BOOL,
        _ => return None,
    })
}

/// Raw little-endian bytes of an array (evaluated, made row-contiguous).
pub fn array_bytes(a: &Array) -> Result<Vec<u8>> {
    let a = a.contiguous()?;
    a.eval()?;
    fn bytes<T: mlx_rs::ArrayElement + Copy>(a: &Array) -> Result<Vec<u8>> {
        let s = a
            .try_as_slice::<T>()
            .map_err(|e| Error::Conversion(e.to_string()))?;
        let n = std::mem::size_of_val(s);
        // SAFETY: plain-old-data slice viewed as bytes.
        Ok(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), n) }.to_vec())
    }
    match a.dtype() {
        Dtype::Float32 => bytes::<f32>(&a),
        Dtype::Float16 => bytes::<half::f16>(&a),
        Dtype::Bfloat16 => bytes::<half::bf16>(&a),
        Dtype::Uint32 => bytes::<u32>(&a),
        Dtype::Uint8 => bytes::<u8>(&a),
        Dtype::Int32 => bytes::<i32>(&a),
        Dtype::Int64 => bytes::<i64>(&a),
        Dtype::Uint16 => bytes::<u16>(&a),
        Dtype::Float64 => bytes::<f64>(&a),
        d => Err(Error::invalid(format!("cannot serialise dtype {d:?}"))),
    }
}

impl Tensors {
    /// Empty set (for building a model in memory).
    pub fn new(origin: impl Into<PathBuf>) -> Self {
        Tensors {
            origin: origin.into(),
            ..Default::default()
        }
    }

    /// Loads every `*.safetensors` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::checkpoint(dir, "no *.safetensors files"));
        }
        let mut t = Tensors::new(dir);
        for f in &files {
            t.load_file(f)?;
        }
        Ok(t)
    }

    /// Adds the tensors of one safetensors file.
    pub fn load_file(&mut self, path: &Path) -> Result<()> {
        let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&buf)
            .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let dtype = st_to_mlx(view.dtype()).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("tensor {name}: unsupported dtype {:?}", view.dtype()),
                )
            })?;
            let shape: Vec<i32> = view
                .shape()
                .iter()
                .map(|&d| i32::try_from(d))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| {
                    Error::checkpoint(path, format!("tensor {name}: dimension too large"))
                })?;
            let data = view.data();
            let want: usize =
                (view.shape().iter().product::<usize>() * view.dtype().bitsize()).div_ceil(8);
            if data.len() != want {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor {name}: truncated data"),
                ));
            }
            // SAFETY: `data` holds exactly prod(shape) elements of `dtype`; MLX copies it.
            let arr = unsafe { Array::from_raw_data(data.as_ptr().cast(), &shape, dtype) };
            if self.map.insert(name.clone(), arr).is_some() {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor {name} appears twice"),
                ));
            }
        }
        Ok(())
    }

    /// Inserts (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, a: Array) {
        self.map.insert(name.into(), a);
    }

    /// Whether `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Takes a required tensor, checking its shape (`None` entries match any size).
    pub fn take(&mut self, name: &str, shape: &[Option<i32>]) -> Result<Array> {
        let a =
            self.map.get(name).cloned().ok_or_else(|| {
                Error::checkpoint(&self.origin, format!("missing tensor '{name}'"))
            })?;
        let ok = a.ndim() == shape.len()
            && a.shape()
                .iter()
                .zip(shape)
                .all(|(&d, s)| s.is_none_or(|s| s == d));
        if !ok {
            let want: Vec<String> = shape
                .iter()
                .map(|s| s.map_or("?".to_string(), |v| v.to_string()))
                .collect();
            return Err(Error::checkpoint(
                &self.origin,
                format!(
                    "tensor '{name}' has shape {:?}, expected [{}]",
                    a.shape(),
                    want.join(", ")
                ),
            ));
        }
        self.used.insert(name.to_string());
        Ok(a)
    }

    /// Takes an optional tensor (checked like [`Tensors::take`] when present).
    pub fn take_opt(&mut self, name: &str, shape: &[Option<i32>]) -> Result<Option<Array>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Names that were never taken.
    pub fn unused(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All tensors (sorted by name).
    pub fn sorted(&self) -> BTreeMap<&str, &Array> {
        self.map.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }
}

/// Writes `tensors` as one `model.safetensors` file (metadata `format: mlx`, as mlx-lm writes) and the
/// config as `config.json` into `dir` (created if needed).
pub fn save_dir(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &BTreeMap<String, Array>,
) -> Result<()> {
    // Never over an existing checkpoint: its other files (shards of another size, an index) would stay
    // and break loading.
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(Error::invalid(format!(
                "output directory {} is not empty; write the checkpoint to a new or empty directory",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, a) in tensors {
        let d = mlx_to_st(a.dtype()).ok_or_else(|| {
            Error::invalid(format!("tensor {name}: dtype {:?} not storable", a.dtype()))
        })?;
        let shape: Vec<usize> = a.shape().iter().map(|&s| s as usize).collect();
        owned.push((name.clone(), d, shape, array_bytes(a)?));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "mlx".to_string())].into();
    let file = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &file)
        .map_err(|e| Error::checkpoint(&file, format!("write failed: {e}")))?;
    let cfg = serde_json::to_string_pretty(config).map_err(|e| Error::invalid(e.to_string()))?;
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg).map_err(|e| Error::io(&cfg_path, e))?;
    Ok(())
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join("config.json");
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&s).map_err(|e| Error::checkpoint(&p, format!("invalid JSON: {e}")))
}
