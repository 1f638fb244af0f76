//! Reading CTranslate2's `model.bin` (binary version 6, as written by
//! `ctranslate2/specs/model_spec.py`): a header, the variables (name, shape, dtype, raw
//! little-endian bytes) and aliases (a variable stored once under two names).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// The binary format version this reader understands.
pub const BINARY_VERSION: u32 = 6;

/// CTranslate2's `DataType` enum (`include/ctranslate2/types.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    fn from_id(id: u8) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

/// One variable, borrowing its bytes from the model file.
#[derive(Debug, Clone, Copy)]
pub struct Variable<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

#[derive(Debug)]
pub struct Model<'a> {
    /// The specification's name, e.g. `WhisperSpec`.
    pub spec: String,
    pub revision: u32,
    shapes: Vec<Vec<usize>>,
    variables: BTreeMap<String, (usize, DType, &'a [u8])>,
    aliases: BTreeMap<String, String>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .with_context(|| {
                format!(
                    "truncated: {n} bytes wanted at offset {} of {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    /// A u16 length (counting the NUL), the UTF-8 bytes, a NUL.
    fn string(&mut self) -> Result<String> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        match bytes.split_last() {
            Some((0, text)) => Ok(String::from_utf8(text.to_vec()).context("name is not UTF-8")?),
            _ => bail!("string at offset {} is not NUL-terminated", self.pos - len),
        }
    }
}

impl<'a> Model<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Model<'a>> {
        let mut r = Reader { data, pos: 0 };
        let version = r.u32()?;
        if version != BINARY_VERSION {
            bail!(
                "CTranslate2 binary version {version}; this converter reads version {BINARY_VERSION}"
            );
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let count = r.u32()?;
        let mut shapes = Vec::new();
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()?;
            let mut shape = Vec::with_capacity(rank.into());
            for _ in 0..rank {
                shape.push(r.u32()? as usize);
            }
            let id = r.u8()?;
            let dtype = DType::from_id(id)
                .with_context(|| format!("variable {name}: unknown data type {id}"))?;
            let bytes = r.u32()? as usize;
            let elements: usize = shape.iter().product();
            if elements * dtype.size() != bytes {
                bail!(
                    "variable {name}: shape {shape:?} of {dtype:?} needs {} bytes, the file has {bytes}",
                    elements * dtype.size()
                );
            }
            let payload = r.take(bytes)?;
            shapes.push(shape);
            if variables
                .insert(name.clone(), (shapes.len() - 1, dtype, payload))
                .is_some()
            {
                bail!("variable {name} appears twice");
            }
        }
        let mut aliases = BTreeMap::new();
        for _ in 0..r.u32()? {
            let alias = r.string()?;
            let target = r.string()?;
            aliases.insert(alias, target);
        }
        if r.pos != data.len() {
            bail!(
                "{} bytes after the last alias (a model split into parts concatenated in the wrong order?)",
                data.len() - r.pos
            );
        }
        Ok(Model {
            spec,
            revision,
            shapes,
            variables,
            aliases,
        })
    }

    /// The variable `name`, following an alias.
    pub fn get(&self, name: &str) -> Option<Variable<'_>> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.variables
            .get(name)
            .map(|(shape, dtype, data)| Variable {
                dtype: *dtype,
                shape: &self.shapes[*shape],
                data,
            })
    }

    pub fn require(&self, name: &str) -> Result<Variable<'_>> {
        self.get(name)
            .with_context(|| format!("the model has no variable {name}"))
    }

    /// Stored variable names (aliases excluded), sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.variables.keys().map(String::as_str)
    }

    /// An integer scalar such as `encoder/num_heads`.
    pub fn scalar(&self, name: &str) -> Result<i64> {
        let v = self.require(name)?;
        if !v.shape.is_empty() {
            bail!("{name}: a scalar was expected, the shape is {:?}", v.shape);
        }
        Ok(match v.dtype {
            DType::I8 => i8::from_le_bytes([v.data[0]]).into(),
            DType::I16 => i16::from_le_bytes(v.data.try_into()?).into(),
            DType::I32 => i32::from_le_bytes(v.data.try_into()?).into(),
            other => bail!("{name}: an integer was expected, the type is {other:?}"),
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Writes a model.bin the way `model_spec.py` does, for tests.
    pub fn write(vars: &[(&str, &[usize], DType, Vec<u8>)], aliases: &[(&str, &str)]) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u16 + 1).to_le_bytes());
            out.extend(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend(6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend(3u32.to_le_bytes());
        out.extend((vars.len() as u32).to_le_bytes());
        for (name, shape, dtype, data) in vars {
            string(&mut out, name);
            out.push(shape.len() as u8);
            for d in *shape {
                out.extend((*d as u32).to_le_bytes());
            }
            out.push(*dtype as u8);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
        }
        out.extend((aliases.len() as u32).to_le_bytes());
        for (a, b) in aliases {
            string(&mut out, a);
            string(&mut out, b);
        }
        out
    }

    #[test]
    fn reads_variables_scalars_and_aliases() {
        let file = write(
            &[
                ("a/w", &[2, 3], DType::F16, vec![1; 12]),
                ("a/heads", &[], DType::I16, 6i16.to_le_bytes().to_vec()),
            ],
            &[("b/w", "a/w")],
        );
        let m = Model::parse(&file).unwrap();
        assert_eq!(m.spec, "WhisperSpec");
        assert_eq!(m.revision, 3);
        assert_eq!(m.get("b/w").unwrap().shape, &[2, 3]);
        assert_eq!(m.scalar("a/heads").unwrap(), 6);
        assert_eq!(m.names().collect::<Vec<_>>(), ["a/heads", "a/w"]);
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors() {
        let file = write(&[("a/w", &[2], DType::F16, vec![1; 4])], &[]);
        let err = Model::parse(&file[..file.len() - 6]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut longer = file.clone();
        longer.push(0);
        let err = Model::parse(&longer).unwrap_err();
        assert!(err.to_string().contains("after the last alias"), "{err}");
    }
}
