//! CTranslate2 Whisper (`WhisperSpec`, float16) → whisper.cpp's ggml model file.
//!
//! The output is byte for byte what whisper.cpp's `models/convert-pt-to-ggml.py` writes
//! for the original PyTorch checkpoint (docs/whisper-models.md):
//!
//! - magic `ggml`, then eleven i32 hyper-parameters (`n_vocab`, `n_audio_ctx`,
//!   `n_audio_state`, `n_audio_head`, `n_audio_layer`, `n_text_ctx`, `n_text_state`,
//!   `n_text_head`, `n_text_layer`, `n_mels`, `ftype` = 1 for f16);
//! - the mel filter bank: `n_mels`, `n_fft`, then `n_mels × n_fft` f32 (openai-whisper's
//!   `mel_filters.npz`, key `mel_<n_mels>`);
//! - the vocabulary: a count, then each token as an i32 length and its bytes, in rank
//!   order (openai-whisper's tiktoken files);
//! - the tensors in the PyTorch state dict's order, each as i32 `n_dims`, name length,
//!   type (0 f32, 1 f16), the dimensions innermost first, the name, the data.
//!
//! CTranslate2 fuses self-attention's query, key and value into one linear layer and
//! cross-attention's key and value into another; they are split back here. Whisper's
//! key projections have no bias: CTranslate2 stores zeros there, which is checked.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::ctranslate2::{DType, Model, Variable};

const MAGIC: u32 = 0x6767_6d6c;
/// Vocabulary sizes from this one up are multilingual (whisper.cpp's rule).
const MULTILINGUAL_VOCAB: usize = 51865;
/// The English-only vocabulary is GPT-2's: gpt2.tiktoken's 50,256 ranks and the
/// end-of-text token, id 50256, as in GPT-2's `vocab.json` that the published English
/// ggml files were converted from (50,257 entries).
const ENGLISH_END_OF_TEXT: &[u8] = b"<|endoftext|>";

/// What a conversion wrote, for the build log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub hparams: [i32; 11],
    pub tokens: usize,
    pub tensors: usize,
    pub bytes: u64,
}

/// Whisper's dimensions, read off the CTranslate2 variables.
struct Dims {
    n_vocab: usize,
    n_audio_ctx: usize,
    n_audio_state: usize,
    n_audio_head: usize,
    n_audio_layer: usize,
    n_text_ctx: usize,
    n_text_state: usize,
    n_text_head: usize,
    n_text_layer: usize,
    n_mels: usize,
}

fn count_layers(model: &Model, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            let p = format!("{prefix}/layer_{i}/");
            model.names().any(|n| n.starts_with(&p))
        })
        .count()
}

fn dim(v: &Variable, name: &str, rank: usize) -> Result<Vec<usize>> {
    ensure!(
        v.shape.len() == rank,
        "{name}: {rank} dimensions expected, the shape is {:?}",
        v.shape
    );
    Ok(v.shape.to_vec())
}

impl Dims {
    fn read(model: &Model) -> Result<Dims> {
        let emb = dim(
            &model.require("decoder/embeddings/weight")?,
            "decoder/embeddings/weight",
            2,
        )?;
        let conv1 = dim(
            &model.require("encoder/conv1/weight")?,
            "encoder/conv1/weight",
            3,
        )?;
        let enc_pos = dim(
            &model.require("encoder/position_encodings/encodings")?,
            "encoder/position_encodings/encodings",
            2,
        )?;
        let dec_pos = dim(
            &model.require("decoder/position_encodings/encodings")?,
            "decoder/position_encodings/encodings",
            2,
        )?;
        let heads = |name: &str| -> Result<usize> {
            usize::try_from(model.scalar(name)?).with_context(|| format!("{name} is negative"))
        };
        let dims = Dims {
            n_vocab: emb[0],
            n_audio_ctx: enc_pos[0],
            n_audio_state: conv1[0],
            n_audio_head: heads("encoder/num_heads")?,
            n_audio_layer: count_layers(model, "encoder"),
            n_text_ctx: dec_pos[0],
            n_text_state: emb[1],
            n_text_head: heads("decoder/num_heads")?,
            n_text_layer: count_layers(model, "decoder"),
            n_mels: conv1[1],
        };
        ensure!(
            enc_pos[1] == dims.n_audio_state && dec_pos[1] == dims.n_text_state,
            "positional embeddings {enc_pos:?} / {dec_pos:?} do not match the model widths"
        );
        ensure!(
            dims.n_audio_layer > 0 && dims.n_text_layer > 0,
            "the model has no encoder or no decoder layers"
        );
        Ok(dims)
    }

