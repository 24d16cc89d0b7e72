//! Attribute types and their values (RFC 8489 §14, RFC 8656 §18, RFC 6062
//! §6.2, RFC 5780 §7, RFC 8445 §16.1, RFC 7982 §3.1).

use std::fmt;
use std::net::SocketAddr;

use crate::addr::{self, Family};
use crate::error::{AttrError, EncodeError, ErrorCode};
use crate::message::{RawAttr, TransactionId};

/// An attribute type. Types below 0x8000 are comprehension-required: an agent
/// that does not know one must reject the message (RFC 8489 §14).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrType(pub u16);

macro_rules! attr_types {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $text:expr;)*) => {
        impl AttrType {
            $($(#[$doc])* pub const $name: Self = Self($value);)*

            /// Whether this codec knows the attribute's format.
            #[must_use]
            pub const fn is_known(self) -> bool {
                matches!(self.0, $($value)|*)
            }

            /// The attribute's name as the RFCs spell it.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $($value => $text,)*
                    _ => "UNKNOWN",
                }
            }
        }
    };
}

attr_types! {
    /// RFC 8489 §14.1.
    MAPPED_ADDRESS = 0x0001, "MAPPED-ADDRESS";
    /// RFC 5780 §7.2.
    CHANGE_REQUEST = 0x0003, "CHANGE-REQUEST";
    /// RFC 8489 §14.3.
    USERNAME = 0x0006, "USERNAME";
    /// RFC 8489 §14.5.
    MESSAGE_INTEGRITY = 0x0008, "MESSAGE-INTEGRITY";
    /// RFC 8489 §14.8.
    ERROR_CODE = 0x0009, "ERROR-CODE";
    /// RFC 8489 §14.9.
    UNKNOWN_ATTRIBUTES = 0x000A, "UNKNOWN-ATTRIBUTES";
    /// RFC 8656 §18.1.
    CHANNEL_NUMBER = 0x000C, "CHANNEL-NUMBER";
    /// RFC 8656 §18.2.
    LIFETIME = 0x000D, "LIFETIME";
    /// RFC 8656 §18.3.
    XOR_PEER_ADDRESS = 0x0012, "XOR-PEER-ADDRESS";
    /// RFC 8656 §18.4.
    DATA = 0x0013, "DATA";
    /// RFC 8489 §14.9.
    REALM = 0x0014, "REALM";
    /// RFC 8489 §14.10.
    NONCE = 0x0015, "NONCE";
    /// RFC 8656 §18.5.
    XOR_RELAYED_ADDRESS = 0x0016, "XOR-RELAYED-ADDRESS";
    /// RFC 8656 §18.6.
    REQUESTED_ADDRESS_FAMILY = 0x0017, "REQUESTED-ADDRESS-FAMILY";
    /// RFC 8656 §18.7.
    EVEN_PORT = 0x0018, "EVEN-PORT";
    /// RFC 8656 §18.8.
    REQUESTED_TRANSPORT = 0x0019, "REQUESTED-TRANSPORT";
    /// RFC 8656 §18.9.
    DONT_FRAGMENT = 0x001A, "DONT-FRAGMENT";
    /// RFC 8489 §14.6.
    MESSAGE_INTEGRITY_SHA256 = 0x001C, "MESSAGE-INTEGRITY-SHA256";
    /// RFC 8489 §14.11.
    PASSWORD_ALGORITHM = 0x001D, "PASSWORD-ALGORITHM";
    /// RFC 8489 §14.4.
    USERHASH = 0x001E, "USERHASH";
    /// RFC 8489 §14.2.
    XOR_MAPPED_ADDRESS = 0x0020, "XOR-MAPPED-ADDRESS";
    /// RFC 8656 §18.10.
    RESERVATION_TOKEN = 0x0022, "RESERVATION-TOKEN";
    /// RFC 8445 §16.1.
    PRIORITY = 0x0024, "PRIORITY";
    /// RFC 8445 §16.1.
    USE_CANDIDATE = 0x0025, "USE-CANDIDATE";
    /// RFC 5780 §7.4.
    PADDING = 0x0026, "PADDING";
    /// RFC 5780 §7.5.
    RESPONSE_PORT = 0x0027, "RESPONSE-PORT";
    /// RFC 6062 §6.2.1.
    CONNECTION_ID = 0x002A, "CONNECTION-ID";
    /// RFC 8656 §18.11.
    ADDITIONAL_ADDRESS_FAMILY = 0x8000, "ADDITIONAL-ADDRESS-FAMILY";
    /// RFC 8656 §18.12.
    ADDRESS_ERROR_CODE = 0x8001, "ADDRESS-ERROR-CODE";
    /// RFC 8489 §14.12.
    PASSWORD_ALGORITHMS = 0x8002, "PASSWORD-ALGORITHMS";
    /// RFC 8489 §14.16.
    ALTERNATE_DOMAIN = 0x8003, "ALTERNATE-DOMAIN";
    /// RFC 8656 §18.13.
    ICMP = 0x8004, "ICMP";
    /// RFC 8489 §14.14.
    SOFTWARE = 0x8022, "SOFTWARE";
    /// RFC 8489 §14.15.
    ALTERNATE_SERVER = 0x8023, "ALTERNATE-SERVER";
    /// RFC 7982 §3.1.
    TRANSACTION_TRANSMIT_COUNTER = 0x8025, "TRANSACTION_TRANSMIT_COUNTER";
    /// RFC 5780 §7.6.
    CACHE_TIMEOUT = 0x8027, "CACHE-TIMEOUT";
    /// RFC 8489 §14.7.
    FINGERPRINT = 0x8028, "FINGERPRINT";
    /// RFC 8445 §16.1.
    ICE_CONTROLLED = 0x8029, "ICE-CONTROLLED";
    /// RFC 8445 §16.1.
    ICE_CONTROLLING = 0x802A, "ICE-CONTROLLING";
    /// RFC 5780 §7.3.
    RESPONSE_ORIGIN = 0x802B, "RESPONSE-ORIGIN";
    /// RFC 5780 §7.4.
    OTHER_ADDRESS = 0x802C, "OTHER-ADDRESS";
}

