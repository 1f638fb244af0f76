//! A transcription upload: OpenAI's `multipart/form-data` body of
//! `POST /v1/audio/transcriptions`, read and checked field by field. Apart from the voice
//! service's HTTP code so that the whole path from untrusted bytes to samples is fuzzed
//! (`fuzz/fuzz_targets/transcription_upload.rs`) without building Whisper.

use crate::decode_wav;

/// The form's fields as sent.
#[derive(Debug, Default)]
pub struct Upload {
    pub file: Option<Vec<u8>>,
    pub model: Option<String>,
    pub language: Option<String>,
    pub prompt: Option<String>,
    pub response_format: Option<String>,
    pub temperature: Option<String>,
}

/// What the transcription needs, checked.
#[derive(Debug)]
pub struct Transcription {
    pub samples: Vec<f32>,
    pub rate: u32,
    pub format: Format,
    pub temperature: Option<f32>,
    pub language: Option<String>,
    pub prompt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
    VerboseJson,
}

/// A refusal naming the field (OpenAI's `param`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadError {
    pub param: Option<&'static str>,
    pub message: String,
}

impl UploadError {
    fn field(param: &'static str, message: impl Into<String>) -> UploadError {
        UploadError {
            param: Some(param),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UploadError {}

/// Reads the form from a whole body (the caller bounds its size) and its `Content-Type`.
pub fn read_multipart(content_type: &str, body: &[u8]) -> Result<Upload, UploadError> {
    let malformed = |e: multer::Error| UploadError {
        param: None,
        message: format!("the multipart body is malformed: {e}"),
    };
    let boundary = multer::parse_boundary(content_type).map_err(|e| UploadError {
        param: None,
        message: format!("the body must be multipart/form-data with a boundary: {e}"),
    })?;
    let chunk = bytes::Bytes::copy_from_slice(body);
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(chunk) });
    let mut form = multer::Multipart::new(stream, boundary);
    futures_executor::block_on(async {
        let mut upload = Upload::default();
        while let Some(field) = form.next_field().await.map_err(malformed)? {
            let name = field.name().unwrap_or_default().to_string();
            match name.as_str() {
                "file" => upload.file = Some(field.bytes().await.map_err(malformed)?.to_vec()),
                "model" | "language" | "prompt" | "response_format" | "temperature" => {
                    let value = field.text().await.map_err(malformed)?;
                    let slot = match name.as_str() {
                        "model" => &mut upload.model,
                        "language" => &mut upload.language,
                        "prompt" => &mut upload.prompt,
                        "response_format" => &mut upload.response_format,
                        _ => &mut upload.temperature,
                    };
                    *slot = Some(value);
                }
                // Accepted and ignored, as optional OpenAI fields we do not support yet
                // change nothing about the text.
                "timestamp_granularities[]" | "stream" | "chunking_strategy" | "include[]" => {}
                other => {
                    return Err(UploadError::field(
                        "file",
                        format!("unknown form field `{other}`"),
                    ))
                }
            }
        }
        Ok(upload)
    })
}

impl Upload {
    /// Checks every field but the model (the service knows its name) and decodes the file.
    pub fn check(self) -> Result<Transcription, UploadError> {
        let format = match self.response_format.as_deref().unwrap_or("json") {
            "json" => Format::Json,
            "text" => Format::Text,
            "verbose_json" => Format::VerboseJson,
            other => {
                return Err(UploadError::field(
                    "response_format",
                    format!("`{other}` is not supported: use json, text or verbose_json"),
                ))
            }
        };
        let temperature = match self.temperature.as_deref() {
            None => None,
            Some(t) => match t.parse::<f32>() {
                Ok(t) if (0.0..=1.0).contains(&t) => Some(t),
                _ => {
                    return Err(UploadError::field(
                        "temperature",
                        format!("`{t}` is not a temperature between 0 and 1"),
                    ))
                }
            },
        };
        let file = self
            .file
            .ok_or_else(|| UploadError::field("file", "`file` is required"))?;
        let (samples, rate) = decode_wav(&file[..]).map_err(|e| {
            UploadError::field(
                "file",
                format!("the file is not audio this box reads ({e:#}); send WAV (PCM or float)"),
            )
        })?;
        Ok(Transcription {
            samples,
            rate,
            format,
            temperature,
            language: self.language.filter(|l| !l.is_empty()),
            prompt: self.prompt.filter(|p| !p.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, value) in parts {
            body.extend_from_slice(
                format!("--X\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(value);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--X--\r\n");
        body
    }

    fn wav() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..1600 {
            writer.write_sample((i % 100) as i16).unwrap();
        }
        writer.finalize().unwrap();
        out.into_inner()
    }

    const TYPE: &str = "multipart/form-data; boundary=X";

    #[test]
    fn a_form_is_read_and_checked() {
        let body = form(&[
            ("model", b"whisper-1"),
            ("temperature", b"0.2"),
            ("file", &wav()),
        ]);
        let upload = read_multipart(TYPE, &body).unwrap();
        assert_eq!(upload.model.as_deref(), Some("whisper-1"));
        let t = upload.check().unwrap();
        assert_eq!(
            (t.rate, t.samples.len(), t.format),
            (16_000, 1600, Format::Json)
        );
        assert_eq!(t.temperature, Some(0.2));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let refused = |parts: &[(&str, &[u8])]| {
            read_multipart(TYPE, &form(parts))
                .and_then(Upload::check)
                .unwrap_err()
        };
        assert_eq!(
            refused(&[("nope", b"1")]).message,
            "unknown form field `nope`"
        );
        assert_eq!(refused(&[("model", b"m")]).param, Some("file"));
        assert_eq!(
            refused(&[("file", &wav()), ("response_format", b"srt")]).param,
            Some("response_format")
        );
        assert_eq!(
            refused(&[("file", &wav()), ("temperature", b"3")]).param,
            Some("temperature")
        );
        assert!(refused(&[("file", b"ID3 not audio")])
            .message
            .contains("send WAV"));
        let e = read_multipart("application/json", b"{}").unwrap_err();
        assert!(e.message.contains("multipart/form-data"), "{e}");
        let e = read_multipart(TYPE, b"--X\r\nno headers").unwrap_err();
        assert!(e.message.contains("malformed"), "{e}");
    }
}