    fn hparams(&self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            1, // f16
        ]
        .map(|v| v as i32)
    }
}

/// Where a ggml tensor's data comes from: a CTranslate2 variable, or one of the `parts`
/// equal slices along its first dimension (a fused projection).
struct Piece<'a> {
    ggml: String,
    ct2: String,
    part: Option<(usize, usize)>,
    model: &'a Model<'a>,
}

impl Piece<'_> {
    /// The PyTorch shape and the bytes (in the variable's dtype).
    fn resolve(&self) -> Result<(Vec<usize>, DType, &[u8])> {
        let v = self.model.require(&self.ct2)?;
        let Some((index, parts)) = self.part else {
            return Ok((v.shape.to_vec(), v.dtype, v.data));
        };
        let rows = *v
            .shape
            .first()
            .with_context(|| format!("{}: a scalar", self.ct2))?;
        ensure!(
            rows % parts == 0,
            "{}: {rows} rows do not split into {parts} projections",
            self.ct2
        );
        let mut shape = v.shape.to_vec();
        shape[0] = rows / parts;
        let len = v.data.len() / parts;
        Ok((shape, v.dtype, &v.data[index * len..(index + 1) * len]))
    }
}

/// One ggml tensor and its source: (ggml name, CTranslate2 variable, fused part).
type Entry = (String, String, Option<(usize, usize)>);

/// A linear layer `ggml` from `ct2`, optionally part `index` of `parts` fused ones;
/// without a bias for key projections.
fn linear(out: &mut Vec<Entry>, ggml: &str, ct2: &str, part: Option<(usize, usize)>, bias: bool) {
    out.push((format!("{ggml}.weight"), format!("{ct2}/weight"), part));
    if bias {
        out.push((format!("{ggml}.bias"), format!("{ct2}/bias"), part));
    }
}

fn norm(out: &mut Vec<Entry>, ggml: &str, ct2: &str) {
    out.push((format!("{ggml}.weight"), format!("{ct2}/gamma"), None));
    out.push((format!("{ggml}.bias"), format!("{ct2}/beta"), None));
}

/// Self-attention: query, key and value fused in `linear_0`, the output in `linear_1`.
fn self_attention(out: &mut Vec<Entry>, g: &str, c: &str) {
    let qkv = format!("{c}/self_attention/linear_0");
    linear(out, &format!("{g}.attn.query"), &qkv, Some((0, 3)), true);
    linear(out, &format!("{g}.attn.key"), &qkv, Some((1, 3)), false);
    linear(out, &format!("{g}.attn.value"), &qkv, Some((2, 3)), true);
    let o = format!("{c}/self_attention/linear_1");
    linear(out, &format!("{g}.attn.out"), &o, None, true);
    norm(
        out,
        &format!("{g}.attn_ln"),
        &format!("{c}/self_attention/layer_norm"),
    );
}

/// Cross-attention: the query in `linear_0`, key and value fused in `linear_1`, the
/// output in `linear_2`.
fn cross_attention(out: &mut Vec<Entry>, g: &str, c: &str) {
    let (g, c) = (format!("{g}.cross_attn"), format!("{c}/attention"));
    linear(
        out,
        &format!("{g}.query"),
        &format!("{c}/linear_0"),
        None,
        true,
    );
    let kv = format!("{c}/linear_1");
    linear(out, &format!("{g}.key"), &kv, Some((0, 2)), false);
    linear(out, &format!("{g}.value"), &kv, Some((1, 2)), true);
    linear(
        out,
        &format!("{g}.out"),
        &format!("{c}/linear_2"),
        None,
        true,
    );
    norm(out, &format!("{g}_ln"), &format!("{c}/layer_norm"));
}

fn mlp(out: &mut Vec<Entry>, g: &str, c: &str) {
    linear(
        out,
        &format!("{g}.mlp.0"),
        &format!("{c}/ffn/linear_0"),
        None,
        true,
    );
    linear(
        out,
        &format!("{g}.mlp.2"),
        &format!("{c}/ffn/linear_1"),
        None,
        true,
    );
    norm(out, &format!("{g}.mlp_ln"), &format!("{c}/ffn/layer_norm"));
}

