//! The wire contract, pinned: exact JSON in both directions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_protocol::*;
use serde_json::{Value, json};

fn user(id: &str, name: &str) -> User {
    User::parse(id, name).unwrap()
}

fn msg() -> Message {
    Message {
        room: "lobby".parse().unwrap(),
        id: "1700000000000-0".parse().unwrap(),
        from: user("u1", "Ann"),
        text: "hi <b>".into(),
        ts: 1_700_000_000_000,
    }
}

/// Serialises `frame` and compares it with `expected`, then reads `expected`
/// back and compares it with `frame`: the format is pinned both ways.
fn server_golden(frame: ServerFrame, expected: Value) {
    let text = frame.to_json();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        expected,
        "{text}"
    );
    let back: ServerFrame = serde_json::from_value(expected).unwrap();
    assert_eq!(back, frame);
}

fn client_golden(text: Value, frame: ClientFrame) {
    assert_eq!(decode(&text.to_string()).unwrap(), frame, "{text}");
    assert_eq!(serde_json::to_value(&frame).unwrap(), text);
}

#[test]
fn client_frames() {
    let lobby: RoomId = "lobby".parse().unwrap();
    client_golden(
        json!({"type":"auth","token":"t"}),
        ClientFrame::Auth { token: "t".into() },
    );
    client_golden(
        json!({"type":"join","room":"lobby"}),
        ClientFrame::Join {
            room: lobby.clone(),
            since: None,
        },
    );
    client_golden(
        json!({"type":"join","room":"lobby","since":"17-0"}),
        ClientFrame::Join {
            room: lobby.clone(),
            since: Some("17-0".parse().unwrap()),
        },
    );
    client_golden(
        json!({"type":"leave","room":"lobby"}),
        ClientFrame::Leave {
            room: lobby.clone(),
        },
    );
    client_golden(
        json!({"type":"send","room":"lobby","text":"hi","ref":"a1"}),
        ClientFrame::Send {
            room: lobby.clone(),
            text: "hi".into(),
            reference: Some("a1".into()),
        },
    );
    client_golden(
        json!({"type":"send","room":"lobby","text":"hi","ref":7}),
        ClientFrame::Send {
            room: lobby.clone(),
            text: "hi".into(),
            reference: Some(7u64.into()),
        },
    );
    client_golden(
        json!({"type":"dm","to":"u2","text":"psst"}),
        ClientFrame::Dm {
            to: "u2".parse().unwrap(),
            text: "psst".into(),
            reference: None,
        },
    );
    client_golden(
        json!({"type":"typing","room":"lobby"}),
        ClientFrame::Typing {
            room: lobby.clone(),
        },
    );
    client_golden(
        json!({"type":"who","room":"lobby"}),
        ClientFrame::Who {
            room: lobby.clone(),
            cursor: None,
        },
    );
    client_golden(
        json!({"type":"who","room":"lobby","cursor":"u7"}),
        ClientFrame::Who {
            room: lobby.clone(),
            cursor: Some("u7".into()),
        },
    );
    client_golden(
        json!({"type":"history","room":"lobby","before":"9-0","limit":20}),
        ClientFrame::History {
            room: lobby.clone(),
            before: Some("9-0".parse().unwrap()),
            limit: Some(20),
        },
    );
    client_golden(
        json!({"type":"ping","ref":"p"}),
        ClientFrame::Ping {
            reference: Some("p".into()),
        },
    );
    client_golden(
        json!({"type":"ping"}),
        ClientFrame::Ping { reference: None },
    );
}

