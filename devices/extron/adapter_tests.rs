//! The adapter's pure parts: control names, error mapping, response matching.

use super::*;

#[test]
fn control_names_round_trip_and_are_topic_levels() {
    let s = MatrixSize {
        inputs: 8,
        outputs: 12,
        audio: true,
    };
    assert_eq!(control_name(s, 3, Part::Video), "out03_video");
    assert_eq!(control_name(s, 12, Part::AudioMute), "out12_audio_mute");
    let wide = MatrixSize { outputs: 128, ..s };
    assert_eq!(control_name(wide, 7, Part::Audio), "out007_audio");
    for o in 1..=12 {
        for p in Part::ALL {
            let n = control_name(s, o, p);
            crate::model::check_level("control", &n).unwrap();
            assert_eq!(parse_control(s, &n), Some((o, p)));
        }
    }
    for bad in [
        "out3_video",
        "out13_video",
        "out00_video",
        "out01_gain",
        "online",
    ] {
        assert_eq!(parse_control(s, bad), None, "{bad}");
    }
    let video_only = MatrixSize { audio: false, ..s };
    assert_eq!(parse_control(video_only, "out01_audio"), None);
}

#[test]
fn device_errors_map_to_command_answers_or_a_broken_link() {
    use SisError as E;
    let cases = [
        (E::InvalidInput, Some(ErrorCode::InvalidValue)),
        (E::InvalidOutput, Some(ErrorCode::InvalidValue)),
        (E::InvalidValue, Some(ErrorCode::InvalidValue)),
        (E::Busy, Some(ErrorCode::Busy)),
        (E::Timeout, Some(ErrorCode::Timeout)),
        (E::PrivilegeViolation, Some(ErrorCode::Forbidden)),
        (E::InvalidCommand, None),
        (E::Other(28), None),
    ];
    for (e, code) in cases {
        assert_eq!(refusal(e, "out01_video").ok().map(|f| f.code), code, "{e}");
    }
}

#[test]
fn commands_match_only_their_own_response() {
    let parse = super::super::proto::parse_line;
    let tie = Command::Tie(Tie::new(3, 2, TieKind::Video));
    assert!(answers(&tie, &parse(b"Out02 In03 Vid")));
    assert!(!answers(&tie, &parse(b"Out02 In03 Aud")));
    assert!(!answers(&tie, &parse(b"Out02 In04 Vid")));
    let mute = Command::AudioMute {
        output: 2,
        mute: true,
    };
    assert!(answers(&mute, &parse(b"Amt02*1")));
    // The front panel's form of the notice says the same.
    assert!(answers(&mute, &parse(b"Amt02 1")));
    assert!(!answers(&mute, &parse(b"Vmt02*1")));
}
