//! The codec: NUL framing and its bound, the documented requests and their exact bytes,
//! typed errors, and random input that must never panic.

use super::*;

fn frames(framer: &mut Framer) -> Vec<Result<Bytes, ProtoError>> {
    std::iter::from_fn(|| framer.next_frame()).collect()
}
fn ok(bytes: &'static [u8]) -> Result<Bytes, ProtoError> {
    Ok(Bytes::from_static(bytes))
}
fn request(frame: &[u8]) -> (Option<RpcId>, Request) {
    let env = parse_request(frame).unwrap();
    (env.id, env.request)
}
fn code(frame: &[u8]) -> (i64, Option<RpcId>) {
    let e = parse_request(frame).unwrap_err();
    (e.rpc_error().code, e.request_id().cloned())
}

#[test]
fn framer_splits_at_nul_and_bounds_messages() {
    let mut f = Framer::new(8);
    f.extend(b"{\"a\":1}\0\0{\"b\"");
    assert_eq!(frames(&mut f), vec![ok(b"{\"a\":1}")]);
    f.extend(b":2}\0");
    assert_eq!((frames(&mut f), f.buffered()), (vec![ok(b"{\"b\":2}")], 0));
    f.extend(b"0123456789");
    assert_eq!(frames(&mut f), vec![Err(ProtoError::TooLong { limit: 8 })]);
    f.extend(b"abcdefghijkl");
    assert!(frames(&mut f).is_empty() && f.buffered() <= 8 + 12);
    f.extend(b"tail\0ok\0");
    assert_eq!(frames(&mut f), vec![ok(b"ok")]);
    // A long message that arrives whole, NUL included, is rejected too.
    f.extend(b"0123456789\0x\0");
    let too_long = Err(ProtoError::TooLong { limit: 8 });
    assert_eq!(frames(&mut f), vec![too_long, ok(b"x")]);
}