#[test]
fn client_fields_the_node_stamps_are_ignored() {
    let f = decode(r#"{"type":"send","room":"r","text":"x","from":{"id":"evil","name":"Admin"},"id":"1","ts":5}"#)
        .unwrap();
    assert_eq!(
        f,
        ClientFrame::Send {
            room: "r".parse().unwrap(),
            text: "x".into(),
            reference: None
        }
    );
}

#[test]
fn server_frames() {
    server_golden(
        ServerFrame::Welcome {
            user: user("g-abc", "guest-0042"),
            node: "n1".into(),
            heartbeat_ms: 25000,
            limits: Limits {
                max_text_chars: 4000,
                max_rooms: 32,
                rate_per_sec: 20,
            },
        },
        json!({"type":"welcome","user":{"id":"g-abc","name":"guest-0042"},"node":"n1","heartbeat_ms":25000,
               "limits":{"max_text_chars":4000,"max_rooms":32,"rate_per_sec":20}}),
    );
    server_golden(
        ServerFrame::Joined {
            room: "lobby".parse().unwrap(),
            users: vec![user("u1", "Ann")],
            count: 1,
            history: vec![msg()],
            recovered: false,
        },
        json!({"type":"joined","room":"lobby","users":[{"id":"u1","name":"Ann"}],"count":1,
               "history":[{"room":"lobby","id":"1700000000000-0","from":{"id":"u1","name":"Ann"},"text":"hi <b>","ts":1700000000000u64}],
               "recovered":false}),
    );
    server_golden(
        ServerFrame::Left {
            room: "lobby".parse().unwrap(),
        },
        json!({"type":"left","room":"lobby"}),
    );
    server_golden(
        ServerFrame::Message(msg()),
        json!({"type":"message","room":"lobby","id":"1700000000000-0","from":{"id":"u1","name":"Ann"},"text":"hi <b>","ts":1700000000000u64}),
    );
    server_golden(
        ServerFrame::Dm(DirectMessage {
            id: "d1".parse().unwrap(),
            from: user("u1", "Ann"),
            to: "u2".parse().unwrap(),
            text: "psst".into(),
            ts: 5,
        }),
        json!({"type":"dm","id":"d1","from":{"id":"u1","name":"Ann"},"to":"u2","text":"psst","ts":5}),
    );
    server_golden(
        ServerFrame::Presence {
            room: "lobby".parse().unwrap(),
            event: PresenceEvent::Diff {
                joined: vec![user("u1", "Ann")],
                left: vec![user("u2", "Bob")],
            },
            count: 2,
        },
        json!({"type":"presence","room":"lobby","event":"diff","joined":[{"id":"u1","name":"Ann"}],
               "left":[{"id":"u2","name":"Bob"}],"count":2}),
    );
    server_golden(
        ServerFrame::Presence {
            room: "lobby".parse().unwrap(),
            event: PresenceEvent::Diff {
                joined: vec![],
                left: vec![],
            },
            count: 20_000,
        },
        json!({"type":"presence","room":"lobby","event":"diff","joined":[],"left":[],"count":20000}),
    );
    server_golden(
        ServerFrame::Presence {
            room: "lobby".parse().unwrap(),
            event: PresenceEvent::Snapshot {
                users: vec![user("u1", "Ann"), user("u2", "Bob")],
                cursor: Some("u2".into()),
            },
            count: 5,
        },
        json!({"type":"presence","room":"lobby","event":"snapshot",
               "users":[{"id":"u1","name":"Ann"},{"id":"u2","name":"Bob"}],"cursor":"u2","count":5}),
    );
    server_golden(
        ServerFrame::Presence {
            room: "lobby".parse().unwrap(),
            event: PresenceEvent::Snapshot {
                users: vec![user("u1", "Ann")],
                cursor: None,
            },
            count: 1,
        },
        json!({"type":"presence","room":"lobby","event":"snapshot",
               "users":[{"id":"u1","name":"Ann"}],"count":1}),
    );
    server_golden(
        ServerFrame::Typing {
            room: "lobby".parse().unwrap(),
            from: user("u1", "Ann"),
        },
        json!({"type":"typing","room":"lobby","from":{"id":"u1","name":"Ann"}}),
    );
    server_golden(
        ServerFrame::History {
            room: "lobby".parse().unwrap(),
            messages: vec![],
        },
        json!({"type":"history","room":"lobby","messages":[]}),
    );
    server_golden(
        ServerFrame::Ack {
            reference: Some("a1".into()),
            id: "5-0".parse().unwrap(),
        },
        json!({"type":"ack","ref":"a1","id":"5-0"}),
    );
    server_golden(
        ServerFrame::Ack {
            reference: None,
            id: "5-0".parse().unwrap(),
        },
        json!({"type":"ack","id":"5-0"}),
    );
    server_golden(
        ServerFrame::Pong {
            reference: Some(3u64.into()),
        },
        json!({"type":"pong","ref":3}),
    );
    server_golden(
        ServerFrame::Error {
            code: ErrorCode::NotJoined,
            message: "join first".into(),
            reference: Some("x".into()),
        },
        json!({"type":"error","code":"not_joined","message":"join first","ref":"x"}),
    );
    server_golden(
        ServerFrame::Gap {
            room: Some("lobby".parse().unwrap()),
            with: None,
        },
        json!({"type":"gap","room":"lobby"}),
    );
    server_golden(
        ServerFrame::Gap {
            room: None,
            with: None,
        },
        json!({"type":"gap"}),
    );
}

#[test]
fn every_error_code_on_the_wire() {
    let names: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "bad_request",
            "unknown_type",
            "bad_room",
            "not_joined",
            "too_large",
            "too_many_rooms",
            "rate_limited",
            "not_found",
            "unauthorized",
            "unavailable"
        ]
    );
    for c in ErrorCode::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
    }
}

