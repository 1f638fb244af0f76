//! The models the service can run, and the one it runs now (docs/models.md).
//!
//! The **factory model** (`--model`, in the signed root filesystem) and every LLM the
//! update service has pulled into the model store (`--models-dir`, read-only here) can
//! be named in a request. One model is resident at a time: a request for another waits
//! until the resident model's requests have finished, then the service frees it and
//! loads the one asked for. A request that cannot get its model within
//! [`SWITCH_WAIT`] is answered 503 with `Retry-After` — the only 5xx switching gives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use llamabox_format::update::models::store;
pub use llamabox_format::update::models::store::Installed;
use llamabox_format::update::models::ModelKind;

use crate::api::ApiError;
use crate::engine::{Engine, EngineConfig, ModelCard, SamplingParams};
use crate::metrics::Metrics;

/// How long a request waits for the resident model's requests to finish before a
/// switch, and for the new model to load.
pub const SWITCH_WAIT: Duration = Duration::from_secs(120);

/// A model the service can run.
#[derive(Debug, Clone)]
pub enum Model {
    /// The model in the root filesystem: always there, never deleted.
    Factory,
    /// Pulled into the model store as a signed update.
    Pulled(Box<Installed>),
}

pub struct Models {
    /// The factory model's settings; a pulled model's are these with its file, name and
    /// template.
    factory: EngineConfig,
    store: Option<PathBuf>,
    resident: Mutex<Arc<Engine>>,
    /// One switch at a time.
    switching: tokio::sync::Mutex<()>,
    /// What was learnt about each model at its first load (what lists report).
    cards: Mutex<HashMap<String, Arc<ModelCard>>>,
    pub metrics: Arc<Metrics>,
}

/// Ollama's names: case does not matter, and `x` is `x:latest`.
pub fn same_name(a: &str, b: &str) -> bool {
    let base = |n: &str| n.strip_suffix(":latest").unwrap_or(n).to_ascii_lowercase();
    base(a) == base(b)
}