#[test]
fn parses_documented_requests() {
    let names = vec!["Gain".to_owned(), "Mute".to_owned()];
    assert_eq!(
        request(br#"{"jsonrpc":"2.0","id":1234,"method":"Control.Get","params":["Gain","Mute"]}"#),
        (Some(RpcId::Number(1234)), Request::ControlGet(names))
    );
    let logon =
        br#"{ "jsonrpc":"2.0", "method":"Logon", "params":{ "User":"u", "Password":"1234" } }"#;
    let expected = Request::Logon {
        user: "u".into(),
        password: "1234".into(),
    };
    assert_eq!(request(logon), (None, expected));
    let status = br#"{"jsonrpc":"2.0","method":"StatusGet","id":"x","params":0}"#;
    assert_eq!(
        request(status),
        (Some(RpcId::String("x".into())), Request::StatusGet {})
    );
    let (_, set) = request(
        br#"{"jsonrpc":"2.0","id":1,"method":"Component.Set","params":{"Name":"My APM","Controls":[{"Name":"ent.xfade.gain","Value":-100.0,"Ramp":2},{"Name":"mute","String":"muted"}]}}"#,
    );
    let Request::ComponentSet { name, controls } = set else {
        panic!("{set:?}")
    };
    assert_eq!((name.as_str(), controls[0].ramp), ("My APM", Some(2.0)));
    assert_eq!(controls[0].target, SetTarget::Value(Value::Number(-100.0)));
    assert_eq!(controls[1].target, SetTarget::String("muted".into()));
    let (_, add) = request(
        br#"{"jsonrpc":"2.0","id":2,"method":"ChangeGroup.AddComponentControl","params":{"Id":"g","Component":{"Name":"C","Controls":[{"Name":"gain"}]}}}"#,
    );
    let component = ComponentRef {
        name: "C".into(),
        controls: vec!["gain".into()],
    };
    let id = GroupId("g".into());
    assert_eq!(
        add,
        Request::ChangeGroupAddComponentControl { id, component }
    );
}

#[test]
fn typed_errors_with_codes_and_ids() {
    let e = parse_request(b"{\"jsonrpc\":\"2.0\",\x01").unwrap_err();
    assert!(matches!(e, ProtoError::Json { ref excerpt, .. } if excerpt.contains("\\x01")));
    assert_eq!(e.rpc_error().code, -32700);
    assert_eq!(code(b"[1,2]"), (-32600, None));
    assert_eq!(
        code(br#"{"jsonrpc":"2.0","id":[1],"method":"NoOp"}"#),
        (-32600, None)
    );
    let n = |n| Some(RpcId::Number(n));
    assert_eq!(
        code(br#"{"jsonrpc":"1.0","id":5,"method":"NoOp"}"#),
        (-32600, n(5))
    );
    assert_eq!(
        code(br#"{"jsonrpc":"2.0","id":6,"method":"Control.Explode"}"#),
        (-32601, n(6))
    );
    let wrong_type = br#"{"jsonrpc":"2.0","id":7,"method":"Control.Set","params":{"Name":1}}"#;
    assert_eq!(code(wrong_type), (-32602, n(7)));
    let no_value = br#"{"jsonrpc":"2.0","id":8,"method":"Control.Set","params":{"Name":"x"}}"#;
    assert_eq!(code(no_value), (-32602, n(8)));
    assert_eq!(
        code(br#"{"jsonrpc":"2.0","id":9,"method":"Control.Get"}"#),
        (-32602, n(9))
    );
    assert_eq!(ErrorCode::LogonRequired.code(), 10);
    assert_eq!(ErrorCode::from_code(6), Some(ErrorCode::UnknownChangeGroup));
    assert_eq!(ErrorCode::from_code(99), None);
}

#[test]
fn encodes_exact_bytes() {
    let id = RpcId::Number(1234);
    let target = SetTarget::Value(Value::Number(-12.0));
    let set = ControlSet {
        name: "MainGain".into(),
        target,
        ramp: Some(2.0),
    };
    assert_eq!(
        encode_request(Some(&id), &Request::ControlSet(set)),
        b"{\"jsonrpc\":\"2.0\",\"id\":1234,\"method\":\"Control.Set\",\"params\":{\"Name\":\"MainGain\",\"Value\":-12.0,\"Ramp\":2.0}}\0"
    );
    assert_eq!(
        encode_request(None, &Request::NoOp {}),
        b"{\"jsonrpc\":\"2.0\",\"method\":\"NoOp\",\"params\":{}}\0"
    );
    let poll = Request::ChangeGroupAutoPoll {
        id: GroupId("g".into()),
        rate: 0.1,
    };
    assert_eq!(
        encode_request(Some(&RpcId::String("a".into())), &poll),
        b"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"ChangeGroup.AutoPoll\",\"params\":{\"Id\":\"g\",\"Rate\":0.1}}\0"
    );
    assert_eq!(
        encode_result(Some(&id), &true),
        b"{\"jsonrpc\":\"2.0\",\"result\":true,\"id\":1234}\0"
    );
    assert_eq!(
        encode_error(None, &RpcError::new(ErrorCode::LogonRequired, "")),
        b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":10,\"message\":\"Logon required\"},\"id\":null}\0"
    );
    let change = ControlState {
        component: None,
        name: "gain".into(),
        string: "-12.0dB".into(),
        value: Value::Number(-12.0),
        position: 0.5,
        indeterminate: None,
    };
    let push = PollResult {
        id: GroupId("1".into()),
        changes: vec![change],
    };
    assert_eq!(
        encode_notification(&Notification::ChangeGroupPoll(push)),
        b"{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":\"1\",\"Changes\":[{\"Name\":\"gain\",\"String\":\"-12.0dB\",\"Value\":-12.0,\"Position\":0.5}]}}\0"
    );
}

#[test]
fn every_request_round_trips() {
    let g = || GroupId("grp".into());
    let target = SetTarget::Position(0.25);
    let set = ControlSet {
        name: "m".into(),
        target,
        ramp: None,
    };
    let component = ComponentRef {
        name: "c".into(),
        controls: vec!["gain".into()],
    };
    let all = vec![
        Request::Logon {
            user: "u".into(),
            password: "p".into(),
        },
        Request::NoOp {},
        Request::StatusGet {},
        Request::ControlGet(vec!["a".into()]),
        Request::ControlSet(set.clone()),
        Request::ComponentGet(component.clone()),
        Request::ComponentSet {
            name: "c".into(),
            controls: vec![set],
        },
        Request::ComponentGetControls { name: "c".into() },
        Request::ComponentGetComponents {},
        Request::ChangeGroupAddControl {
            id: g(),
            controls: vec!["a".into()],
        },
        Request::ChangeGroupAddComponentControl { id: g(), component },
        Request::ChangeGroupRemove {
            id: g(),
            controls: vec!["a".into()],
        },
        Request::ChangeGroupPoll { id: g() },
        Request::ChangeGroupInvalidate { id: g() },
        Request::ChangeGroupDestroy { id: g() },
        Request::ChangeGroupClear { id: g() },
        Request::ChangeGroupAutoPoll {
            id: g(),
            rate: 0.05,
        },
    ];
    assert_eq!(all.len(), METHODS.len());
    for (n, sent) in all.into_iter().enumerate() {
        let id = RpcId::Number(n as i64);
        let bytes = encode_request(Some(&id), &sent);
        assert_eq!(bytes.last(), Some(&0));
        assert_eq!(request(&bytes[..bytes.len() - 1]), (Some(id), sent));
    }
}

#[test]
fn parses_core_messages() {
    let m = parse_incoming(
        br#"{"jsonrpc":"2.0","method":"EngineStatus","params":{"Platform":"Core 110f","State":"Active","DesignName":"D","DesignCode":"srOW2FUZF3HC","IsRedundant":false,"IsEmulator":false,"Status":{"Code":4,"String":"Missing"}}}"#,
    );
    let Ok(Incoming::Notification(Notification::EngineStatus(s))) = m else {
        panic!("{m:?}")
    };
    assert_eq!(
        (s.state, s.status.map(|s| s.code)),
        (EngineState::Active, Some(4))
    );
    let m = parse_incoming(
        br#"{"jsonrpc":"2.0","method":"ChangeGroup.Poll","params":{"Id":"G","Changes":[{"Name":"Mic","String":"-42.1dB","Value":-42.09999847,"Position":0.48250001,"Indeterminate":true}]}}"#,
    );
    let Ok(Incoming::Notification(Notification::ChangeGroupPoll(p))) = m else {
        panic!("{m:?}")
    };
    assert_eq!(
        (p.id.0.as_str(), p.changes[0].indeterminate),
        ("G", Some(true))
    );
    let m = parse_incoming(br#"{"jsonrpc":"2.0","result":true,"id":"crestron"}"#).unwrap();
    let id = Some(RpcId::String("crestron".into()));
    assert_eq!(
        m,
        Incoming::Response {
            id,
            outcome: Ok(Json::Bool(true))
        }
    );
    let m = parse_incoming(
        br#"{"jsonrpc":"2.0","id":"s-1","error":{"code":10,"message":"Logon required"}}"#,
    );
    let Ok(Incoming::Response {
        outcome: Err(e), ..
    }) = m
    else {
        panic!("{m:?}")
    };
    assert_eq!(e.kind(), Some(ErrorCode::LogonRequired));
    assert!(parse_incoming(br#"{"jsonrpc":"2.0","method":"Other","params":{}}"#).is_err());
    assert!(parse_incoming(br#"{"jsonrpc":"2.0","method":"EngineStatus"}"#).is_err());
    assert!(parse_incoming(br#"{"jsonrpc":"2.0","id":1}"#).is_err());
}

#[test]
fn random_bytes_never_panic_and_stay_bounded() {
    const ALPHABET: &[u8] = b"{}[]\":,0123456789.-eE truefalsnul\\u\0\x01\xff\xc3";
    let seeds: Vec<Vec<u8>> = vec![
        encode_request(
            Some(&RpcId::Number(1)),
            &Request::ControlGet(vec!["a".into()]),
        ),
        br#"{"jsonrpc":"2.0","id":1,"method":"Control.Set","params":{"Name":"x","Value":1}}"#
            .to_vec(),
        br#"{"jsonrpc":"2.0","method":"ChangeGroup.Poll","params":{"Id":"g","Changes":[]}}"#
            .to_vec(),
    ];
    let mut rng = fastrand::Rng::with_seed(0x51c_2024);
    let mut framer = Framer::new(256);
    for round in 0..5000 {
        let mut bytes: Vec<u8> = if round % 3 == 0 {
            let mut s = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(0..4) {
                let at = rng.usize(..s.len());
                s[at] = ALPHABET[rng.usize(..ALPHABET.len())];
            }
            s
        } else {
            let len = rng.usize(0..300);
            (0..len)
                .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
                .collect()
        };
        if round % 7 == 0 {
            bytes.extend(std::iter::repeat_n(b'x', rng.usize(0..600)));
        }
        framer.extend(&bytes);
        while let Some(frame) = framer.next_frame() {
            if let Ok(frame) = frame {
                assert!(frame.len() <= 256);
                let _ = parse_request(&frame).map_err(|e| e.rpc_error());
                let _ = parse_incoming(&frame);
            }
        }
        assert!(framer.buffered() <= 256 + bytes.len());
        let _ = parse_request(&bytes);
        let _ = parse_incoming(&bytes);
    }
}