#[test]
fn close_codes() {
    use CloseReason::*;
    let table = [
        (Normal, 1000),
        (ShuttingDown, 1001),
        (IdleTimeout, 1001),
        (Binary, 1003),
        (InvalidUtf8, 1007),
        (Policy, 1008),
        (TooBig, 1009),
        (Internal, 1011),
        (Unauthorized, 4001),
        (SlowConsumer, 4002),
    ];
    for (reason, code) in table {
        assert_eq!(reason.code(), code, "{reason:?}");
    }
}

#[test]
fn decode_errors_carry_their_code_and_ref() {
    let code = |s: &str| decode(s).unwrap_err().code;
    assert_eq!(code("hello"), ErrorCode::BadRequest);
    assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
    assert_eq!(code("{}"), ErrorCode::BadRequest);
    assert_eq!(code(r#"{"type":5}"#), ErrorCode::BadRequest);
    assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::BadRequest);
    assert_eq!(
        code(r#"{"type":"join","room":"no spaces"}"#),
        ErrorCode::BadRoom
    );
    assert_eq!(
        code(r#"{"type":"send","room":"lobby"}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(r#"{"type":"send","room":"lobby","text":5}"#),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(r#"{"type":"dm","to":"a b","text":"x"}"#),
        ErrorCode::BadRequest
    );
    let e = decode(r#"{"type":"send","room":"lobby","ref":"r9"}"#).unwrap_err();
    assert_eq!(e.reference, Some("r9".into()));
    let frame: ServerFrame = e.into();
    let v: Value = serde_json::from_str(&frame.to_json()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["code"], "bad_request");
    assert_eq!(v["ref"], "r9");
}

#[test]
fn a_numeric_ref_is_echoed_exactly() {
    // Found by the property test: without exact float parsing this ref came
    // back as a neighbouring value.
    for raw in [
        "-6.619210443695127e+245",
        "0.1",
        "1e-300",
        "12345678901234567890",
        "7",
    ] {
        let frame = decode(&format!(r#"{{"type":"ping","ref":{raw}}}"#)).unwrap();
        let ClientFrame::Ping { reference } = frame else {
            panic!()
        };
        let pong = ServerFrame::Pong { reference }.to_json();
        let echoed: Value = serde_json::from_str(&pong).unwrap();
        let sent: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(echoed["ref"], sent, "{raw}");
        assert_eq!(
            decode(&format!(r#"{{"type":"ping","ref":{}}}"#, echoed["ref"])).unwrap(),
            decode(&format!(r#"{{"type":"ping","ref":{raw}}}"#)).unwrap()
        );
    }
}
