//! The conversations the benchmark sends. Generated, not random: every run sends the
//! same text. Requests that time the prompt start with their repetition's number, so
//! no server can answer one from an earlier request's cached prefix.

use super::client::{Message, Role};

/// Requests that make the model write at length, one per concurrent stream.
const STORIES: [&str; 4] = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle. Describe every day of the following month in detail.",
    "Write a long, detailed guide to growing tomatoes on a balcony, from choosing seeds to the harvest, with many practical tips.",
    "Write a long story about two friends who build a small boat and sail it along the coast, describing each town they visit.",
    "Explain in great detail how a bicycle works, part by part, and how to repair each part when it breaks.",
];

/// A short request to warm the server up before anything is timed.
pub fn warm_up() -> Vec<Message> {
    vec![Message::new(Role::User, "Say hello.")]
}

/// A request for long output, for decode speed (`stream` picks one of four).
pub fn story(stream: usize) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are a helpful assistant."),
        Message::new(Role::User, STORIES[stream % STORIES.len()]),
    ]
}

/// A long prompt (~870 tokens) that needs one token of answer, for prompt processing.
pub fn long_document(repetition: usize) -> Vec<Message> {
    let mut document = format!("{repetition}: inventory report.\n");
    const COLOURS: [&str; 5] = ["red", "green", "blue", "yellow", "white"];
    const THINGS: [&str; 6] = ["crates", "barrels", "sacks", "boxes", "bottles", "baskets"];
    const PLACES: [&str; 4] = ["the north hall", "the cellar", "the loft", "the yard"];
    for i in 0..31 {
        document.push_str(&format!(
            "Item {i}: {} {} {} stored in {}, checked by clerk {} on day {}.\n",
            (i * 7) % 13 + 2,
            COLOURS[i % COLOURS.len()],
            THINGS[i % THINGS.len()],
            PLACES[i % PLACES.len()],
            (i * 3) % 11 + 1,
            (i * 5) % 28 + 1,
        ));
    }
    vec![
        Message::new(Role::System, document),
        Message::new(
            Role::User,
            "Which place holds the most items? Answer with one word.",
        ),
    ]
}

/// The first turn of a conversation: a long-ish system prompt and a question.
pub fn conversation(repetition: usize) -> Vec<Message> {
    let mut system = format!(
        "{repetition}: you are Ada, a family's assistant. You run on a small computer in the \
         kitchen and you help the family with their everyday questions.\n"
    );
    const RULES: [&str; 12] = [
        "Answer briefly and clearly, in plain words.",
        "If you do not know something, say so instead of guessing.",
        "Never give medical advice; suggest seeing a doctor instead.",
        "When asked about cooking, give quantities in grams and millilitres.",
        "When asked about the weather, explain that you have no internet access.",
        "Be kind to the children and explain things in a way they understand.",
        "Keep shopping lists short and grouped by shop section.",
        "When asked for a story, keep it under three paragraphs.",
        "Remind the family of birthdays only when they ask about dates.",
        "Use the metric system for all measurements.",
        "Do not share one family member's messages with another.",
        "Offer to repeat or simplify an answer when it was long.",
    ];
    for round in 0..2 {
        for (i, rule) in RULES.iter().enumerate() {
            system.push_str(&format!("Rule {}: {rule}\n", round * RULES.len() + i + 1));
        }
    }
    vec![
        Message::new(Role::System, system),
        Message::new(
            Role::User,
            "We have flour, eggs, milk, butter and apples. What could we bake this \
             afternoon, and how long would it take?",
        ),
    ]
}

/// The conversation continued: the model's reply and a short new question.
pub fn follow_up(mut conversation: Vec<Message>, reply: &str) -> Vec<Message> {
    conversation.push(Message::new(Role::Assistant, reply));
    conversation.push(Message::new(
        Role::User,
        "Thanks! Which of these is quickest?",
    ));
    conversation
}
