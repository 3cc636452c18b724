//! Text in/out through the `tokenizers` crate when a checkpoint has `tokenizer.json`.

use std::path::Path;

use crate::error::{Error, Result};

/// A Hugging Face tokenizer.
pub struct Tokenizer(tokenizers::Tokenizer);

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer")
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`; `Ok(None)` when the file does not exist.
    pub fn from_dir(dir: &Path) -> Result<Option<Tokenizer>> {
        let p = dir.join("tokenizer.json");
        if !p.exists() {
            return Ok(None);
        }
        tokenizers::Tokenizer::from_file(&p)
            .map(|t| Some(Tokenizer(t)))
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", p.display())))
    }

    /// Text → token ids (special tokens added as the tokenizer's post-processor says).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.0
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Token ids → text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.0
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// Parses `"1, 2 3"` style token id lists.
pub fn parse_token_list(s: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| Error::invalid(format!("'{p}' is not a token id")))
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Err(Error::invalid("no token ids given"));
    }
    Ok(ids)
}
