//! Framing and packets: cuts one complete MQTT packet out of the read buffer (bounded by the
//! maximum packet size before any byte of the body is buffered), decodes it with
//! `mqtt-codec-kit` for the protocol version the CONNECT named, and encodes the few packets a
//! server sends (CONNACK, PUBACK, SUBACK, UNSUBACK, PINGRESP, DISCONNECT).

use std::io::Cursor;

use bytes::BytesMut;
use mqtt_codec_kit::common::qos::QoSWithPacketIdentifier;
use mqtt_codec_kit::common::{Decodable, Encodable};
use mqtt_codec_kit::{v4, v5};

use crate::ProtocolError;

/// MQTT 3.1.1 (protocol level 4; level 3, MQTT 3.1, is read the same way) or 5.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V4,
    V5,
}

/// Control packet type CONNECT (first nibble of the fixed header).
const TYPE_CONNECT: u8 = 1;
/// The remaining length is at most four bytes of 7 bits (MQTT 2.2.3).
const REMAINING_LENGTH_BYTES_MAX: usize = 4;

/// One complete packet: the whole frame (fixed header included) and its type nibble.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) bytes: BytesMut,
}

/// Takes one complete packet out of `buf`, or `None` when more bytes are needed. A packet
/// longer than `max` bytes is refused as soon as its fixed header is read.
pub(crate) fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len: usize = 0;
    let mut header = 1;
    loop {
        let Some(&b) = buf.get(header) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header > REMAINING_LENGTH_BYTES_MAX {
            return Err(ProtocolError::Malformed(
                "remaining length longer than 4 bytes".into(),
            ));
        }
    }
    let total = header + len;
    if total > max {
        return Err(ProtocolError::TooLarge { bytes: total, max });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        kind: first >> 4,
        bytes: buf.split_to(total),
    }))
}

/// The protocol level of a CONNECT frame, read before decoding so the right codec is used.
pub(crate) fn connect_version(frame: &Frame) -> Result<Version, ProtocolError> {
    if frame.kind != TYPE_CONNECT {
        return Err(ProtocolError::Malformed(
            "the first packet must be CONNECT".into(),
        ));
    }
    let b = &frame.bytes[..];
    // Skip the fixed header: the type byte and the remaining-length bytes.
    let mut i = 1;
    while b.get(i).is_some_and(|x| x & 0x80 != 0) {
        i += 1;
    }
    i += 1;
    let name_len = match (b.get(i), b.get(i + 1)) {
        (Some(&h), Some(&l)) => usize::from(u16::from_be_bytes([h, l])),
        _ => return Err(ProtocolError::Malformed("CONNECT too short".into())),
    };
    match b.get(i + 2 + name_len) {
        Some(3 | 4) => Ok(Version::V4),
        Some(5) => Ok(Version::V5),
        Some(&other) => Err(ProtocolError::Version(other)),
        None => Err(ProtocolError::Malformed("CONNECT too short".into())),
    }
}

/// What a server reads, the same for both versions.
#[derive(Debug)]
pub(crate) enum Packet {
    Connect(Connect),
    Publish(Publish),
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    PingReq,
    Disconnect,
    /// A packet a client may send but annals never expects (PUBACK, PUBREL, AUTH, ...).
    Unexpected(&'static str),
}

#[derive(Debug)]
pub(crate) struct Connect {
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) keep_alive_s: u16,
    /// Clean session (3.1.1) or clean start (5.0).
    pub(crate) clean: bool,
}

#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) topic: String,
    /// 0, 1 or 2.
    pub(crate) qos: u8,
    pub(crate) pkid: Option<u16>,
    pub(crate) dup: bool,
    pub(crate) payload: Vec<u8>,
    /// MQTT 5 topic alias (annals allows none).
    pub(crate) topic_alias: Option<u16>,
}

/// The DUP flag of a PUBLISH: bit 3 of the first byte (MQTT 3.3.1.1, the same in 5.0).
fn frame_dup(frame: &Frame) -> bool {
    frame.bytes.first().is_some_and(|b| b & 0x08 != 0)
}

