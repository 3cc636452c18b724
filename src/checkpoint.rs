//! mlx-lm checkpoint directories: `config.json` + `*.safetensors` (key names as mlx-lm writes them).
//! Reading parses each file's header with the `safetensors` crate, then reads each tensor's bytes (or only
//! some of its rows, for a rank of expert parallelism) into an MLX array; writing produces files mlx-lm loads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use safetensors::tensor::{Dtype as StDtype, Metadata, TensorInfo, TensorView};

use crate::error::{Error, Result};

/// The tensors of a checkpoint by name, plus bookkeeping of which were used.
#[derive(Debug, Default)]
pub struct Tensors {
    map: HashMap<String, Array>,
    used: HashSet<String>,
    /// Where they came from (for error messages).
    pub origin: PathBuf,
    bytes_read: u64,
    bytes_stored: u64,
}

/// Which rows of a checkpoint tensor to read, given its name and shape: `Ok(None)` all of it,
/// `Ok(Some((lo, hi)))` rows `[lo, hi)` of its first axis (the tensor then has `hi - lo` there), an error
/// to refuse the checkpoint.
pub type RowSelect<'a> = &'a dyn Fn(&str, &[usize]) -> Result<Option<(usize, usize)>>;

/// The `safetensors` crate's limit on a header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

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
        Self::load_dir_rows(dir, &|_, _| Ok(None))
    }

    /// Loads every `*.safetensors` file of `dir`, reading of each tensor only the rows (along its first
    /// axis) that `rows` asks for (see [`RowSelect`]).
    pub fn load_dir_rows(dir: &Path, rows: RowSelect<'_>) -> Result<Self> {
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
            t.load_file_rows(f, rows)?;
        }
        Ok(t)
    }

    /// Adds the tensors of one safetensors file.
    pub fn load_file(&mut self, path: &Path) -> Result<()> {
        self.load_file_rows(path, &|_, _| Ok(None))
    }

    /// Adds the tensors of one safetensors file, each read whole or, where `rows` says, only a range of
    /// its rows along the first axis. The header is read first and checked as the `safetensors` crate
    /// checks it (offsets contiguous, sizes matching shapes and dtypes, the data filling the file); then
    /// only the bytes of the wanted rows are read from the file.
    pub fn load_file_rows(&mut self, path: &Path, rows: RowSelect<'_>) -> Result<()> {
        let invalid =
            |msg: String| Error::checkpoint(path, format!("not a valid safetensors file: {msg}"));
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut len8 = [0u8; 8];
        if file_len < 8 {
            return Err(invalid(format!("{file_len} bytes, shorter than a header")));
        }
        file.read_exact(&mut len8).map_err(|e| Error::io(path, e))?;
        let header_len = u64::from_le_bytes(len8);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(invalid(format!(
                "header of {header_len} bytes in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| Error::io(path, e))?;
        self.bytes_read += 8 + header_len;
        let text = std::str::from_utf8(&header)
            .map_err(|e| invalid(format!("invalid UTF-8 in header: {e}")))?;
        let meta: Metadata = serde_json::from_str(text).map_err(|e| {
            invalid(if e.is_syntax() || e.is_eof() {
                format!("invalid JSON in header: {e}")
            } else {
                e.to_string()
            })
        })?;
        let data_start = 8 + header_len;
        if data_start + meta.data_len() as u64 != file_len {
            return Err(invalid(format!(
                "the header describes {} bytes of data but the file holds {}",
                meta.data_len(),
                file_len - data_start
            )));
        }
        let mut infos: Vec<(String, &TensorInfo)> = meta.tensors().into_iter().collect();
        infos.sort_by_key(|(_, i)| i.data_offsets);
        for (name, info) in infos {
            let dtype = st_to_mlx(info.dtype).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("tensor {name}: unsupported dtype {:?}", info.dtype),
                )
            })?;
            let mut shape: Vec<i32> = info
                .shape
                .iter()
                .map(|&d| i32::try_from(d))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| {
                    Error::checkpoint(path, format!("tensor {name}: dimension too large"))
                })?;
            let (start, end) = info.data_offsets;
            self.bytes_stored += (end - start) as u64;
            let (offset, len) = match rows(&name, &info.shape)? {
                None => (start, end - start),
                Some((lo, hi)) => {
                    let n = info.shape.first().copied().unwrap_or(0);
                    if lo >= hi || hi > n {
                        return Err(Error::checkpoint(
                            path,
                            format!(
                                "tensor {name} has shape {:?}: rows [{lo}, {hi}) of its first axis do not exist",
                                info.shape
                            ),
                        ));
                    }
                    let row_bytes = (end - start) / n;
                    shape[0] = (hi - lo) as i32;
                    (start + lo * row_bytes, (hi - lo) * row_bytes)
                }
            };
            let mut data = vec![0u8; len];
            file.seek(SeekFrom::Start(data_start + offset as u64))
                .and_then(|_| file.read_exact(&mut data))
                .map_err(|e| Error::io(path, e))?;
            self.bytes_read += len as u64;
            // SAFETY: `data` holds exactly prod(shape) elements of `dtype` (the header's sizes are checked
            // against shapes and dtypes; a row range takes whole rows); MLX copies it.
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

    /// Bytes read from checkpoint files so far (headers included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Bytes of tensor data the files read so far hold, whole.
    pub fn bytes_stored(&self) -> u64 {
        self.bytes_stored
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