impl AttrType {
    /// Types 0x0000–0x7FFF must be understood by the receiver.
    #[must_use]
    pub const fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }
}

impl fmt::Debug for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(0x{:04x})", self.name(), self.0)
    }
}

/// Longest USERNAME value (RFC 8489 §14.3: less than 513 bytes).
pub const MAX_USERNAME_BYTES: usize = 512;
/// Longest REALM, NONCE, SOFTWARE and reason phrase value, in bytes
/// (RFC 8489 §14.8–§14.10, §14.14: less than 763 bytes)...
pub const MAX_TEXT_BYTES: usize = 763;
/// ...and in characters (less than 128).
pub const MAX_TEXT_CHARS: usize = 127;

/// TURN's REQUESTED-TRANSPORT value for UDP (RFC 8656 §18.8).
pub const TRANSPORT_UDP: u8 = 17;
/// TURN's REQUESTED-TRANSPORT value for TCP (RFC 6062 §6.1).
pub const TRANSPORT_TCP: u8 = 6;

/// A decoded attribute, borrowing from the message.
///
/// Every attribute of RFC 8489, RFC 8656, RFC 6062, RFC 5780 and the ICE
/// attributes of RFC 8445 has a variant; any other type decodes to
/// [`Attr::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attr<'a> {
    MappedAddress(SocketAddr),
    XorMappedAddress(SocketAddr),
    /// UTF-8, at most 512 bytes; compared as bytes.
    Username(&'a str),
    /// SHA-256 of the username and realm (RFC 8489 §14.4).
    Userhash(&'a [u8; 32]),
    MessageIntegrity(&'a [u8; 20]),
    /// 16 to 32 bytes, a multiple of 4 (RFC 8489 §14.6).
    MessageIntegritySha256(&'a [u8]),
    Fingerprint(u32),
    ErrorCode {
        code: ErrorCode,
        reason: &'a str,
    },
    Realm(&'a str),
    Nonce(&'a str),
    PasswordAlgorithms(AlgorithmList<'a>),
    PasswordAlgorithm(crate::PasswordAlgorithm),
    UnknownAttributes(TypeList<'a>),
    Software(&'a str),
    AlternateServer(SocketAddr),
    AlternateDomain(&'a str),
    ChannelNumber(u16),
    /// Seconds.
    Lifetime(u32),
    XorPeerAddress(SocketAddr),
    Data(&'a [u8]),
    XorRelayedAddress(SocketAddr),
    RequestedAddressFamily(Family),
    /// The R bit: reserve the next port too.
    EvenPort {
        reserve_next: bool,
    },
    /// An IP protocol number: 17 for UDP, 6 for TCP.
    RequestedTransport(u8),
    DontFragment,
    ReservationToken(&'a [u8; 8]),
    AdditionalAddressFamily(Family),
    AddressErrorCode {
        family: Family,
        code: ErrorCode,
        reason: &'a str,
    },
    Icmp {
        icmp_type: u8,
        icmp_code: u8,
        error_data: u32,
    },
    ConnectionId(u32),
    ChangeRequest {
        change_ip: bool,
        change_port: bool,
    },
    Padding(&'a [u8]),
    ResponsePort(u16),
    /// Seconds.
    CacheTimeout(u32),
    ResponseOrigin(SocketAddr),
    OtherAddress(SocketAddr),
    Priority(u32),
    UseCandidate,
    IceControlled(u64),
    IceControlling(u64),
    TransactionTransmitCounter {
        request: u8,
        response: u8,
    },
    /// An attribute this codec does not know.
    Other {
        typ: AttrType,
        value: &'a [u8],
    },
}

impl<'a> Attr<'a> {
    /// Decodes one attribute's value. `tid` unmasks the XOR address
    /// attributes of IPv6.
    pub fn decode(raw: RawAttr<'a>, tid: &TransactionId) -> Result<Self, AttrError> {
        let v = raw.value;
        Ok(match raw.typ {
            AttrType::MAPPED_ADDRESS => Self::MappedAddress(addr::decode(v)?),
            AttrType::XOR_MAPPED_ADDRESS => Self::XorMappedAddress(addr::decode_xor(v, tid)?),
            AttrType::USERNAME => Self::Username(text(v, MAX_USERNAME_BYTES, usize::MAX)?),
            AttrType::USERHASH => Self::Userhash(fixed(v)?),
            AttrType::MESSAGE_INTEGRITY => Self::MessageIntegrity(fixed(v)?),
            AttrType::MESSAGE_INTEGRITY_SHA256 => {
                if !(16..=32).contains(&v.len()) || !v.len().is_multiple_of(4) {
                    return Err(AttrError::BadLength);
                }
                Self::MessageIntegritySha256(v)
            }
            AttrType::FINGERPRINT => Self::Fingerprint(u32::from_be_bytes(*fixed(v)?)),
            AttrType::ERROR_CODE => {
                let (head, reason) = v.split_first_chunk::<4>().ok_or(AttrError::BadLength)?;
                let [_, _, class, number] = *head;
                Self::ErrorCode {
                    code: error_code(class, number)?,
                    reason: long_text(reason)?,
                }
            }
            AttrType::REALM => Self::Realm(long_text(v)?),
            AttrType::NONCE => Self::Nonce(long_text(v)?),
            AttrType::PASSWORD_ALGORITHMS => Self::PasswordAlgorithms(AlgorithmList::new(v)?),
            AttrType::PASSWORD_ALGORITHM => {
                let mut list = AlgorithmList::new(v)?.iter();
                match (list.next(), list.next()) {
                    (Some(alg), None) => Self::PasswordAlgorithm(alg),
                    _ => return Err(AttrError::BadLength),
                }
            }
            AttrType::UNKNOWN_ATTRIBUTES => Self::UnknownAttributes(TypeList::new(v)?),
            AttrType::SOFTWARE => Self::Software(long_text(v)?),
            AttrType::ALTERNATE_SERVER => Self::AlternateServer(addr::decode(v)?),
            // A domain name: RFC 8489 §14.16 limits it to 255 bytes.
            AttrType::ALTERNATE_DOMAIN => Self::AlternateDomain(text(v, 255, usize::MAX)?),
            AttrType::CHANNEL_NUMBER => {
                let [a, b, _, _] = *fixed(v)?;
                Self::ChannelNumber(u16::from_be_bytes([a, b]))
            }
            AttrType::LIFETIME => Self::Lifetime(u32::from_be_bytes(*fixed(v)?)),
            AttrType::XOR_PEER_ADDRESS => Self::XorPeerAddress(addr::decode_xor(v, tid)?),
            AttrType::DATA => Self::Data(v),
            AttrType::XOR_RELAYED_ADDRESS => Self::XorRelayedAddress(addr::decode_xor(v, tid)?),
            AttrType::REQUESTED_ADDRESS_FAMILY => Self::RequestedAddressFamily(family_field(v)?),
            AttrType::EVEN_PORT => match v {
                [flags] => Self::EvenPort {
                    reserve_next: flags & 0x80 != 0,
                },
                _ => return Err(AttrError::BadLength),
            },
            AttrType::REQUESTED_TRANSPORT => {
                let [protocol, _, _, _] = *fixed(v)?;
                Self::RequestedTransport(protocol)
            }
            AttrType::DONT_FRAGMENT => empty(v, Self::DontFragment)?,
            AttrType::RESERVATION_TOKEN => Self::ReservationToken(fixed(v)?),
            AttrType::ADDITIONAL_ADDRESS_FAMILY => Self::AdditionalAddressFamily(family_field(v)?),
            AttrType::ADDRESS_ERROR_CODE => {
                let (head, reason) = v.split_first_chunk::<4>().ok_or(AttrError::BadLength)?;
                let [family, _, class, number] = *head;
                Self::AddressErrorCode {
                    family: Family::from_wire(family).ok_or(AttrError::BadFamily)?,
                    code: error_code(class, number)?,
                    reason: long_text(reason)?,
                }
            }
            AttrType::ICMP => {
                let [_, _, icmp_type, icmp_code, d0, d1, d2, d3] = *fixed(v)?;
                Self::Icmp {
                    icmp_type,
                    icmp_code,
                    error_data: u32::from_be_bytes([d0, d1, d2, d3]),
                }
            }
            AttrType::CONNECTION_ID => Self::ConnectionId(u32::from_be_bytes(*fixed(v)?)),
            AttrType::CHANGE_REQUEST => {
                let [_, _, _, flags] = *fixed(v)?;
                Self::ChangeRequest {
                    change_ip: flags & 0x04 != 0,
                    change_port: flags & 0x02 != 0,
                }
            }
            AttrType::PADDING => Self::Padding(v),
            AttrType::RESPONSE_PORT => {
                let [a, b, _, _] = *fixed(v)?;
                Self::ResponsePort(u16::from_be_bytes([a, b]))
            }
            AttrType::CACHE_TIMEOUT => Self::CacheTimeout(u32::from_be_bytes(*fixed(v)?)),
            AttrType::RESPONSE_ORIGIN => Self::ResponseOrigin(addr::decode(v)?),
            AttrType::OTHER_ADDRESS => Self::OtherAddress(addr::decode(v)?),
            AttrType::PRIORITY => Self::Priority(u32::from_be_bytes(*fixed(v)?)),
            AttrType::USE_CANDIDATE => empty(v, Self::UseCandidate)?,
            AttrType::ICE_CONTROLLED => Self::IceControlled(u64::from_be_bytes(*fixed(v)?)),
            AttrType::ICE_CONTROLLING => Self::IceControlling(u64::from_be_bytes(*fixed(v)?)),
            AttrType::TRANSACTION_TRANSMIT_COUNTER => {
                let [_, _, request, response] = *fixed(v)?;
                Self::TransactionTransmitCounter { request, response }
            }
            typ => Self::Other { typ, value: v },
        })
    }

    /// The attribute's type.
    #[must_use]
    pub const fn typ(&self) -> AttrType {
        match self {
            Self::MappedAddress(_) => AttrType::MAPPED_ADDRESS,
            Self::XorMappedAddress(_) => AttrType::XOR_MAPPED_ADDRESS,
            Self::Username(_) => AttrType::USERNAME,
            Self::Userhash(_) => AttrType::USERHASH,
            Self::MessageIntegrity(_) => AttrType::MESSAGE_INTEGRITY,
            Self::MessageIntegritySha256(_) => AttrType::MESSAGE_INTEGRITY_SHA256,
            Self::Fingerprint(_) => AttrType::FINGERPRINT,
            Self::ErrorCode { .. } => AttrType::ERROR_CODE,
            Self::Realm(_) => AttrType::REALM,
            Self::Nonce(_) => AttrType::NONCE,
            Self::PasswordAlgorithms(_) => AttrType::PASSWORD_ALGORITHMS,
            Self::PasswordAlgorithm(_) => AttrType::PASSWORD_ALGORITHM,
            Self::UnknownAttributes(_) => AttrType::UNKNOWN_ATTRIBUTES,
            Self::Software(_) => AttrType::SOFTWARE,
            Self::AlternateServer(_) => AttrType::ALTERNATE_SERVER,
            Self::AlternateDomain(_) => AttrType::ALTERNATE_DOMAIN,
            Self::ChannelNumber(_) => AttrType::CHANNEL_NUMBER,
            Self::Lifetime(_) => AttrType::LIFETIME,
            Self::XorPeerAddress(_) => AttrType::XOR_PEER_ADDRESS,
            Self::Data(_) => AttrType::DATA,
            Self::XorRelayedAddress(_) => AttrType::XOR_RELAYED_ADDRESS,
            Self::RequestedAddressFamily(_) => AttrType::REQUESTED_ADDRESS_FAMILY,
            Self::EvenPort { .. } => AttrType::EVEN_PORT,
            Self::RequestedTransport(_) => AttrType::REQUESTED_TRANSPORT,
            Self::DontFragment => AttrType::DONT_FRAGMENT,
            Self::ReservationToken(_) => AttrType::RESERVATION_TOKEN,
            Self::AdditionalAddressFamily(_) => AttrType::ADDITIONAL_ADDRESS_FAMILY,
            Self::AddressErrorCode { .. } => AttrType::ADDRESS_ERROR_CODE,
            Self::Icmp { .. } => AttrType::ICMP,
            Self::ConnectionId(_) => AttrType::CONNECTION_ID,
            Self::ChangeRequest { .. } => AttrType::CHANGE_REQUEST,
            Self::Padding(_) => AttrType::PADDING,
            Self::ResponsePort(_) => AttrType::RESPONSE_PORT,
            Self::CacheTimeout(_) => AttrType::CACHE_TIMEOUT,
            Self::ResponseOrigin(_) => AttrType::RESPONSE_ORIGIN,
            Self::OtherAddress(_) => AttrType::OTHER_ADDRESS,
            Self::Priority(_) => AttrType::PRIORITY,
            Self::UseCandidate => AttrType::USE_CANDIDATE,
            Self::IceControlled(_) => AttrType::ICE_CONTROLLED,
            Self::IceControlling(_) => AttrType::ICE_CONTROLLING,
            Self::TransactionTransmitCounter { .. } => AttrType::TRANSACTION_TRANSMIT_COUNTER,
            Self::Other { typ, .. } => *typ,
        }
    }

    /// The length of the encoded value, without padding.
    pub(crate) fn value_len(&self) -> usize {
        match self {
            Self::MappedAddress(a)
            | Self::XorMappedAddress(a)
            | Self::AlternateServer(a)
            | Self::XorPeerAddress(a)
            | Self::XorRelayedAddress(a)
            | Self::ResponseOrigin(a)
            | Self::OtherAddress(a) => addr::encoded_len(a),
            Self::Username(s)
            | Self::Realm(s)
            | Self::Nonce(s)
            | Self::Software(s)
            | Self::AlternateDomain(s) => s.len(),
            Self::Userhash(_) => 32,
            Self::MessageIntegrity(_) => 20,
            Self::MessageIntegritySha256(v) | Self::Data(v) | Self::Padding(v) => v.len(),
            Self::Other { value, .. } => value.len(),
            Self::ErrorCode { reason, .. } | Self::AddressErrorCode { reason, .. } => {
                4usize.saturating_add(reason.len())
            }
            Self::PasswordAlgorithms(list) => list.0.len(),
            Self::UnknownAttributes(list) => list.0.len(),
            Self::PasswordAlgorithm(_)
            | Self::Fingerprint(_)
            | Self::ChannelNumber(_)
            | Self::Lifetime(_)
            | Self::RequestedAddressFamily(_)
            | Self::RequestedTransport(_)
            | Self::AdditionalAddressFamily(_)
            | Self::ConnectionId(_)
            | Self::ChangeRequest { .. }
            | Self::ResponsePort(_)
            | Self::CacheTimeout(_)
            | Self::Priority(_)
            | Self::TransactionTransmitCounter { .. } => 4,
            Self::EvenPort { .. } => 1,
            Self::DontFragment | Self::UseCandidate => 0,
            Self::ReservationToken(_)
            | Self::Icmp { .. }
            | Self::IceControlled(_)
            | Self::IceControlling(_) => 8,
        }
    }

    /// Writes the value into `out`, which is exactly `value_len()` long.
    pub(crate) fn encode_value(
        &self,
        out: &mut [u8],
        tid: &TransactionId,
    ) -> Result<(), EncodeError> {
        match self {
            Self::MappedAddress(a)
            | Self::AlternateServer(a)
            | Self::ResponseOrigin(a)
            | Self::OtherAddress(a) => addr::encode(a, out),
            Self::XorMappedAddress(a) | Self::XorPeerAddress(a) | Self::XorRelayedAddress(a) => {
                addr::encode_xor(a, tid, out)
            }
            Self::Username(s) => {
                check_text(s, MAX_USERNAME_BYTES, usize::MAX)?;
                copy(out, s.as_bytes())
            }
            Self::AlternateDomain(s) => {
                check_text(s, 255, usize::MAX)?;
                copy(out, s.as_bytes())
            }
            Self::Realm(s) | Self::Nonce(s) | Self::Software(s) => {
                check_text(s, MAX_TEXT_BYTES, MAX_TEXT_CHARS)?;
                copy(out, s.as_bytes())
            }
            Self::Userhash(v) => copy(out, v.as_slice()),
            Self::MessageIntegrity(v) => copy(out, v.as_slice()),
            Self::ReservationToken(v) => copy(out, v.as_slice()),
            Self::MessageIntegritySha256(v) | Self::Data(v) | Self::Padding(v) => copy(out, v),
            Self::Other { value, .. } => copy(out, value),
            Self::Fingerprint(n)
            | Self::Lifetime(n)
            | Self::ConnectionId(n)
            | Self::CacheTimeout(n)
            | Self::Priority(n) => copy(out, &n.to_be_bytes()),
            Self::IceControlled(n) | Self::IceControlling(n) => copy(out, &n.to_be_bytes()),
            Self::ErrorCode { code, reason } => {
                let (class, number) = split_code(*code)?;
                check_text(reason, MAX_TEXT_BYTES, MAX_TEXT_CHARS)?;
                write_coded(out, [0, 0, class, number], reason)
            }
            Self::AddressErrorCode {
                family,
                code,
                reason,
            } => {
                let (class, number) = split_code(*code)?;
                check_text(reason, MAX_TEXT_BYTES, MAX_TEXT_CHARS)?;
                write_coded(out, [family.to_wire(), 0, class, number], reason)
            }
            Self::PasswordAlgorithms(list) => copy(out, list.0),
            Self::UnknownAttributes(list) => copy(out, list.0),
            Self::PasswordAlgorithm(alg) => {
                let [a, b] = alg.0.to_be_bytes();
                copy(out, &[a, b, 0, 0])
            }
            Self::ChannelNumber(n) | Self::ResponsePort(n) => {
                let [a, b] = n.to_be_bytes();
                copy(out, &[a, b, 0, 0])
            }
            Self::RequestedAddressFamily(f) | Self::AdditionalAddressFamily(f) => {
                copy(out, &[f.to_wire(), 0, 0, 0])
            }
            Self::RequestedTransport(p) => copy(out, &[*p, 0, 0, 0]),
            Self::ChangeRequest {
                change_ip,
                change_port,
            } => {
                let flags = if *change_ip { 0x04 } else { 0 } | if *change_port { 0x02 } else { 0 };
                copy(out, &[0, 0, 0, flags])
            }
            Self::TransactionTransmitCounter { request, response } => {
                copy(out, &[0, 0, *request, *response])
            }
            Self::EvenPort { reserve_next } => copy(out, &[if *reserve_next { 0x80 } else { 0 }]),
            Self::Icmp {
                icmp_type,
                icmp_code,
                error_data,
            } => {
                let [d0, d1, d2, d3] = error_data.to_be_bytes();
                copy(out, &[0, 0, *icmp_type, *icmp_code, d0, d1, d2, d3])
            }
            Self::DontFragment | Self::UseCandidate => Ok(()),
        }
    }
}

/// A PASSWORD-ALGORITHMS value: a list of algorithms with their parameters
/// (RFC 8489 §14.12), kept in wire form so that a server can check that a
/// client echoed it unchanged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmList<'a>(&'a [u8]);

impl<'a> AlgorithmList<'a> {
    /// Validates the list's framing.
    pub fn new(wire: &'a [u8]) -> Result<Self, AttrError> {
        let mut rest = wire;
        while !rest.is_empty() {
            let (head, tail) = rest.split_first_chunk::<4>().ok_or(AttrError::BadLength)?;
            let params = usize::from(u16::from_be_bytes([head[2], head[3]]));
            rest = tail
                .get(crate::padded(params)..)
                .ok_or(AttrError::BadLength)?;
        }
        Ok(Self(wire))
    }

    /// A list this program writes, from its wire form, unchecked: for
    /// constants, whose form a test checks with [`AlgorithmList::new`].
    #[must_use]
    pub const fn from_static(wire: &'static [u8]) -> AlgorithmList<'static> {
        AlgorithmList(wire)
    }

    /// The list in wire form.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The algorithms, in the sender's order of preference.
    pub fn iter(&self) -> impl Iterator<Item = crate::PasswordAlgorithm> + 'a {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (head, tail) = rest.split_first_chunk::<4>()?;
            let params = usize::from(u16::from_be_bytes([head[2], head[3]]));
            rest = tail.get(crate::padded(params)..)?;
            Some(crate::PasswordAlgorithm(u16::from_be_bytes([
                head[0], head[1],
            ])))
        })
    }
}

impl fmt::Debug for AlgorithmList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// An UNKNOWN-ATTRIBUTES value: a list of 16-bit attribute types, in wire
/// form.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TypeList<'a>(&'a [u8]);

impl<'a> TypeList<'a> {
    /// Validates the list (an even number of bytes).
    pub fn new(wire: &'a [u8]) -> Result<Self, AttrError> {
        if wire.len().is_multiple_of(2) {
            Ok(Self(wire))
        } else {
            Err(AttrError::BadLength)
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = AttrType> + 'a {
        self.0
            .as_chunks::<2>()
            .0
            .iter()
            .map(|c| AttrType(u16::from_be_bytes(*c)))
    }
}

impl fmt::Debug for TypeList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

fn fixed<const N: usize>(v: &[u8]) -> Result<&[u8; N], AttrError> {
    v.try_into().map_err(|_| AttrError::BadLength)
}

fn empty<'a>(v: &[u8], attr: Attr<'a>) -> Result<Attr<'a>, AttrError> {
    if v.is_empty() {
        Ok(attr)
    } else {
        Err(AttrError::BadLength)
    }
}

fn text(v: &[u8], max_bytes: usize, max_chars: usize) -> Result<&str, AttrError> {
    if v.len() > max_bytes {
        return Err(AttrError::TooLong);
    }
    let s = std::str::from_utf8(v).map_err(|_| AttrError::NotUtf8)?;
    if max_chars != usize::MAX && s.chars().count() > max_chars {
        return Err(AttrError::TooLong);
    }
    Ok(s)
}

fn long_text(v: &[u8]) -> Result<&str, AttrError> {
    text(v, MAX_TEXT_BYTES, MAX_TEXT_CHARS)
}

fn check_text(s: &str, max_bytes: usize, max_chars: usize) -> Result<(), EncodeError> {
    text(s.as_bytes(), max_bytes, max_chars)
        .map(|_| ())
        .map_err(|_| EncodeError::InvalidValue)
}

fn family_field(v: &[u8]) -> Result<Family, AttrError> {
    let [family, _, _, _] = *fixed(v)?;
    Family::from_wire(family).ok_or(AttrError::BadFamily)
}

fn error_code(class: u8, number: u8) -> Result<ErrorCode, AttrError> {
    let class = class & 0x07;
    if !(3..=6).contains(&class) || number > 99 {
        return Err(AttrError::BadErrorCode);
    }
    Ok(ErrorCode(u16::from(class) * 100 + u16::from(number)))
}

fn split_code(code: ErrorCode) -> Result<(u8, u8), EncodeError> {
    if !(300..=699).contains(&code.0) {
        return Err(EncodeError::InvalidValue);
    }
    let class = u8::try_from(code.0 / 100).map_err(|_| EncodeError::InvalidValue)?;
    let number = u8::try_from(code.0 % 100).map_err(|_| EncodeError::InvalidValue)?;
    Ok((class, number))
}

fn write_coded(out: &mut [u8], head: [u8; 4], reason: &str) -> Result<(), EncodeError> {
    let (h, rest) = out
        .split_first_chunk_mut::<4>()
        .ok_or(EncodeError::BufferTooSmall)?;
    *h = head;
    copy(rest, reason.as_bytes())
}

fn copy(out: &mut [u8], value: &[u8]) -> Result<(), EncodeError> {
    out.get_mut(..value.len())
        .ok_or(EncodeError::BufferTooSmall)?
        .copy_from_slice(value);
    Ok(())
}