fn split_qos(q: QoSWithPacketIdentifier) -> (u8, Option<u16>) {
    match q {
        QoSWithPacketIdentifier::Level0 => (0, None),
        QoSWithPacketIdentifier::Level1(id) => (1, Some(id)),
        QoSWithPacketIdentifier::Level2(id) => (2, Some(id)),
    }
}

/// Decodes one complete frame with the codec of `version`.
pub(crate) fn decode(version: Version, frame: &Frame) -> Result<Packet, ProtocolError> {
    let mut cur = Cursor::new(&frame.bytes[..]);
    match version {
        Version::V4 => {
            use v4::packet::VariablePacket as P;
            let p = P::decode(&mut cur).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
            Ok(match p {
                P::ConnectPacket(c) => Packet::Connect(Connect {
                    client_id: c.client_identifier().to_owned(),
                    username: c.username().map(str::to_owned),
                    password: c.password().map(str::to_owned),
                    keep_alive_s: c.keep_alive(),
                    clean: c.clean_session(),
                }),
                P::PublishPacket(p) => {
                    let (qos, pkid) = split_qos(p.qos());
                    Packet::Publish(Publish {
                        topic: p.topic_name().to_string(),
                        qos,
                        pkid,
                        // The codec reads DUP from the wrong bit; the fixed header's bit 3 is the flag.
                        dup: frame_dup(frame),
                        payload: p.payload().to_vec(),
                        topic_alias: None,
                    })
                }
                P::SubscribePacket(s) => Packet::Subscribe {
                    pkid: s.packet_identifier(),
                    filters: s.subscribes().len(),
                },
                P::UnsubscribePacket(u) => Packet::Unsubscribe {
                    pkid: u.packet_identifier(),
                    filters: u.topic_filters().len(),
                },
                P::PingreqPacket(_) => Packet::PingReq,
                P::DisconnectPacket(_) => Packet::Disconnect,
                P::ConnackPacket(_) => Packet::Unexpected("CONNACK"),
                P::PubackPacket(_) => Packet::Unexpected("PUBACK"),
                P::PubrecPacket(_) => Packet::Unexpected("PUBREC"),
                P::PubrelPacket(_) => Packet::Unexpected("PUBREL"),
                P::PubcompPacket(_) => Packet::Unexpected("PUBCOMP"),
                P::PingrespPacket(_) => Packet::Unexpected("PINGRESP"),
                P::SubackPacket(_) => Packet::Unexpected("SUBACK"),
                P::UnsubackPacket(_) => Packet::Unexpected("UNSUBACK"),
            })
        }
        Version::V5 => {
            use v5::packet::VariablePacket as P;
            let p = P::decode(&mut cur).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
            Ok(match p {
                P::ConnectPacket(c) => Packet::Connect(Connect {
                    client_id: c.client_identifier().to_owned(),
                    username: c.username().map(str::to_owned),
                    password: c.password().map(str::to_owned),
                    keep_alive_s: c.keep_alive(),
                    clean: c.clean_session(),
                }),
                P::PublishPacket(p) => {
                    let (qos, pkid) = split_qos(p.qos());
                    Packet::Publish(Publish {
                        topic: p.topic_name().to_string(),
                        qos,
                        pkid,
                        // The codec reads DUP from the wrong bit; the fixed header's bit 3 is the flag.
                        dup: frame_dup(frame),
                        payload: p.payload().to_vec(),
                        topic_alias: p.properties().topic_alias(),
                    })
                }
                P::SubscribePacket(s) => Packet::Subscribe {
                    pkid: s.packet_identifier(),
                    filters: s.subscribes().len(),
                },
                P::UnsubscribePacket(u) => Packet::Unsubscribe {
                    pkid: u.packet_identifier(),
                    filters: u.subscribes().len(),
                },
                P::PingreqPacket(_) => Packet::PingReq,
                P::DisconnectPacket(_) => Packet::Disconnect,
                P::ConnackPacket(_) => Packet::Unexpected("CONNACK"),
                P::PubackPacket(_) => Packet::Unexpected("PUBACK"),
                P::PubrecPacket(_) => Packet::Unexpected("PUBREC"),
                P::PubrelPacket(_) => Packet::Unexpected("PUBREL"),
                P::PubcompPacket(_) => Packet::Unexpected("PUBCOMP"),
                P::PingrespPacket(_) => Packet::Unexpected("PINGRESP"),
                P::SubackPacket(_) => Packet::Unexpected("SUBACK"),
                P::UnsubackPacket(_) => Packet::Unexpected("UNSUBACK"),
                P::AuthPacket(_) => Packet::Unexpected("AUTH"),
            })
        }
    }
}