/// The ggml tensors in the order of Whisper's PyTorch state dict (a module's own
/// parameters and buffers before its children's), each with its source.
fn layout<'a>(model: &'a Model<'a>, dims: &Dims) -> Vec<Piece<'a>> {
    let mut out = Vec::new();
    out.push((
        "encoder.positional_embedding".into(),
        "encoder/position_encodings/encodings".into(),
        None,
    ));
    linear(&mut out, "encoder.conv1", "encoder/conv1", None, true);
    linear(&mut out, "encoder.conv2", "encoder/conv2", None, true);
    for i in 0..dims.n_audio_layer {
        let (g, c) = (format!("encoder.blocks.{i}"), format!("encoder/layer_{i}"));
        self_attention(&mut out, &g, &c);
        mlp(&mut out, &g, &c);
    }
    norm(&mut out, "encoder.ln_post", "encoder/layer_norm");
    out.push((
        "decoder.positional_embedding".into(),
        "decoder/position_encodings/encodings".into(),
        None,
    ));
    out.push((
        "decoder.token_embedding.weight".into(),
        "decoder/embeddings/weight".into(),
        None,
    ));
    for i in 0..dims.n_text_layer {
        let (g, c) = (format!("decoder.blocks.{i}"), format!("decoder/layer_{i}"));
        self_attention(&mut out, &g, &c);
        cross_attention(&mut out, &g, &c);
        mlp(&mut out, &g, &c);
    }
    norm(&mut out, "decoder.ln", "decoder/layer_norm");
    out.into_iter()
        .map(|(ggml, ct2, part)| Piece {
            ggml,
            ct2,
            part,
            model,
        })
        .collect()
}

/// The key projections' slices of fused biases must be zero: Whisper has no key bias,
/// and whisper.cpp has no tensor for one.
fn check_key_biases(model: &Model, dims: &Dims) -> Result<()> {
    let mut fused = Vec::new();
    for i in 0..dims.n_audio_layer {
        fused.push((
            format!("encoder/layer_{i}/self_attention/linear_0/bias"),
            1,
            3,
        ));
    }
    for i in 0..dims.n_text_layer {
        fused.push((
            format!("decoder/layer_{i}/self_attention/linear_0/bias"),
            1,
            3,
        ));
        fused.push((format!("decoder/layer_{i}/attention/linear_1/bias"), 0, 2));
    }
    for (name, index, parts) in fused {
        let piece = Piece {
            ggml: String::new(),
            ct2: name.clone(),
            part: Some((index, parts)),
            model,
        };
        let (_, dtype, data) = piece.resolve()?;
        let zero = match dtype {
            DType::F16 | DType::BF16 => data
                .chunks_exact(2)
                .all(|h| u16::from_le_bytes([h[0], h[1]]) & 0x7fff == 0),
            DType::F32 => data
                .chunks_exact(4)
                .all(|f| u32::from_le_bytes(f.try_into().unwrap()) & 0x7fff_ffff == 0),
            other => bail!("{name}: unexpected type {other:?}"),
        };
        ensure!(
            zero,
            "{name}: the key projection has a non-zero bias, which Whisper does not have"
        );
    }
    Ok(())
}

/// IEEE half → single precision (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, mut m) => {
            // Subnormal: normalize the mantissa.
            let mut e = 127 - 14;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The tensor's data as little-endian f32.
fn to_f32(name: &str, dtype: DType, data: &[u8]) -> Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => data.to_vec(),
        DType::F16 => data
            .chunks_exact(2)
            .flat_map(|h| f16_to_f32(u16::from_le_bytes([h[0], h[1]])).to_le_bytes())
            .collect(),
        DType::BF16 => data
            .chunks_exact(2)
            .flat_map(|h| (u32::from(u16::from_le_bytes([h[0], h[1]])) << 16).to_le_bytes())
            .collect(),
        other => bail!("{name}: {other:?} cannot be converted to f32"),
    })
}

