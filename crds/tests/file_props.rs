//! The file-mode loader over arbitrary input: it never panics, and every rejection says where
//! (the file, and for a document that parsed, the document and the field path with a reason).
//! Inputs are both raw junk and mutations of the valid examples, so that the deep checks are
//! reached, not only the YAML parser.

use mirrornet_api::file::{FileError, load_str};
use proptest::prelude::*;

const EXAMPLES: &[&str] = &[
    include_str!("../../examples/seed.yaml"),
    include_str!("../../examples/three-sides.yaml"),
    include_str!("../../examples/ipv6.yaml"),
];

/// A valid example with one line replaced, dropped or duplicated, or a character changed.
fn mutated() -> impl Strategy<Value = String> {
    (
        0..EXAMPLES.len(),
        any::<prop::sample::Index>(),
        0u8..4,
        ".{0,30}",
    )
        .prop_map(|(example, at, how, junk)| {
            let mut lines: Vec<String> = EXAMPLES[example].lines().map(String::from).collect();
            let i = at.index(lines.len());
            match how {
                0 => lines[i] = junk,
                1 => {
                    lines.remove(i);
                }
                2 => {
                    let line = lines[i].clone();
                    lines.insert(i, line);
                }
                _ => {
                    let line = &lines[i];
                    let keep = line.len() / 2;
                    lines[i] = format!("{}{junk}", &line[..line.floor_char_boundary(keep)]);
                }
            }
            lines.join("\n")
        })
}

fn check(text: &str) {
    match load_str("input.yaml", text) {
        Ok(networks) => {
            for n in networks {
                assert!(!n.name().is_empty());
                mirrornet_api::validate(&n.object.spec).expect("loaded specs are valid");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("input.yaml"), "{message}");
            if let FileError::Invalid { errors, .. } = &e {
                assert!(
                    !errors.0.is_empty(),
                    "a rejection with no reason: {message}"
                );
                for error in &errors.0 {
                    assert!(!error.field.is_empty(), "no field path: {message}");
                    assert!(!error.reason.is_empty(), "no reason: {message}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_examples_never_panic_and_name_the_field(text in mutated()) {
        check(&text);
    }

    #[test]
    fn junk_never_panics(text in ".{0,400}") {
        check(&text);
    }
}