/// Why a CONNECT is refused (mapped to each version's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Version,
    ClientId,
    BadCredentials,
    NotAuthorized,
    Busy,
}

/// The answer to a PUBLISH with QoS 1 (the 5.0 reason code; 3.1.1 acknowledges them all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckReason {
    Success,
    NotAuthorized,
    TopicNameInvalid,
    PayloadFormatInvalid,
}

/// Limits announced to MQTT 5 clients in CONNACK.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Announce {
    pub(crate) receive_max: u16,
    pub(crate) packet_bytes_max: u32,
}

fn encode_into<P: Encodable>(p: &P, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = p.encode(out);
}

pub(crate) fn connack(
    version: Version,
    result: Result<Announce, Refusal>,
    session_present: bool,
    assigned_client_id: Option<&str>,
    out: &mut Vec<u8>,
) {
    match version {
        Version::V4 => {
            use v4::control::variable_header::ConnectReturnCode as C;
            let code = match result {
                Ok(_) => C::ConnectionAccepted,
                Err(Refusal::Version) => C::UnacceptableProtocolVersion,
                Err(Refusal::ClientId) => C::IdentifierRejected,
                Err(Refusal::BadCredentials) => C::BadUserNameOrPassword,
                Err(Refusal::NotAuthorized) => C::NotAuthorized,
                Err(Refusal::Busy) => C::ServiceUnavailable,
            };
            encode_into(
                &v4::packet::ConnackPacket::new(session_present && result.is_ok(), code),
                out,
            );
        }
        Version::V5 => {
            use v5::control::variable_header::{ConnackProperties, ConnectReasonCode as C};
            let code = match result {
                Ok(_) => C::Success,
                Err(Refusal::Version) => C::UnsupportedProtocolVersion,
                Err(Refusal::ClientId) => C::ClientIdentifierNotValid,
                Err(Refusal::BadCredentials) => C::BadUsernameOrPassword,
                Err(Refusal::NotAuthorized) => C::NotAuthorized,
                Err(Refusal::Busy) => C::ServerBusy,
            };
            let mut p = v5::packet::ConnackPacket::new(session_present && result.is_ok(), code);
            if let Ok(a) = result {
                let mut props = ConnackProperties::default();
                props.set_receive_maximum(Some(a.receive_max));
                props.set_max_packet_size(Some(a.packet_bytes_max));
                props.set_max_qos(Some(1));
                props.set_topic_alias_max(Some(0));
                props.set_wildcard_subscription_available(Some(0));
                props.set_subscription_identifiers_available(Some(0));
                // Shared Subscription Available is left out on purpose: mqtt-codec-kit 1.0.5
                // writes it but does not count it in the property length, which makes the
                // CONNACK malformed. Subscriptions are refused anyway (SUBACK failure).
                props.set_assigned_client_identifier(assigned_client_id.map(str::to_owned));
                p.set_properties(props);
            }
            encode_into(&p, out);
        }
    }
}

pub(crate) fn puback(version: Version, pkid: u16, reason: AckReason, out: &mut Vec<u8>) {
    match version {
        Version::V4 => encode_into(&v4::packet::PubackPacket::new(pkid), out),
        Version::V5 => {
            use v5::control::variable_header::PubackReasonCode as R;
            let r = match reason {
                AckReason::Success => R::Success,
                AckReason::NotAuthorized => R::NotAuthorized,
                AckReason::TopicNameInvalid => R::TopicNameInvalid,
                AckReason::PayloadFormatInvalid => R::PayloadFormatInvalid,
            };
            encode_into(&v5::packet::PubackPacket::new(pkid, r), out);
        }
    }
}