impl Models {
    pub fn new(
        factory: EngineConfig,
        store: Option<PathBuf>,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
    ) -> Models {
        Models {
            factory,
            store,
            resident: Mutex::new(engine),
            switching: tokio::sync::Mutex::new(()),
            cards: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The engine of the model loaded now (or last).
    pub fn resident(&self) -> Arc<Engine> {
        self.resident
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The LLMs in the model store.
    pub fn pulled(&self) -> Vec<Installed> {
        let Some(root) = &self.store else {
            return Vec::new();
        };
        store::installed(root)
            .unwrap_or_else(|e| {
                tracing::warn!("cannot read the model store {}: {e}", root.display());
                Vec::new()
            })
            .into_iter()
            .filter(|m| m.entry.kind == ModelKind::Llm)
            .collect()
    }

    /// The pulled model set to load at start (the update service's `SetDefaultModel`),
    /// if it is installed; None: the factory model.
    pub fn default_model(&self) -> Option<String> {
        let name = store::read_default(self.store.as_ref()?)?;
        self.pulled()
            .iter()
            .any(|m| m.entry.name == name)
            .then_some(name)
    }

    /// Makes the default model resident, once the factory model has loaded (so the
    /// box answers meanwhile, and keeps answering if the default cannot load).
    pub async fn load_default(&self) {
        let Some(name) = self.default_model() else {
            return;
        };
        if let Err(e) = self.resident().first_load().await {
            tracing::error!("{e}");
            return;
        }
        match self.engine_for(Some(&name)).await {
            Ok(_) => tracing::info!(model = %name, "the default model is resident"),
            Err(e) => tracing::error!(model = %name, "the default model: {}", e.message),
        }
    }

    /// The card of `id` from its first load, if it has been loaded.
    pub fn card(&self, id: &str) -> Option<Arc<ModelCard>> {
        if let Some(card) = self.resident().card().filter(|c| c.id == id) {
            return Some(card.clone());
        }
        self.cards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The factory model's card (known once it has loaded the first time).
    pub fn factory_card(&self) -> Option<Arc<ModelCard>> {
        self.card(&self.factory.model_id)
    }

    /// The model `name` names, by its id or Ollama name.
    pub fn find(&self, name: &str) -> Option<(String, Model)> {
        if name == self.factory.model_id || same_name(name, &self.factory.model_id) {
            return Some((self.factory.model_id.clone(), Model::Factory));
        }
        self.pulled()
            .into_iter()
            .find(|m| m.entry.name == name || same_name(name, &m.entry.name))
            .map(|m| (m.entry.name.clone(), Model::Pulled(Box::new(m))))
    }

    /// Every model's id, for messages.
    pub fn names(&self) -> String {
        let mut names = vec![format!("`{}`", self.factory.model_id)];
        names.extend(
            self.pulled()
                .into_iter()
                .map(|m| format!("`{}`", m.entry.name)),
        );
        names.join(", ")
    }

    /// The engine for the model a request names (none: the resident one), switching to
    /// it first if it is not resident.
    pub async fn engine_for(&self, requested: Option<&str>) -> Result<Arc<Engine>, ApiError> {
        let resident = self.resident();
        let name = match requested.map(str::trim) {
            None | Some("") => return Ok(resident),
            Some(n) => n,
        };
        if name == resident.id() || same_name(name, resident.id()) {
            return Ok(resident);
        }
        let Some((id, model)) = self.find(name) else {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                // Ollama's own wording, which its apps show as it is.
                message: format!("model '{name}' not found; this box has {}", self.names()),
                param: Some("model"),
                code: Some("model_not_found"),
            });
        };
        self.switch_to(id, model).await
    }

    async fn switch_to(&self, id: String, model: Model) -> Result<Arc<Engine>, ApiError> {
        let deadline = Instant::now() + SWITCH_WAIT;
        let _switching = tokio::time::timeout(SWITCH_WAIT, self.switching.lock())
            .await
            .map_err(|_| busy(&id))?;
        // Another request may have switched to it while this one waited.
        let resident = self.resident();
        if resident.id() == id {
            return Ok(resident);
        }
        // The resident model finishes what it is doing first.
        while resident.in_flight() > 0 {
            if Instant::now() > deadline {
                return Err(busy(&id));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(card) = resident.card() {
            self.cards
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(card.id.clone(), card.clone());
        }
        let config = self.config_for(&model);
        tracing::info!(from = resident.id(), to = %id, "switching models");
        // Freed before the next is loaded: one resident model (the engine thread ends
        // once the last request holding it is done).
        let previous = resident.id().to_string();
        *self.resident.lock().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Engine::start(config, self.metrics.clone(), || {}));
        drop(resident);
        let engine = self.resident();
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, engine.first_load()).await {
            Ok(Ok(())) => {
                tracing::info!(model = %id, "loaded");
                Ok(engine)
            }
            Ok(Err(reason)) => {
                // Back to the model that was there, so the box keeps answering.
                tracing::error!(model = %id, "cannot load: {reason}; back to {previous}");
                if let Some((_, prev)) = self.find(&previous) {
                    let config = self.config_for(&prev);
                    *self.resident.lock().unwrap_or_else(|e| e.into_inner()) =
                        Arc::new(Engine::start(config, self.metrics.clone(), || {}));
                }
                Err(ApiError::status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the model `{id}` could not be loaded: {reason}"),
                ))
            }
            Err(_) => Err(busy(&id)),
        }
    }

    /// The engine settings of `model`: the factory model's, with a pulled model's file,
    /// name, template and default options. A load failure never ends the process here.
    fn config_for(&self, model: &Model) -> EngineConfig {
        let base = EngineConfig {
            exit_on_load_failure: false,
            ..self.factory.clone()
        };
        match model {
            Model::Factory => base,
            Model::Pulled(m) => EngineConfig {
                model_path: m.path.clone(),
                model_id: m.entry.name.clone(),
                chat_template: m.entry.template.clone(),
                sampling_defaults: sampling_defaults(&m.entry.options),
                // The factory model's overrides are about its file, not this one.
                kv_overrides: Vec::new(),
                ..base
            },
        }
    }

    /// When a pulled model was installed; the factory model's file time.
    pub fn modified(&self, model: &Model) -> SystemTime {
        match model {
            Model::Factory => std::fs::metadata(&self.factory.model_path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH),
            Model::Pulled(m) => m.modified,
        }
    }
}

/// A catalog entry's default options (Ollama's names) over the service's defaults;
/// what a request gives still wins. Unknown or non-numeric options are ignored, as
/// Ollama ignores options it does not have.
fn sampling_defaults(
    options: &std::collections::BTreeMap<String, serde_json::Value>,
) -> SamplingParams {
    let mut s = SamplingParams::default();
    for (key, value) in options {
        let Some(v) = value.as_f64() else { continue };
        match key.as_str() {
            "temperature" => s.temperature = v as f32,
            "top_k" => s.top_k = v as i32,
            "top_p" => s.top_p = v as f32,
            "min_p" => s.min_p = v as f32,
            "repeat_penalty" => s.repeat_penalty = v as f32,
            "presence_penalty" => s.presence_penalty = v as f32,
            "frequency_penalty" => s.frequency_penalty = v as f32,
            "repeat_last_n" => s.penalty_last_n = v as i32,
            _ => {}
        }
    }
    s
}

fn busy(id: &str) -> ApiError {
    ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the box is busy with another model; `{id}` is loaded once it is done: retry shortly"
        ),
    )
    .with_code("model_switching")
}
