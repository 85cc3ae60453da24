//! Property tests of decoding: any bytes, any JSON, any mutation of a valid
//! frame yields a frame or an error code, never a panic. Bounded (a few
//! thousand cases) so it runs in the normal test command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_protocol::{ClientFrame, ErrorCode, decode, decode_any};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(vec!["lobby", "a b", "-x", "ok_room.1", "", "x:y", "日本"])
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like client frames: a known (or unknown) type and a mix of real and random fields.
fn frame_like() -> impl Strategy<Value = Value> {
    let ty = prop::sample::select(vec![
        "auth", "join", "leave", "send", "dm", "typing", "who", "history", "ping", "pong", "",
        "JOIN",
    ]);
    let keys = prop::sample::select(vec![
        "room", "text", "ref", "to", "since", "before", "limit", "token", "type", "x",
    ]);
    (ty, prop::collection::vec((keys, json_value()), 0..6)).prop_map(|(ty, fields)| {
        let mut map = Map::new();
        map.insert("type".into(), Value::String(ty.into()));
        for (k, v) in fields {
            map.insert(k.into(), v);
        }
        Value::Object(map)
    })
}

fn check(text: &str) {
    match decode(text) {
        Ok(frame) => {
            // A decoded frame serialises back to something that decodes to itself.
            let again = serde_json::to_string(&frame).unwrap();
            assert_eq!(decode(&again).unwrap(), frame, "{text}");
        }
        Err(e) => {
            assert!(ErrorCode::ALL.contains(&e.code));
            assert!(!e.message.is_empty());
        }
    }
}

/// Text shaped like the frames `decode` reads on its short path (`send`,
/// `join`), written as raw JSON so keys can repeat and strings be escaped:
/// each field from a few valid and invalid values.
fn common_like() -> impl Strategy<Value = String> {
    let long_ref = format!("\"{}\"", "x".repeat(65));
    let field = prop_oneof![
        prop::sample::select(vec![
            r#""send""#,
            r#""join""#,
            r#""s\u0065nd""#,
            r#""leave""#,
            "5",
            "null"
        ])
        .prop_map(|v| ("type", v.to_string())),
        prop::sample::select(vec![
            r#""lobby""#,
            r#""ok_room.1""#,
            r#""a b""#,
            r#""lob\u0062y""#,
            "3",
            "null"
        ])
        .prop_map(|v| ("room", v.to_string())),
        prop::sample::select(vec![
            r#""hi""#,
            r#""caf\u00e9 \n""#,
            r#""""#,
            "7",
            "null",
            "[]"
        ])
        .prop_map(|v| ("text", v.to_string())),
        prop::sample::select(vec![
            r#""r1""#.to_string(),
            "12".into(),
            "-3".into(),
            "123456789012345678901234567890".into(),
            "1.5".into(),
            "null".into(),
            "[1]".into(),
            r#""""#.into(),
            long_ref,
        ])
        .prop_map(|v| ("ref", v)),
        prop::sample::select(vec![r#""AAAAAAAA-1""#, r#""1-2""#, r#""bad""#, "5", "null"])
            .prop_map(|v| ("since", v.to_string())),
        prop::sample::select(vec!["{}", "1", r#""x""#]).prop_map(|v| ("x", v.to_string())),
    ];
    prop::collection::vec(field, 0..7).prop_map(|fields| {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_short_path_answers_as_the_general_one(text in common_like()) {
        prop_assert_eq!(decode(&text), decode_any(&text), "{}", text);
    }

    #[test]
    fn the_short_path_answers_as_the_general_one_on_frame_shaped_json(v in frame_like()) {
        let text = v.to_string();
        prop_assert_eq!(decode(&text), decode_any(&text), "{}", text);
    }

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_json(v in json_value()) {
        check(&v.to_string());
    }

    #[test]
    fn frame_shaped_json(v in frame_like()) {
        let text = v.to_string();
        check(&text);
        // A valid room in a known type never yields bad_room; an invalid one never passes.
        if let Ok(ClientFrame::Join { room, .. } | ClientFrame::Send { room, .. } | ClientFrame::Leave { room }) = decode(&text) {
            prop_assert!(room.as_str().len() <= 64, "room {}", room);
        }
    }

    #[test]
    fn valid_frames_with_noise_still_decode(room in "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text in ".{1,100}", junk in json_value()) {
        let frame = serde_json::json!({"type":"send","room":room,"text":text,"junk":junk});
        let decoded = decode(&frame.to_string()).unwrap();
        prop_assert!(matches!(decoded, ClientFrame::Send { .. }), "decoded as {:?}", decoded);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert_eq!(decode(&deep).unwrap_err().code, ErrorCode::BadRequest);
    let deep_obj = format!(
        "{{\"type\":\"send\",\"room\":\"r\",\"text\":{}}}",
        "[".repeat(10_000)
    );
    assert_eq!(decode(&deep_obj).unwrap_err().code, ErrorCode::BadRequest);
}