/// SUBACK refusing every filter: annals takes writes, it is not a broker.
pub(crate) fn suback_refused(version: Version, pkid: u16, filters: usize, out: &mut Vec<u8>) {
    match version {
        Version::V4 => {
            use v4::packet::suback::SubscribeReturnCode as R;
            encode_into(
                &v4::packet::SubackPacket::new(pkid, vec![R::Failure; filters]),
                out,
            );
        }
        Version::V5 => {
            use v5::packet::suback::SubscribeReasonCode as R;
            encode_into(
                &v5::packet::SubackPacket::new(pkid, vec![R::ImplementationSpecificError; filters]),
                out,
            );
        }
    }
}

pub(crate) fn unsuback(version: Version, pkid: u16, filters: usize, out: &mut Vec<u8>) {
    match version {
        Version::V4 => encode_into(&v4::packet::UnsubackPacket::new(pkid), out),
        Version::V5 => {
            use v5::packet::unsuback::UnsubscribeReasonCode as R;
            encode_into(
                &v5::packet::UnsubackPacket::new(pkid, vec![R::NoSubscriptionExisted; filters]),
                out,
            );
        }
    }
}

pub(crate) fn pingresp(version: Version, out: &mut Vec<u8>) {
    match version {
        Version::V4 => encode_into(&v4::packet::PingrespPacket::new(), out),
        Version::V5 => encode_into(&v5::packet::PingrespPacket::new(), out),
    }
}

/// Why the server closes a connection (sent to MQTT 5 clients only; 3.1.1 has no server DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    Malformed,
    Protocol,
    TooLarge,
    QosNotSupported,
    TopicAliasInvalid,
    KeepAlive,
    TakenOver,
    ShuttingDown,
    Busy,
    NotAuthorized,
    WriteFailed,
}