/// The mel filter bank `mel_<n_mels>` from `mel_filters.npz`: (rows, columns, f32 LE data).
pub fn mel_filters(npz: &Path, n_mels: usize) -> Result<(usize, usize, Vec<u8>)> {
    let file = std::fs::File::open(npz).with_context(|| format!("opening {}", npz.display()))?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{}", npz.display()))?;
    let key = format!("mel_{n_mels}.npy");
    let mut entry = zip
        .by_name(&key)
        .with_context(|| format!("{}: no {key}", npz.display()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes)?;
    let (shape, data) = npy_f32(&bytes).with_context(|| format!("{}: {key}", npz.display()))?;
    let [rows, cols] = shape[..] else {
        bail!("{key}: a matrix was expected, the shape is {shape:?}");
    };
    ensure!(rows == n_mels, "{key} has {rows} rows");
    Ok((rows, cols, data.to_vec()))
}

/// A C-ordered little-endian f32 `.npy` array: its shape and data.
fn npy_f32(bytes: &[u8]) -> Result<(Vec<usize>, &[u8])> {
    ensure!(bytes.starts_with(b"\x93NUMPY"), "not an .npy file");
    let (header_len, start) = match bytes.get(6) {
        Some(1) => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        Some(2 | 3) => (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12),
        v => bail!("unknown .npy version {v:?}"),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .context("truncated .npy header")?,
    )?;
    let value = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}':"))
            .with_context(|| format!("no {key} in the .npy header"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    ensure!(
        value("descr")?.starts_with("'<f4'"),
        "the data is not little-endian f32: {header}"
    );
    ensure!(
        value("fortran_order")?.starts_with("False"),
        "the data is in Fortran order"
    );
    let shape = value("shape")?;
    let shape = &shape[1..shape.find(')').context("bad shape")?];
    let shape: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("bad shape")?;
    let data = &bytes[start + header_len..];
    ensure!(
        data.len() == shape.iter().product::<usize>() * 4,
        "{} data bytes for shape {shape:?}",
        data.len()
    );
    Ok((shape, data))
}

/// Standard base64 as tiktoken files hold it: padding optional, trailing bits ignored.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// One token's bytes. Whisper's `multilingual.tiktoken` has a line `= 50256`: a lone
/// padding character, the empty token (whisper.cpp's converter reads it as such).
fn token_bytes(text: &str) -> Option<Vec<u8>> {
    B64.decode(text.trim_end_matches('=')).ok()
}

/// A tiktoken file (`<base64 token> <rank>` per line), as tokens in rank order.
pub fn tiktoken(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.is_empty()).enumerate() {
        let parsed = line
            .split_once(' ')
            .and_then(|(t, r)| Some((token_bytes(t)?, r.parse::<usize>().ok()?)));
        match parsed {
            Some((token, rank)) if rank == i => tokens.push(token),
            _ => bail!(
                "{} line {}: not `<base64> {i}`: {line}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(tokens)
}

/// The vocabulary whisper.cpp expects for a model with `n_vocab` tokens.
fn vocabulary(assets: &Path, n_vocab: usize) -> Result<Vec<Vec<u8>>> {
    if n_vocab >= MULTILINGUAL_VOCAB {
        tiktoken(&assets.join("multilingual.tiktoken"))
    } else {
        let mut tokens = tiktoken(&assets.join("gpt2.tiktoken"))?;
        tokens.push(ENGLISH_END_OF_TEXT.to_vec());
        Ok(tokens)
    }
}

fn write_i32s(out: &mut impl Write, values: &[i32]) -> std::io::Result<()> {
    for v in values {
        out.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

/// Converts the CTranslate2 model `model_bin` with openai-whisper's `assets` directory
/// (`mel_filters.npz`, `gpt2.tiktoken`, `multilingual.tiktoken`) into `out`.
pub fn convert(model_bin: &[u8], assets: &Path, out: &mut impl Write) -> Result<Summary> {
    let model = Model::parse(model_bin).context("reading the CTranslate2 model")?;
    ensure!(
        model.spec == "WhisperSpec",
        "the CTranslate2 model is a {}, not a WhisperSpec",
        model.spec
    );
    ensure!(
        model.revision == 3,
        "WhisperSpec revision {}; this converter reads revision 3",
        model.revision
    );
    let dims = Dims::read(&model)?;
    check_key_biases(&model, &dims)?;
    let (mel_rows, mel_cols, mel) = mel_filters(&assets.join("mel_filters.npz"), dims.n_mels)?;
    let tokens = vocabulary(assets, dims.n_vocab)?;
    ensure!(
        tokens.len() <= dims.n_vocab,
        "{} tokens in the vocabulary, but the model has {} embeddings",
        tokens.len(),
        dims.n_vocab
    );

    let mut written = 0u64;
    let mut out = CountingWriter {
        inner: out,
        count: &mut written,
    };
    let hparams = dims.hparams();
    out.write_all(&MAGIC.to_le_bytes())?;
    write_i32s(&mut out, &hparams)?;
    write_i32s(&mut out, &[mel_rows as i32, mel_cols as i32])?;
    out.write_all(&mel)?;
    write_i32s(&mut out, &[tokens.len() as i32])?;
    for t in &tokens {
        write_i32s(&mut out, &[t.len() as i32])?;
        out.write_all(t)?;
    }

    let pieces = layout(&model, &dims);
    for piece in &pieces {
        let name = &piece.ggml;
        let (shape, dtype, data) = piece.resolve().with_context(|| format!("tensor {name}"))?;
        // convert-pt-to-ggml.py: squeeze, conv biases as [n, 1], then 1-D tensors, conv
        // biases and positional embeddings in f32, everything else f16.
        let mut shape: Vec<usize> = shape.into_iter().filter(|d| *d != 1).collect();
        let conv_bias = name == "encoder.conv1.bias" || name == "encoder.conv2.bias";
        if conv_bias {
            shape.push(1);
        }
        let f32_out = shape.len() < 2 || conv_bias || name.ends_with("positional_embedding");
        let bytes;
        let data = if f32_out {
            bytes = to_f32(name, dtype, data)?;
            &bytes[..]
        } else {
            ensure!(
                dtype == DType::F16,
                "tensor {name} ({}) is {dtype:?}; only float16 CTranslate2 models are supported",
                piece.ct2
            );
            data
        };
        write_i32s(
            &mut out,
            &[shape.len() as i32, name.len() as i32, i32::from(!f32_out)],
        )?;
        for d in shape.iter().rev() {
            write_i32s(&mut out, &[*d as i32])?;
        }
        out.write_all(name.as_bytes())?;
        out.write_all(data)?;
    }
    out.flush()?;
    Ok(Summary {
        hparams,
        tokens: tokens.len(),
        tensors: pieces.len(),
        bytes: written,
    })
}

struct CountingWriter<'a, W> {
    inner: W,
    count: &'a mut u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::ctranslate2::tests::write;

    const S: usize = 4; // model width
    const VOCAB: usize = 8;

    /// f16 values 0, 1, 2, … (exact small integers) for `n` elements, offset by `base`.
    fn halves(n: usize, base: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let v = (base + i) as f32;
                // Small integers are exact in f16: exponent and mantissa by hand.
                let bits: u16 = if v == 0.0 {
                    0
                } else {
                    let e = v.log2().floor() as u16;
                    let m = ((v / f32::powi(2.0, e.into()) - 1.0) * 1024.0) as u16;
                    ((e + 15) << 10) | m
                };
                bits.to_le_bytes()
            })
            .collect()
    }

    fn tiny_model(key_bias: u8) -> Vec<u8> {
        let mut vars: Vec<(String, Vec<usize>, DType, Vec<u8>)> = Vec::new();
        let mut v = |name: &str, shape: &[usize], data: Vec<u8>| {
            vars.push((name.to_string(), shape.to_vec(), DType::F16, data))
        };
        let n = |shape: &[usize]| shape.iter().product::<usize>();
        v("encoder/conv1/weight", &[S, 2, 3], halves(S * 6, 1));
        v("encoder/conv1/bias", &[S], halves(S, 1));
        v("encoder/conv2/weight", &[S, S, 3], halves(S * S * 3, 1));
        v("encoder/conv2/bias", &[S], halves(S, 1));
        v(
            "encoder/position_encodings/encodings",
            &[6, S],
            halves(6 * S, 0),
        );
        v(
            "decoder/position_encodings/encodings",
            &[5, S],
            halves(5 * S, 0),
        );
        v(
            "decoder/embeddings/weight",
            &[VOCAB, S],
            halves(VOCAB * S, 0),
        );
        for p in ["encoder", "decoder"] {
            v(&format!("{p}/layer_norm/gamma"), &[S], halves(S, 1));
            v(&format!("{p}/layer_norm/beta"), &[S], halves(S, 0));
            let l = format!("{p}/layer_0");
            let mut qkv_bias = halves(3 * S, 1);
            qkv_bias[2 * S..4 * S].fill(key_bias); // the key's slice
            v(
                &format!("{l}/self_attention/linear_0/weight"),
                &[3 * S, S],
                halves(3 * S * S, 0),
            );
            v(
                &format!("{l}/self_attention/linear_0/bias"),
                &[3 * S],
                qkv_bias,
            );
            for (name, shape) in [
                ("self_attention/linear_1", [S, S]),
                ("ffn/linear_0", [4 * S, S]),
                ("ffn/linear_1", [S, 4 * S]),
            ] {
                v(&format!("{l}/{name}/weight"), &shape, halves(n(&shape), 0));
                v(
                    &format!("{l}/{name}/bias"),
                    &shape[..1],
                    halves(shape[0], 0),
                );
            }
            for norm in ["self_attention", "ffn"] {
                v(&format!("{l}/{norm}/layer_norm/gamma"), &[S], halves(S, 1));
                v(&format!("{l}/{norm}/layer_norm/beta"), &[S], halves(S, 0));
            }
            if p == "decoder" {
                let mut kv_bias = halves(2 * S, 1);
                kv_bias[..2 * S].fill(0);
                for (name, rows) in [("linear_0", S), ("linear_2", S)] {
                    v(
                        &format!("{l}/attention/{name}/weight"),
                        &[rows, S],
                        halves(rows * S, 0),
                    );
                    v(
                        &format!("{l}/attention/{name}/bias"),
                        &[rows],
                        halves(rows, 0),
                    );
                }
                v(
                    &format!("{l}/attention/linear_1/weight"),
                    &[2 * S, S],
                    halves(2 * S * S, 0),
                );
                v(&format!("{l}/attention/linear_1/bias"), &[2 * S], kv_bias);
                v(
                    &format!("{l}/attention/layer_norm/gamma"),
                    &[S],
                    halves(S, 1),
                );
                v(
                    &format!("{l}/attention/layer_norm/beta"),
                    &[S],
                    halves(S, 0),
                );
            }
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut all: Vec<(&str, &[usize], DType, Vec<u8>)> = vars
            .iter()
            .map(|(n, s, d, b)| (n.as_str(), s.as_slice(), *d, b.clone()))
            .collect();
        let two = 2i16.to_le_bytes().to_vec();
        all.push(("encoder/num_heads", &[], DType::I16, two.clone()));
        all.push(("decoder/num_heads", &[], DType::I16, two));
        write(
            &all,
            &[("decoder/projection/weight", "decoder/embeddings/weight")],
        )
    }

    fn assets(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n";
        npy.extend((header.len() as u16).to_le_bytes());
        npy.extend(header.as_bytes());
        for i in 0..6 {
            npy.extend((i as f32 * 0.5).to_le_bytes());
        }
        let mut zip =
            zip::ZipWriter::new(std::fs::File::create(dir.join("mel_filters.npz")).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("mel_2.npy", options).unwrap();
        std::io::Write::write_all(&mut zip, &npy).unwrap();
        zip.finish().unwrap();
        // "!", "hi", " the"
        std::fs::write(dir.join("gpt2.tiktoken"), "IQ== 0\naGk= 1\nIHRoZQ== 2\n").unwrap();
    }

    struct Tensor {
        ftype: i32,
        dims: Vec<i32>,
        data: Vec<u8>,
    }

    /// Hyper-parameters, tokens and named tensors of a ggml file.
    type Parsed = (Vec<i32>, Vec<Vec<u8>>, Vec<(String, Tensor)>);

    fn read_ggml(bytes: &[u8]) -> Parsed {
        let mut pos = 0;
        let i32_at = |pos: &mut usize| {
            let v = i32::from_le_bytes(bytes[*pos..*pos + 4].try_into().unwrap());
            *pos += 4;
            v
        };
        assert_eq!(i32_at(&mut pos) as u32, MAGIC);
        let hparams: Vec<i32> = (0..11).map(|_| i32_at(&mut pos)).collect();
        let (rows, cols) = (i32_at(&mut pos), i32_at(&mut pos));
        pos += (rows * cols * 4) as usize;
        let mut tokens = Vec::new();
        for _ in 0..i32_at(&mut pos) {
            let len = i32_at(&mut pos) as usize;
            tokens.push(bytes[pos..pos + len].to_vec());
            pos += len;
        }
        let mut tensors = Vec::new();
        while pos < bytes.len() {
            let (n_dims, len, ftype) = (i32_at(&mut pos), i32_at(&mut pos), i32_at(&mut pos));
            let dims: Vec<i32> = (0..n_dims).map(|_| i32_at(&mut pos)).collect();
            let name = String::from_utf8(bytes[pos..pos + len as usize].to_vec()).unwrap();
            pos += len as usize;
            let size = dims.iter().product::<i32>() as usize * if ftype == 0 { 4 } else { 2 };
            let data = bytes[pos..pos + size].to_vec();
            pos += size;
            tensors.push((name, Tensor { ftype, dims, data }));
        }
        (hparams, tokens, tensors)
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("llamabox-whisper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn converts_a_small_model_like_convert_pt_to_ggml() {
        let dir = temp_dir("ok");
        assets(&dir);
        let mut out = Vec::new();
        let summary = convert(&tiny_model(0), &dir, &mut out).unwrap();
        assert_eq!(summary.bytes, out.len() as u64);
        let (hparams, tokens, tensors) = read_ggml(&out);
        assert_eq!(hparams, [VOCAB as i32, 6, 4, 2, 1, 5, 4, 2, 1, 2, 1]);
        assert_eq!(tokens, [&b"!"[..], b"hi", b" the", b"<|endoftext|>"]);
        assert_eq!(tensors.len(), summary.tensors);
        assert_eq!(tensors[0].0, "encoder.positional_embedding");
        let get = |name: &str| &tensors.iter().find(|(n, _)| n == name).unwrap().1;

        // Fused q/k/v split by rows; no key biases; weights stay f16.
        let qkv = halves(3 * S * S, 0);
        let row_bytes = S * S * 2;
        for (i, part) in ["query", "key", "value"].iter().enumerate() {
            let t = get(&format!("decoder.blocks.0.attn.{part}.weight"));
            assert_eq!((t.ftype, &t.dims[..]), (1, &[S as i32, S as i32][..]));
            assert_eq!(t.data, qkv[i * row_bytes..(i + 1) * row_bytes]);
        }
        assert!(!tensors.iter().any(|(n, _)| n.ends_with("key.bias")));
        let value_bias = get("encoder.blocks.0.attn.value.bias");
        let expect: Vec<u8> = (0..S)
            .flat_map(|i| ((2 * S + 1 + i) as f32).to_le_bytes())
            .collect();
        assert_eq!((value_bias.ftype, &value_bias.data), (0, &expect));
        let cross_value = get("decoder.blocks.0.cross_attn.value.weight");
        assert_eq!(cross_value.data, halves(2 * S * S, 0)[row_bytes..]);

        // Conv biases as [n, 1] (written innermost first) and positional embeddings: f32.
        let bias = get("encoder.conv1.bias");
        assert_eq!((bias.ftype, &bias.dims[..]), (0, &[1, S as i32][..]));
        let pe = get("decoder.positional_embedding");
        assert_eq!((pe.ftype, &pe.dims[..]), (0, &[S as i32, 5][..]));
        assert_eq!(pe.data[4..8], 1.0f32.to_le_bytes());
        let conv = get("encoder.conv1.weight");
        assert_eq!((conv.ftype, &conv.dims[..]), (1, &[3, 2, S as i32][..]));
        let ln = get("decoder.ln.weight");
        assert_eq!((ln.ftype, &ln.dims[..]), (0, &[S as i32][..]));

        // Same input, same bytes.
        let mut again = Vec::new();
        convert(&tiny_model(0), &dir, &mut again).unwrap();
        assert_eq!(out, again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_bias_is_refused() {
        let dir = temp_dir("bias");
        assets(&dir);
        let err = convert(&tiny_model(0x3c), &dir, &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("non-zero bias"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0400), f32::powi(2.0, -14));
        assert_eq!(f16_to_f32(0x0001), f32::powi(2.0, -24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * f32::powi(2.0, -24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn base64_and_tiktoken() {
        assert_eq!(token_bytes("IHRoZQ==").unwrap(), b" the");
        assert_eq!(token_bytes("IHRoZQ").unwrap(), b" the");
        assert_eq!(token_bytes("YWJj").unwrap(), b"abc");
        assert_eq!(token_bytes("=").unwrap(), b"");
        assert!(token_bytes("a b").is_none());
        let dir = temp_dir("tiktoken");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ok"), "IQ== 0\n= 1\naGk 2\n").unwrap();
        let tokens = tiktoken(&dir.join("ok")).unwrap();
        assert_eq!(tokens, [b"!".to_vec(), Vec::new(), b"hi".to_vec()]);
        std::fs::write(dir.join("t"), "IQ== 0\naGk= 2\n").unwrap();
        let err = tiktoken(&dir.join("t")).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
