//! `--override-kv`: replaces a value of the model's GGUF metadata at load time, as
//! llama-server's option of that name does (`KEY=TYPE:VALUE`, TYPE one of int, float,
//! bool, str). For models whose file carries a wrong value (a rope base, a context
//! length), without editing the file.

use std::ffi::CString;
use std::pin::Pin;

use llama_cpp_2::model::params::kv_overrides::ParamOverrideValue;
use llama_cpp_2::model::params::LlamaModelParams;

/// llama.cpp keeps keys and string values in 128-byte arrays, NUL included.
const MAX_LEN: usize = 127;

#[derive(Debug, Clone, PartialEq)]
pub struct KvOverride {
    key: CString,
    value: ParamOverrideValue,
}

impl KvOverride {
    /// Parses `KEY=TYPE:VALUE`, naming what is wrong.
    pub fn parse(text: &str) -> Result<KvOverride, String> {
        let (key, typed) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not KEY=TYPE:VALUE"))?;
        let (kind, value) = typed
            .split_once(':')
            .ok_or_else(|| format!("`{typed}` is not TYPE:VALUE (int, float, bool or str)"))?;
        if key.is_empty() || key.len() > MAX_LEN || !key.is_ascii() || key.contains('\0') {
            return Err(format!(
                "the key `{key}` must be 1 to {MAX_LEN} ASCII characters"
            ));
        }
        let bad = |what: &str| format!("`{value}` is not {what} (in `{text}`)");
        let value = match kind {
            "int" => ParamOverrideValue::Int(value.parse().map_err(|_| bad("an integer"))?),
            "float" => ParamOverrideValue::Float(
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad("a finite number"))?,
            ),
            "bool" => ParamOverrideValue::Bool(match value {
                "true" => true,
                "false" => false,
                _ => return Err(bad("true or false")),
            }),
            "str" => {
                if value.len() > MAX_LEN || value.contains('\0') {
                    return Err(format!(
                        "the string value of `{key}` must be at most {MAX_LEN} bytes"
                    ));
                }
                let mut bytes = [0; MAX_LEN + 1];
                for (slot, b) in bytes.iter_mut().zip(value.bytes()) {
                    *slot = b as std::os::raw::c_char;
                }
                ParamOverrideValue::Str(bytes)
            }
            other => {
                return Err(format!(
                    "unknown type `{other}` in `{text}` (int, float, bool or str)"
                ))
            }
        };
        Ok(KvOverride {
            key: CString::new(key).expect("checked for NUL above"),
            value,
        })
    }

    pub fn apply(&self, params: Pin<&mut LlamaModelParams>) {
        params.append_kv_override(&self.key, self.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_type_and_names_what_is_wrong() {
        assert_eq!(
            KvOverride::parse("llama.rope.freq_base=float:10000")
                .unwrap()
                .value,
            ParamOverrideValue::Float(10000.0)
        );
        assert_eq!(
            KvOverride::parse("llama.context_length=int:512")
                .unwrap()
                .value,
            ParamOverrideValue::Int(512)
        );
        assert!(KvOverride::parse("tokenizer.ggml.add_bos_token=bool:false").is_ok());
        assert!(KvOverride::parse("general.name=str:box").is_ok());
        for (bad, says) in [
            ("no-equals", "KEY=TYPE:VALUE"),
            ("k=float", "TYPE:VALUE"),
            ("k=float:nan", "finite"),
            ("k=int:1.5", "integer"),
            ("k=bool:yes", "true or false"),
            ("k=list:1", "unknown type `list`"),
            ("=int:1", "1 to 127"),
        ] {
            let e = KvOverride::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("{}=int:1", "k".repeat(128));
        assert!(KvOverride::parse(&long).is_err());
    }
}
