use std::fmt;

/// Why bytes are not a STUN message. A server discards such input silently
/// (RFC 8489 §6.3): nothing in it can be trusted enough to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than the 20 bytes of a header.
    TooShort,
    /// The two most significant bits of the first byte are not zero.
    NotStun,
    /// Bytes 4..8 are not the magic cookie (an RFC 3489 message, or noise).
    BadMagicCookie,
    /// The header's length is not a multiple of 4.
    UnalignedLength,
    /// The header's length runs past the bytes given.
    Truncated,
    /// An attribute's length runs past the end of the message.
    AttributeOverrun,
    /// An attribute follows FINGERPRINT, which must be last.
    AfterFingerprint,
    /// FINGERPRINT does not match the message.
    BadFingerprint,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooShort => "shorter than a STUN header",
            Self::NotStun => "first two bits are not zero",
            Self::BadMagicCookie => "wrong magic cookie",
            Self::UnalignedLength => "length is not a multiple of 4",
            Self::Truncated => "length runs past the end of the data",
            Self::AttributeOverrun => "an attribute runs past the end of the message",
            Self::AfterFingerprint => "an attribute follows FINGERPRINT",
            Self::BadFingerprint => "FINGERPRINT does not match",
        })
    }
}

impl std::error::Error for DecodeError {}

/// Why one attribute's value could not be decoded. A server answers a
/// request carrying such an attribute with 400 (Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttrError {
    /// The value has a length this attribute cannot have.
    BadLength,
    /// An address attribute names a family other than IPv4 or IPv6.
    BadFamily,
    /// A text attribute is not UTF-8.
    NotUtf8,
    /// A text attribute is longer than its RFC allows.
    TooLong,
    /// An ERROR-CODE or ADDRESS-ERROR-CODE class outside 3..=6, or a number
    /// above 99.
    BadErrorCode,
}

impl fmt::Display for AttrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadLength => "value has the wrong length",
            Self::BadFamily => "unknown address family",
            Self::NotUtf8 => "text is not UTF-8",
            Self::TooLong => "text is too long",
            Self::BadErrorCode => "error code out of range",
        })
    }
}

impl std::error::Error for AttrError {}

/// Why a message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The buffer cannot hold the message.
    BufferTooSmall,
    /// The message would exceed the 16-bit length field, or an attribute
    /// value exceeds its own.
    TooLong,
    /// The value breaks a limit of its attribute (text length, error class).
    InvalidValue,
    /// An attribute other than FINGERPRINT after FINGERPRINT, or other than
    /// MESSAGE-INTEGRITY-SHA256 or FINGERPRINT after MESSAGE-INTEGRITY.
    AfterIntegrity,
    /// The HMAC key was rejected (never happens for HMAC, which takes keys of
    /// any length; kept so no `expect` is needed).
    BadKey,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "buffer too small",
            Self::TooLong => "message or attribute too long",
            Self::InvalidValue => "attribute value out of range",
            Self::AfterIntegrity => "attribute after MESSAGE-INTEGRITY or FINGERPRINT",
            Self::BadKey => "invalid HMAC key",
        })
    }
}

impl std::error::Error for EncodeError {}

/// A STUN error code (RFC 8489 §14.8, RFC 8656 §19, RFC 6062 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const TRY_ALTERNATE: Self = Self(300);
    pub const BAD_REQUEST: Self = Self(400);
    pub const UNAUTHENTICATED: Self = Self(401);
    pub const FORBIDDEN: Self = Self(403);
    pub const MOBILITY_FORBIDDEN: Self = Self(405);
    pub const UNKNOWN_ATTRIBUTE: Self = Self(420);
    pub const ALLOCATION_MISMATCH: Self = Self(437);
    pub const STALE_NONCE: Self = Self(438);
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self(440);
    pub const WRONG_CREDENTIALS: Self = Self(441);
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: Self = Self(442);
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self(443);
    pub const CONNECTION_ALREADY_EXISTS: Self = Self(446);
    pub const CONNECTION_TIMEOUT_OR_FAILURE: Self = Self(447);
    pub const ALLOCATION_QUOTA_REACHED: Self = Self(486);
    pub const ROLE_CONFLICT: Self = Self(487);
    pub const SERVER_ERROR: Self = Self(500);
    pub const INSUFFICIENT_CAPACITY: Self = Self(508);

    /// The reason phrase the RFCs suggest for this code.
    #[must_use]
    pub const fn reason(self) -> &'static str {
        match self.0 {
            300 => "Try Alternate",
            400 => "Bad Request",
            401 => "Unauthenticated",
            403 => "Forbidden",
            405 => "Mobility Forbidden",
            420 => "Unknown Attribute",
            437 => "Allocation Mismatch",
            438 => "Stale Nonce",
            440 => "Address Family not Supported",
            441 => "Wrong Credentials",
            442 => "Unsupported Transport Protocol",
            443 => "Peer Address Family Mismatch",
            446 => "Connection Already Exists",
            447 => "Connection Timeout or Failure",
            486 => "Allocation Quota Reached",
            487 => "Role Conflict",
            500 => "Server Error",
            508 => "Insufficient Capacity",
            _ => "",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}