pub(crate) fn disconnect(version: Version, reason: CloseReason, out: &mut Vec<u8>) {
    if version != Version::V5 {
        return;
    }
    use v5::control::variable_header::DisconnectReasonCode as R;
    let r = match reason {
        CloseReason::Malformed => R::MalformedPacket,
        CloseReason::Protocol => R::ProtocolError,
        CloseReason::TooLarge => R::PacketTooLarge,
        CloseReason::QosNotSupported => R::QoSNotSupported,
        CloseReason::TopicAliasInvalid => R::TopicAliasInvalid,
        CloseReason::KeepAlive => R::KeepAliveTimeout,
        CloseReason::TakenOver => R::SessionTakenOver,
        CloseReason::ShuttingDown => R::ServerShuttingDown,
        CloseReason::Busy => R::ServerBusy,
        CloseReason::NotAuthorized => R::NotAuthorized,
        CloseReason::WriteFailed => R::UnspecifiedError,
    };
    encode_into(&v5::packet::DisconnectPacket::new(r), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Frame {
        let mut b = BytesMut::from(bytes);
        take_frame(&mut b, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn frames_are_cut_whole_and_bounded_before_the_body() {
        let mut b = BytesMut::from(&[0xc0u8, 0x00, 0x30][..]);
        let f = take_frame(&mut b, 64).unwrap().unwrap();
        assert_eq!((f.kind, &f.bytes[..]), (12, &[0xc0u8, 0x00][..]));
        // A PUBLISH header announcing 200 bytes: incomplete, then too large for 64.
        b.extend_from_slice(&[0xc8, 0x01]);
        assert!(matches!(
            take_frame(&mut b, 64),
            Err(ProtocolError::TooLarge {
                bytes: 203,
                max: 64
            })
        ));
        let mut b = BytesMut::from(&[0x30u8, 0x05, 0x00][..]);
        assert!(take_frame(&mut b, 64).unwrap().is_none());
        let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            take_frame(&mut b, 64),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn connect_version_and_decode_for_311_and_5() {
        // CONNECT 3.1.1, client "c", clean session, keep-alive 60.
        let v4 = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
        ];
        let f = frame(&v4);
        assert_eq!(connect_version(&f).unwrap(), Version::V4);
        match decode(Version::V4, &f).unwrap() {
            Packet::Connect(c) => {
                assert_eq!(
                    (c.client_id.as_str(), c.keep_alive_s, c.clean),
                    ("c", 60, true)
                )
            }
            p => panic!("{p:?}"),
        }
        // The same with level 5 and an empty property list.
        let v5 = [
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c',
        ];
        let f = frame(&v5);
        assert_eq!(connect_version(&f).unwrap(), Version::V5);
        assert!(matches!(
            decode(Version::V5, &f).unwrap(),
            Packet::Connect(_)
        ));
        let mut v6 = v4;
        v6[8] = 6;
        assert!(matches!(
            connect_version(&frame(&v6)),
            Err(ProtocolError::Version(6))
        ));
        // PUBLISH QoS 1, DUP, topic "a/b", packet id 7, payload "x".
        let p = [0x3a, 8, 0, 3, b'a', b'/', b'b', 0, 7, b'x'];
        match decode(Version::V4, &frame(&p)).unwrap() {
            Packet::Publish(p) => {
                assert_eq!(
                    (p.topic.as_str(), p.qos, p.pkid, p.dup, &p.payload[..]),
                    ("a/b", 1, Some(7), true, &b"x"[..])
                )
            }
            p => panic!("{p:?}"),
        }
        // The same in 5.0 (empty property list): DUP is read from the fixed header too.
        let p5 = [0x3a, 9, 0, 3, b'a', b'/', b'b', 0, 7, 0, b'x'];
        match decode(Version::V5, &frame(&p5)).unwrap() {
            Packet::Publish(p) => assert_eq!((p.qos, p.pkid, p.dup), (1, Some(7), true)),
            p => panic!("{p:?}"),
        }
        let p5 = [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 8, 0, b'x'];
        match decode(Version::V5, &frame(&p5)).unwrap() {
            Packet::Publish(p) => assert_eq!((p.qos, p.pkid, p.dup), (1, Some(8), false)),
            p => panic!("{p:?}"),
        }
        // A PUBLISH whose topic length runs past the packet: an error, not a panic.
        let bad = [0x32, 3, 0, 9, b'a'];
        assert!(decode(Version::V4, &frame(&bad)).is_err());
        assert!(decode(Version::V5, &frame(&bad)).is_err());
    }

    #[test]
    fn acknowledgements_encode_as_the_spec_says() {
        let mut out = Vec::new();
        puback(Version::V4, 7, AckReason::PayloadFormatInvalid, &mut out);
        assert_eq!(out, [0x40, 2, 0, 7]);
        out.clear();
        puback(Version::V5, 7, AckReason::PayloadFormatInvalid, &mut out);
        assert_eq!(out, [0x40, 3, 0, 7, 0x99]);
        out.clear();
        connack(
            Version::V4,
            Err(Refusal::BadCredentials),
            false,
            None,
            &mut out,
        );
        assert_eq!(out, [0x20, 2, 0, 4]);
        out.clear();
        // A 5.0 CONNACK with properties: both lengths agree with the bytes that follow.
        let announce = Announce {
            receive_max: 16,
            packet_bytes_max: 1 << 20,
        };
        connack(Version::V5, Ok(announce), false, Some("auto-1"), &mut out);
        assert_eq!((out[0], usize::from(out[1])), (0x20, out.len() - 2));
        assert_eq!((out[2], out[3]), (0, 0));
        assert_eq!(
            usize::from(out[4]),
            out.len() - 5,
            "property length: {out:?}"
        );
        out.clear();
        suback_refused(Version::V4, 3, 2, &mut out);
        assert_eq!(out, [0x90, 4, 0, 3, 0x80, 0x80]);
        out.clear();
        pingresp(Version::V4, &mut out);
        assert_eq!(out, [0xd0, 0]);
    }
}
