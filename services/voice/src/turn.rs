//! Whether a draft transcript reads as the end of a turn. The end-pointer waits for a
//! fixed silence only when it cannot tell: after a finished sentence it ends the turn
//! sooner, after a trailing "and", "for" or "um" it waits longer, so a speaker who pauses
//! to think is not cut off and one who is done is not kept waiting.

/// How a draft transcript reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A finished sentence ("…before dinner tonight."): a short silence ends the turn.
    Complete,
    /// Trails off ("Set a timer for", "…and", "um", "…,"): the speaker is likely to go on.
    Unfinished,
    /// Neither (no text, or a language these rules do not know): the usual silence decides.
    Unsure,
}

/// English words a sentence does not end on: conjunctions, articles, possessives and
/// fillers. Whisper puts a full stop after "Set a timer for" as readily as after
/// "…tonight", so punctuation alone cannot tell.
const TRAILING_WORDS: &[&str] = &[
    // conjunctions
    "and", "or", "but", "so", "because", "if", "than", "that", "which", "whether", "although",
    "though", "unless", // articles, possessives, determiners
    "a", "an", "the", "my", "your", "his", "her", "its", "our", "their", "every", "each",
    // fillers
    "um", "uh", "uhm", "er", "erm", "hmm", "mm", "ah",
];

/// Prepositions that want an object and auxiliaries that want a verb. A question may end
/// on one ("What is it for?") and then waits longer than it needs to, but Whisper
/// punctuates a fragment as a question as readily ("What is the capital of?"). Particles
/// that end commands ("Turn the lights on.", "…off", "…up") are not here.
const DANGLING_WORDS: &[&str] = &[
    "about", "at", "by", "for", "from", "into", "of", "onto", "to", "with", "without", "between",
    "can", "could", "will", "would", "should", "must", "i", "i'm", "let's",
];

/// Reads a draft transcript in `language` (Whisper's code, e.g. "en").
pub fn read(text: &str, language: &str) -> Reading {
    let text = text.trim();
    if text.is_empty() {
        return Reading::Unsure;
    }
    // Trailing off is punctuation in any language.
    if text.ends_with("...") || text.ends_with('…') || text.ends_with(',') || text.ends_with('-')
    {
        return Reading::Unfinished;
    }
    if !language.starts_with("en") {
        return Reading::Unsure;
    }
    let last_word = text
        .split_whitespace()
        .next_back()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
                .to_lowercase()
        })
        .unwrap_or_default();
    if TRAILING_WORDS.contains(&last_word.as_str()) || DANGLING_WORDS.contains(&last_word.as_str())
    {
        return Reading::Unfinished;
    }
    if text.ends_with(['.', '?', '!']) {
        Reading::Complete
    } else {
        Reading::Unsure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_command_reads_complete() {
        for text in [
            "Set a timer for the pasta and remind me to water the plants in the garden before dinner tonight.",
            " What's the weather like?",
            "Turn it off!",
            "Turn the lights on.",
        ] {
            assert_eq!(read(text, "en"), Reading::Complete, "{text}");
        }
    }

    #[test]
    fn trailing_words_and_punctuation_read_unfinished() {
        for text in [
            "Set a timer for.",
            "Set a timer for",
            "Remind me to call my mother and.",
            "Um.",
            "Play something, uh...",
            "Play something,",
            "I'm looking for the…",
            "What is the capital of?",
        ] {
            assert_eq!(read(text, "en"), Reading::Unfinished, "{text}");
        }
    }

    #[test]
    fn no_text_no_stop_or_another_language_is_unsure() {
        assert_eq!(read("", "en"), Reading::Unsure);
        assert_eq!(read("Set a timer", "en"), Reading::Unsure);
        assert_eq!(read("Stell einen Timer für.", "de"), Reading::Unsure);
        // Trailing off reads the same in any language.
        assert_eq!(read("Stell einen Timer für...", "de"), Reading::Unfinished);
    }
}
