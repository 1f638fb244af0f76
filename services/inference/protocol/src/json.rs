//! Reading a request body as JSON, with errors that say what is wrong and where.

use serde::de::DeserializeOwned;

use crate::ApiError;

/// Parses a JSON body; a failure is a 400 with serde's description and the path to the
/// field at fault (`messages[2].role`).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let what = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("the request body is not valid: {what}"))
        } else {
            ApiError::bad_request(format!("the request body is not valid: `{path}`: {what}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    Ok(value)
}
