//! The control plane: `org.llamabox.Voice1` on the system bus at `/org/llamabox/Voice1`.
//!
//! Methods: `Status() → s` (JSON), `SetListening(b)` (mute or unmute the microphone).
//! Signals: `SpeechStarted(t utterance)`, `Transcript(t utterance, s text, s language)`,
//! `AnswerDone(t utterance, s text)`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api::{status_json, Api};
use crate::events::Event;

pub use llamabox_device::bus::SYSTEM_BUS;
use llamabox_device::bus::VOICE;
const BUS_NAME: &str = VOICE.name;
const OBJECT_PATH: &str = VOICE.path;

struct Interface {
    api: Api,
}

#[zbus::interface(name = "org.llamabox.Voice1")]
impl Interface {
    /// The service's state as JSON: model, source, listening, utterances, last transcript.
    fn status(&self) -> String {
        status_json(&self.api).to_string()
    }

    /// Mutes (`false`) or unmutes (`true`) the microphone.
    fn set_listening(&self, listening: bool) {
        self.api.listening.store(listening, Ordering::Relaxed);
    }
}

/// Serves the interface and forwards events as signals, from a thread of its own.
/// Waits for the bus to accept the name (it may start after this service).
pub fn serve(address: &str, api: Api) -> Result<()> {
    let connection = loop {
        let built = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.name(BUS_NAME))
            .and_then(|b| b.serve_at(OBJECT_PATH, Interface { api: api.clone() }))
            .and_then(|b| b.build());
        match built {
            Ok(c) => break c,
            Err(e) => {
                eprintln!("cannot serve {BUS_NAME} on {address} yet: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let mut events = api.events.subscribe();
    std::thread::Builder::new()
        .name("bus-signals".into())
        .spawn(move || loop {
            let event = match events.blocking_recv() {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let sent = match &event {
                Event::SpeechStarted { utterance, .. } => {
                    emit(&connection, "SpeechStarted", &(*utterance,))
                }
                Event::Transcript {
                    utterance,
                    text,
                    language,
                    ..
                } => emit(&connection, "Transcript", &(*utterance, text, language)),
                Event::AnswerDone { utterance, text } => {
                    emit(&connection, "AnswerDone", &(*utterance, text))
                }
                _ => Ok(()),
            };
            if let Err(e) = sent {
                eprintln!("cannot send a D-Bus signal: {e}");
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn emit<B>(connection: &zbus::blocking::Connection, name: &str, body: &B) -> zbus::Result<()>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    connection.emit_signal(None::<&str>, OBJECT_PATH, BUS_NAME, name, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::object_server::Interface as _;

    #[test]
    fn the_interface_is_the_contracts() {
        // zbus's attribute takes a literal; the contract's name must be the same.
        assert_eq!(Interface::name().as_str(), VOICE.name);
    }
}
